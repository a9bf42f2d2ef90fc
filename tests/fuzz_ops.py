"""The basic op families of the model fuzzer (attention, index ops and reshapes: fuzz_ops_more.py), as data: how to draw an op's parameters, build it, run it.

A value is a tensor of one of three kinds, known by its rank: ``img`` (B, C, H, W), ``seq``
(B, T, C) and ``vec`` (B, C); C is its channel dim. An op is an :class:`Op`: ``draw(draw, metas)``
returns its parameters (plain data, so a failing model prints as a reproducible spec) or None
where it does not apply; ``init(step, metas, p)`` makes its modules and buffers; ``forward(step,
*xs)`` runs it. Weights come from torch's RNG (seeded per model); index values, masks and
every size are drawn by hypothesis.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

__all__ = ["BASE", "Op", "channels", "cdim", "kind_of", "fuzz_mystery", "fuzz_mystery_param", "op"]


def kind_of(shape: tuple) -> str:
    return {4: "img", 3: "seq", 2: "vec"}[len(shape)]


def cdim(shape: tuple) -> int:
    return 2 if len(shape) == 3 else 1


def channels(shape: tuple) -> int:
    return shape[cdim(shape)]


def fuzz_mystery(x, d: int):
    """An op fxprune has no rule for (order-dependent along dim ``d``)."""
    return x + 0.5 * torch.roll(x, 1, dims=d)


def fuzz_mystery_param(x, w):
    """An unknown op that reads a parameter."""
    return x * w.sum()


torch.fx.wrap("fuzz_mystery")
torch.fx.wrap("fuzz_mystery_param")


@dataclass(frozen=True)
class Op:
    name: str
    kinds: tuple  # kinds of the first input it takes
    draw: Callable  # (draw, metas) -> params dict | None
    init: Callable  # (step, metas, params) -> None
    forward: Callable  # (step, *xs) -> tensor | tuple of tensors
    arity: int = 1  # inputs: the second one has the first's kind and non-channel sizes
    partner: Optional[Callable] = None  # (shape of the first, shape) -> bool: who may be the second input


def _divisors(n: int) -> list:
    return [d for d in range(1, n + 1) if n % d == 0]


def _width(draw, c: Optional[int] = None) -> int:
    extra = [c, 2 * c] if c else []
    return draw(st.sampled_from([1, 2, 3, 4, 5, 6, 8, 9, 12, *extra]))


def _proj(shape: tuple, cout: int) -> nn.Module:
    c = channels(shape)
    return nn.Conv2d(c, cout, 1) if len(shape) == 4 else nn.Linear(c, cout)


# -- convolutions and linear layers ---------------------------------------------------------
def _draw_conv(draw, metas):
    c = channels(metas[0])
    cout = _width(draw, c)
    return dict(cout=cout, k=draw(st.sampled_from([1, 3])), groups=draw(st.sampled_from(_divisors(math.gcd(c, cout)))),
                bias=draw(st.booleans()), functional=draw(st.booleans()))


def _init_conv(s, metas, p):
    s.m = nn.Conv2d(channels(metas[0]), p["cout"], p["k"], padding=p["k"] // 2, groups=p["groups"], bias=p["bias"])


def _conv(s, x):
    if s.p["functional"]:
        return F.conv2d(x, s.m.weight, s.m.bias, padding=s.p["k"] // 2, groups=s.p["groups"])
    return s.m(x)


def _draw_conv1d(draw, metas):
    p = _draw_conv(draw, metas)
    return p


def _init_conv1d(s, metas, p):
    s.m = nn.Conv1d(channels(metas[0]), p["cout"], p["k"], padding=p["k"] // 2, groups=p["groups"], bias=p["bias"])


def _conv1d(s, x):
    return s.m(x.transpose(1, 2)).transpose(1, 2)


def _draw_linear(draw, metas):
    return dict(cout=_width(draw, channels(metas[0])), form=draw(st.sampled_from(["module", "functional", "einsum",
                                                                                  "matmul"])))


def _init_linear(s, metas, p):
    s.m = nn.Linear(channels(metas[0]), p["cout"])


def _linear_last(s, x):
    form, w, b = s.p["form"], s.m.weight, s.m.bias
    if form == "module":
        return s.m(x)
    if form == "functional":
        return F.linear(x, w, b)
    if form == "einsum":
        return torch.einsum("...c,oc->...o", x, w) + b
    return x @ w.t() + b


def _linear(s, x):
    if s.nd == 4:  # channels-last linear (ConvNeXt)
        return _linear_last(s, x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return _linear_last(s, x)


# -- normalization, activations, element-wise ------------------------------------------------
_NORMS = {"img": ["bn", "gn", "ln_cl", "in"], "seq": ["ln", "rms", "ln_noaffine"], "vec": ["bn1d", "ln"]}


def _draw_norm(draw, metas):
    kind = draw(st.sampled_from(_NORMS[kind_of(metas[0])]))
    return dict(kind=kind, groups=draw(st.sampled_from(_divisors(channels(metas[0])))))


def _init_norm(s, metas, p):
    c, kind = channels(metas[0]), p["kind"]
    s.m = {"bn": lambda: nn.BatchNorm2d(c), "gn": lambda: nn.GroupNorm(p["groups"], c),
           "ln_cl": lambda: nn.LayerNorm(c), "in": lambda: nn.InstanceNorm2d(c, affine=True),
           "ln": lambda: nn.LayerNorm(c), "rms": lambda: nn.RMSNorm(c),
           "ln_noaffine": lambda: nn.LayerNorm(c, elementwise_affine=False), "bn1d": lambda: nn.BatchNorm1d(c)}[kind]()
    if hasattr(s.m, "running_mean") and s.m.running_mean is not None:
        s.m.running_mean.normal_()
        s.m.running_var.uniform_(0.5, 2.0)


def _norm(s, x):
    if s.p["kind"] == "ln_cl":
        return s.m(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return s.m(x)


_ACTS = {"relu": (nn.ReLU, F.relu), "gelu": (nn.GELU, F.gelu), "silu": (nn.SiLU, F.silu),
         "sigmoid": (nn.Sigmoid, torch.sigmoid), "tanh": (nn.Tanh, torch.tanh), "hardswish": (nn.Hardswish, F.hardswish)}


_ACTS["prelu"] = (lambda c: nn.PReLU(c), None)
_ACTS["dropout"] = (lambda c: nn.Dropout(0.5), None)


def _draw_act(draw, metas):
    return dict(fn=draw(st.sampled_from(sorted(_ACTS))), form=draw(st.sampled_from(["module", "functional", "method"])))


def _init_act(s, metas, p):
    s.m = _ACTS[p["fn"]][0](channels(metas[0])) if p["fn"] in ("prelu", "dropout") else _ACTS[p["fn"]][0]()


def _act(s, x):
    form, fn = s.p["form"], s.p["fn"]
    if form == "module" or _ACTS[fn][1] is None:
        if fn == "prelu" and s.nd == 3:  # PReLU's channels are dim 1
            return s.m(x.transpose(1, 2)).transpose(1, 2)
        return s.m(x)
    if form == "method" and fn in ("relu", "sigmoid", "tanh"):
        return getattr(x, fn)()
    return _ACTS[fn][1](x)


def _draw_binary(draw, metas):
    return dict(fn=draw(st.sampled_from(["add", "sub", "mul", "maximum", "torch.add", "iadd", "where", "view_as"])),
                mask=tuple(draw(st.lists(st.booleans(), min_size=channels(metas[0]), max_size=channels(metas[0])))))


def _init_binary(s, metas, p):
    a, b = metas
    s.proj = _proj(b, channels(a)) if channels(a) != channels(b) else nn.Identity()
    s.register_buffer("mask", torch.tensor(p["mask"]).reshape(_bshape(a, channels(a))))


def _binary(s, a, b):
    b = s.proj(b)
    fn = s.p["fn"]
    if fn == "add":
        return a + b
    if fn == "sub":
        return a - b
    if fn == "mul":
        return a * b
    if fn == "maximum":
        return torch.maximum(a, b)
    if fn == "iadd":
        y = a.clone()
        y += b
        return y
    if fn == "where":
        return torch.where(s.mask, a, b)
    if fn == "view_as":  # sizes from ``a`` at run time
        return (b.flatten(1) * 2).view_as(a) + a
    return torch.add(a, b, alpha=0.5)


def _draw_scale(draw, metas):
    return dict(form=draw(st.sampled_from(["layerscale", "clamp_min", "masked_fill", "center", "softmax", "cumsum",
                                           "mystery", "mystery_param", "flip", "size_mean", "max_dim", "type_as"])),
                mask=tuple(draw(st.lists(st.booleans(), min_size=channels(metas[0]), max_size=channels(metas[0])))))


def _bshape(shape: tuple, c: int) -> tuple:
    return (c, 1, 1) if len(shape) == 4 else (c,)


def _init_scale(s, metas, p):
    shape = _bshape(metas[0], channels(metas[0]))
    s.gamma = nn.Parameter(torch.rand(shape) + 0.5)
    s.register_buffer("mask", torch.tensor(p["mask"]).reshape(shape))


def _scale(s, x):
    form, c = s.p["form"], s.cd
    if form == "layerscale":
        return x * s.gamma
    if form == "clamp_min":
        return x.clamp_min(s.gamma - 1.0)
    if form == "masked_fill":
        return x.masked_fill(s.mask, 0.25)
    if form == "center":
        return x - x.mean(c, keepdim=True)
    if form == "softmax":
        return x.softmax(c)
    if form == "cumsum":
        return x.cumsum(c)
    if form == "flip":
        return x.flip(c)
    if form == "size_mean":  # a size read at run time in arithmetic: frozen where pruned
        return x + x.sum(c, keepdim=True) / x.shape[c]
    if form == "max_dim":
        return x - x.max(dim=c, keepdim=True).values
    if form == "type_as":
        return x.type_as(s.gamma) * 2
    if form == "mystery":
        return fuzz_mystery(x, c)
    return fuzz_mystery_param(x, s.gamma)


# -- concatenation, splitting, shuffles ---------------------------------------------------------
def _draw_cat(draw, metas):
    return dict(neg=draw(st.booleans()), fn=draw(st.sampled_from(["cat", "concat"])), swap=draw(st.booleans()))


def _cat(s, a, b):
    parts = [b, a] if s.p["swap"] else [a, b]
    d = s.cd - (s.nd if s.p["neg"] else 0)
    return (torch.cat if s.p["fn"] == "cat" else torch.concat)(parts, d)


def _draw_split(draw, metas):
    c = channels(metas[0])
    if c < 2:
        return None
    form = draw(st.sampled_from(["split_list", "split_int", "chunk", "slices", "narrow"]))
    cut = sorted(set(draw(st.lists(st.integers(1, c - 1), min_size=1, max_size=2))))
    return dict(form=form, cut=tuple(cut), n=draw(st.integers(2, 3)), size=draw(st.integers(1, c - 1)))


def _split(s, x):
    p, d, c = s.p, s.cd, s.c
    bounds = [0, *p["cut"], c]
    sizes = [b - a for a, b in zip(bounds, bounds[1:])]
    if p["form"] == "split_list":
        parts = torch.split(x, sizes, d)
    elif p["form"] == "split_int":
        parts = x.split(p["size"], d)
    elif p["form"] == "chunk":
        parts = x.chunk(p["n"], d)
    elif p["form"] == "narrow":
        parts = [x.narrow(d, a, b - a) for a, b in zip(bounds, bounds[1:])]
    else:
        parts = [x[:, a:b] if d == 1 else x[..., a:b] for a, b in zip(bounds, bounds[1:])]
    count = {"split_int": -(-c // p["size"]), "chunk": len(torch.empty(c).chunk(p["n"]))}.get(p["form"], len(sizes))
    return tuple(parts[i] for i in range(count))  # a static count: ``parts`` may be a traced value


def _draw_shuffle(draw, metas):
    c = channels(metas[0])
    gs = [g for g in _divisors(c) if 1 < g < c]
    if not gs:
        return None
    return dict(g=draw(st.sampled_from(gs)), form=draw(st.sampled_from(["shuffle", "headnorm", "pixel"])))


def _shuffle(s, x):
    g, form = s.p["g"], s.p["form"]
    if s.nd == 4:
        b, c, h, w = x.shape
        if form == "pixel" and g == 4 and c > 4:
            return F.pixel_shuffle(x, 2)
        return x.view(b, g, c // g, h, w).transpose(1, 2).reshape(b, c, h, w)
    b, t, c = x.shape
    y = x.reshape(b, t, g, c // g)
    y = F.layer_norm(y, (s.c // g,)) if form == "headnorm" else y.transpose(-1, -2)
    return y.reshape(b, t, c)


def _draw_glu(draw, metas):
    return dict() if channels(metas[0]) % 2 == 0 else None


def _glu(s, x):
    a, b = x.chunk(2, dim=s.cd)
    return a * F.silu(b)


def _draw_repeat(draw, metas):
    return dict(r=draw(st.integers(2, 3)), form=draw(st.sampled_from(["repeat", "repeat_interleave"])))


def _repeat(s, x):
    d, r = s.cd, s.p["r"]
    if s.p["form"] == "repeat_interleave":
        return x.repeat_interleave(r, dim=d)
    reps = [1] * s.nd
    reps[d] = r
    return x.repeat(*reps)


def _no_params(draw, metas):
    return dict()


def _no_init(s, metas, p):
    pass


def op(name, kinds, draw, forward, init=_no_init, arity=1, partner=None):
    return Op(name, kinds, draw, init, forward, arity, partner)


BASE = [
    op("conv", ("img",), _draw_conv, _conv, _init_conv),
    op("conv1d", ("seq",), _draw_conv1d, _conv1d, _init_conv1d),
    op("linear", ("img", "seq", "vec"), _draw_linear, _linear, _init_linear),
    op("norm", ("img", "seq", "vec"), _draw_norm, _norm, _init_norm),
    op("act", ("img", "seq", "vec"), _draw_act, _act, _init_act),
    op("binary", ("img", "seq", "vec"), _draw_binary, _binary, _init_binary, arity=2),
    op("scale", ("img", "seq", "vec"), _draw_scale, _scale, _init_scale),
    op("cat", ("img", "seq", "vec"), _draw_cat, _cat, arity=2),
    op("split", ("img", "seq", "vec"), _draw_split, _split),
    op("shuffle", ("img", "seq"), _draw_shuffle, _shuffle),
    op("glu", ("img", "seq", "vec"), _draw_glu, _glu),
    op("repeat", ("img", "seq", "vec"), _draw_repeat, _repeat),
]
