"""Random models for the fuzzer: hypothesis strategies that draw a DAG of op families step by step.

A model is a :class:`ModelSpec` (plain data: it prints as a reproducible regression case) and
:class:`FuzzNet` builds it. ``models()`` is the strategy; ``check(spec)`` runs both oracles.

    >>> spec = ModelSpec((3, 4, 4), (("conv", (0,), (("bias", True), ("cout", 4), ("functional", False),
    ...                                               ("groups", 1), ("k", 1))),), (1,), seed=0)
    >>> check(spec).passed
    True
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from hypothesis import strategies as st

import fxprune
from fuzz_ops import BASE, cdim, channels, kind_of
from fuzz_ops_more import MORE

__all__ = ["OPS", "ModelSpec", "FuzzNet", "models", "check", "check_other_batch", "example", "BATCH"]

OPS = {o.name: o for o in [*BASE, *MORE]}
BATCH = 2


@dataclass(frozen=True)
class ModelSpec:
    """``input``: per-example shape (no batch); ``steps``: (op name, source value indices,
    sorted (param, value) pairs); ``outputs``: the values returned; ``seed``: the weights'."""

    input: tuple
    steps: tuple
    outputs: tuple
    seed: int = 0
    export: bool = False  # capture through torch.export (keyword input) instead of symbolic_trace

    def ops(self) -> set:
        return {name for name, _, _ in self.steps}


class Step(nn.Module):
    """One op of a fuzz model: its modules and buffers, and the op's forward."""

    def __init__(self, name: str, metas: list, params: dict):
        super().__init__()
        self.name, self.p = name, params
        self.nd, self.cd, self.c = len(metas[0]), cdim(metas[0]), channels(metas[0])  # static: traced as constants
        OPS[name].init(self, metas, params)

    def forward(self, *xs):
        return OPS[self.name].forward(self, *xs)


class FuzzNet(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        torch.manual_seed(spec.seed)
        metas = [(BATCH, *spec.input)]
        self.steps, self.srcs, self.outputs = nn.ModuleList(), [], spec.outputs
        for name, srcs, params in spec.steps:
            step = Step(name, [metas[i] for i in srcs], dict(params))
            self.steps.append(step)
            self.srcs.append(srcs)
            metas.extend(_out_metas(step, [metas[i] for i in srcs]))
        self.metas = metas
        _informative(self)
        self.eval()

    def forward(self, x):
        vals = [x]
        for step, srcs in zip(self.steps, self.srcs):
            out = step(*[vals[i] for i in srcs])
            if isinstance(out, tuple):
                vals.extend(out)
            else:
                vals.append(out)
        outs = tuple(vals[i] for i in self.outputs)
        return outs[0] if len(outs) == 1 else outs


@torch.no_grad()
def _informative(net: nn.Module) -> None:
    """Constant parameters (norm weights of 1, biases of 0) get noise: an output that is only
    float rounding (a group norm of a spatially constant input, bias 0) would make the oracles
    compare noise with noise."""
    for p in net.parameters():
        if p.numel() > 0 and bool((p == p.flatten()[0]).all()):
            p.add_(0.1 * torch.randn(p.shape))


@torch.no_grad()
def _out_metas(step: Step, metas: list) -> list:
    step.eval()
    out = step(*[torch.randn(m) for m in metas])
    return [tuple(o.shape) for o in (out if isinstance(out, tuple) else (out,))]


def _partners(metas: list, first: tuple, o) -> list:
    """Values a binary op can combine with ``first``: by default same kind and non-channel sizes."""
    def key(m):
        return tuple(n for i, n in enumerate(m) if i != (2 if len(m) == 3 else 1))
    ok = o.partner or (lambda a, b: kind_of(a) == kind_of(b) and key(a) == key(b))
    return [i for i, m in enumerate(metas) if ok(first, m)]


def _draw_step(draw, metas: list):
    """One step: an op that applies to a value (recent ones are likelier), or None."""
    n = len(metas)
    src = draw(st.one_of(st.integers(max(0, n - 3), n - 1), st.integers(0, n - 1)))
    first = metas[src]
    if min(first) == 0 or channels(first) > 48:
        return None
    names = [k for k, o in OPS.items() if kind_of(first) in o.kinds for _ in range(_WEIGHTS.get(k, 1))]
    o = OPS[draw(st.sampled_from(names))]
    srcs = (src,)
    if o.arity == 2:
        partners = _partners(metas, first, o)
        if not partners:
            return None
        srcs += (draw(st.sampled_from(partners)),)
    params = o.draw(draw, [metas[i] for i in srcs])
    if params is None:
        return None
    return o.name, srcs, tuple(sorted(params.items()))


_WEIGHTS = {"conv": 3, "linear": 3, "binary": 2, "cat": 2, "split": 2, "gate": 3, "se": 2, "attention": 2}  # layers with weights are likelier


def _head(draw, metas: list):
    """A final projection to a few channels, so that what precedes the (pinned) output prunes."""
    last = metas[-1]
    o = OPS["conv" if kind_of(last) == "img" else "linear"]
    params = dict(o.draw(draw, [last]), cout=2)
    if "groups" in params:
        params["groups"] = 1
    return o.name, (len(metas) - 1,), tuple(sorted(params.items()))


@st.composite
def models(draw, max_steps: int = 10, export: bool = False) -> ModelSpec:
    """A random model: an input of a random kind and width, then up to ``max_steps`` ops,
    usually a projection head; ``export`` draws whether it is captured by torch.export."""
    kind = draw(st.sampled_from(["img", "seq", "vec"]))
    c = draw(st.integers(1, 6))
    shape = {"img": (c, draw(st.integers(1, 4)), draw(st.integers(1, 4))), "seq": (draw(st.integers(1, 5)), c),
             "vec": (c,)}[kind]
    metas, steps = [(BATCH, *shape)], []
    for _ in range(draw(st.integers(1, max_steps))):
        step = _draw_step(draw, metas)
        if step is None:
            continue
        name, srcs, params = step
        try:  # a combination the op rejects (instance norm of one pixel): draw another
            outs = _out_metas(Step(name, [metas[i] for i in srcs], dict(params)), [metas[i] for i in srcs])
        except (RuntimeError, ValueError):
            continue
        metas.extend(outs)
        steps.append(step)
    if draw(st.integers(0, 3)):
        steps.append(_head(draw, metas))
        probe = Step(steps[-1][0], [metas[-1]], dict(steps[-1][2]))
        metas.extend(_out_metas(probe, [metas[-1]]))
    last = len(metas) - 1
    extra = draw(st.sets(st.integers(1, last), max_size=1)) if last > 1 else set()
    return ModelSpec(shape, tuple(steps), tuple(sorted({last} | extra)), seed=draw(st.integers(0, 2 ** 16)),
                     export=export and draw(st.integers(0, 4)) == 0)


def example(spec: ModelSpec, batch: int = BATCH) -> torch.Tensor:
    return torch.randn(batch, *spec.input, generator=torch.Generator().manual_seed(spec.seed + batch))


def check(spec: ModelSpec, **verify_kwargs):
    """Both oracles (float64) on the model of ``spec``; returns the VerifyReport."""
    net, x = FuzzNet(spec), example(spec)
    if spec.export:
        return fxprune.verify(net, (), {"x": x}, **verify_kwargs)
    return fxprune.verify(net, (x,), **verify_kwargs)


@torch.no_grad()
def check_other_batch(spec: ModelSpec, batch: int = BATCH) -> bool:
    """Where the model runs at another batch size, its pruned graph (every group halved), analysed
    at ``batch``, runs there too, with the same output shapes: sizes read at run time stay dynamic."""
    net, x, x3 = FuzzNet(spec), example(spec, batch), example(spec, batch + 1)
    try:
        ref, _ = net(x3), net(x)
    except (RuntimeError, AssertionError):  # a buffer fixes the batch (a key padding mask): nothing to check
        return True
    dg = fxprune.analyze(net, (x,))
    pruned = fxprune.apply(dg, {g: list(range(0, g.size, 2)) for g in dg.groups})
    out = pruned(x3)
    shapes = lambda o: [t.shape for t in (o if isinstance(o, tuple) else (o,))]  # noqa: E731
    return shapes(out) == shapes(ref)
