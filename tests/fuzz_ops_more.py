"""Fuzzer op families: attention (heads, GQA, masks, RoPE), index ops, pooling and kind changes."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

from fuzz_ops import _divisors, _no_init, _no_params, _width, cdim, channels, op

__all__ = ["MORE"]


# -- attention ----------------------------------------------------------------------------------
def _draw_attention(draw, metas):
    t = metas[0][1]
    heads = draw(st.sampled_from([1, 2, 3, 4]))
    kv = draw(st.sampled_from(_divisors(heads)))
    d = draw(st.sampled_from([1, 2, 3, 4]))
    rope = d % 2 == 0 and draw(st.booleans())
    return dict(heads=heads, kv=kv, d=d, dv=draw(st.sampled_from([d, 1, 2])), rope=rope,
                form=draw(st.sampled_from(["sdpa", "manual", "fused"])), cout=_width(draw),
                mask=draw(st.sampled_from(["none", "buffer", "is_causal"])), t=t)


def _init_attention(s, metas, p):
    c, h, kv, d, dv, t = channels(metas[0]), p["heads"], p["kv"], p["d"], p["dv"], p["t"]
    s.q, s.k, s.v = nn.Linear(c, h * d), nn.Linear(c, kv * d), nn.Linear(c, kv * dv)
    s.qkv = nn.Linear(c, 3 * h * d)
    s.o = nn.Linear(h * (d if p["form"] == "fused" else dv), p["cout"])
    s.register_buffer("causal", torch.ones(t, t, dtype=torch.bool).tril())
    pos = torch.arange(t)[:, None] * torch.arange(1, d // 2 + 1)[None, :] * 0.3
    s.register_buffer("cos", torch.cat([pos.cos(), pos.cos()], -1))
    s.register_buffer("sin", torch.cat([pos.sin(), pos.sin()], -1))


def _rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def _heads(x, n, d):
    b, t, _ = x.shape
    return x.view(b, t, n, d).transpose(1, 2)


def _qkv(s, x):
    p = s.p
    if p["form"] == "fused":  # one projection, split by unbind: q, k, v share heads and head dims
        b, t, _ = x.shape
        return s.qkv(x).view(b, t, 3, p["heads"], p["d"]).permute(2, 0, 3, 1, 4).unbind(0)
    return _heads(s.q(x), p["heads"], p["d"]), _heads(s.k(x), p["kv"], p["d"]), _heads(s.v(x), p["kv"], p["dv"])


def _attention(s, x):
    p = s.p
    q, k, v = _qkv(s, x)
    if p["rope"]:
        q, k = q * s.cos + _rotate_half(q) * s.sin, k * s.cos + _rotate_half(k) * s.sin
    rep = 1 if p["form"] == "fused" else p["heads"] // p["kv"]
    dv = p["d"] if p["form"] == "fused" else p["dv"]
    if p["form"] == "sdpa":
        mask = s.causal if p["mask"] == "buffer" else None
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=p["mask"] == "is_causal",
                                           enable_gqa=rep > 1)
    else:
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        if p["mask"] != "none":
            att = att.masked_fill(~s.causal, float("-inf"))
        o = att.softmax(-1) @ v
    b, t = x.shape[0], x.shape[1]
    return s.o(o.transpose(1, 2).reshape(b, t, p["heads"] * dv))


def _draw_mha(draw, metas):
    c = channels(metas[0])
    return dict(heads=draw(st.sampled_from(_divisors(c))), mask=draw(st.sampled_from(["none", "causal", "padding"])),
                weights=draw(st.booleans()), t=metas[0][1], pad=draw(st.integers(0, metas[0][1] - 1)))


def _init_mha(s, metas, p):
    t = p["t"]
    s.m = nn.MultiheadAttention(channels(metas[0]), p["heads"], batch_first=True)
    s.register_buffer("mask", torch.triu(torch.full((t, t), float("-inf")), 1))
    s.register_buffer("pad", torch.arange(t)[None, :].expand(2, t) >= t - p["pad"])


def _mha(s, x):
    p = s.p
    mask = s.mask if p["mask"] == "causal" else None
    pad = s.pad.to(x.dtype) * -1e4 if p["mask"] == "padding" else None
    return s.m(x, x, x, attn_mask=mask, key_padding_mask=pad, need_weights=p["weights"])[0]


# -- batch x heads and spatial x channels folded into one dim (issue 26) -------------------------
def _draw_heads_fold(draw, metas):
    return dict(heads=draw(st.sampled_from([1, 2, 3, 4])), d=draw(st.sampled_from([1, 2, 3])),
                read=draw(st.sampled_from(["shape", "size"])), how=draw(st.sampled_from(["reshape", "view"])),
                cout=_width(draw))


def _init_heads_fold(s, metas, p):
    c, hd = channels(metas[0]), p["heads"] * p["d"]
    s.q, s.k, s.v, s.o = nn.Linear(c, hd), nn.Linear(c, hd), nn.Linear(c, hd), nn.Linear(hd, p["cout"])


def _heads_fold(s, x):
    """``q.reshape(B * heads, T, d)``: the batch read at run time times the (pruned) heads."""
    p = s.p
    b, t = (x.shape[0], x.shape[1]) if p["read"] == "shape" else (x.size(0), x.size(1))

    def fold(y):
        y = y.view(b, t, p["heads"], -1).transpose(1, 2)
        return y.reshape(b * p["heads"], t, -1) if p["how"] == "reshape" else y.contiguous().view(b * p["heads"], t, -1)

    q, k, v = fold(s.q(x)), fold(s.k(x)), fold(s.v(x))
    o = torch.bmm(torch.bmm(q, k.transpose(1, 2)).softmax(-1), v)
    return s.o(o.view(b, p["heads"], t, -1).transpose(1, 2).reshape(b, t, -1))


def _draw_pixel_fold(draw, metas):
    return dict(form=draw(st.sampled_from(["pixels", "rows"])), read=draw(st.sampled_from(["shape", "size"])))


def _pixel_fold(s, x):
    """``x.reshape(B * C, H * W)`` or ``x.reshape(B, C * H, W)``: channels folded with spatial dims."""
    b, c, h, w = x.shape if s.p["read"] == "shape" else (x.size(0), x.size(1), x.size(2), x.size(3))
    if s.p["form"] == "pixels":
        return x.reshape(b * c, h * w).softmax(-1).reshape(b, c, h, w)
    return x.reshape(b, c * h, w).softmax(-1).view(b, c, h, w)


# -- index ops ------------------------------------------------------------------------------------
def _draw_index(draw, metas):
    c = channels(metas[0])
    idx = draw(st.lists(st.integers(0, c - 1), min_size=1, max_size=c + 2))
    forms = ["index_select", "advanced", "gather", "take_along_dim"] + (["embedding"] if len(metas[0]) == 2 else [])
    return dict(idx=tuple(idx), form=draw(st.sampled_from(forms)))


def _init_index(s, metas, p):
    s.register_buffer("idx", torch.tensor(p["idx"]))


def _index(s, x):
    form, d, idx = s.p["form"], s.cd, s.idx
    if form == "index_select":
        return x.index_select(d, idx)
    if form == "advanced":
        return x[:, idx] if d == 1 else x[..., idx]
    shape = [1] * s.nd
    shape[d] = len(s.p["idx"])
    if form == "take_along_dim":
        return torch.take_along_dim(x, idx.view(shape), dim=d)
    if form == "embedding":  # the channels as an embedding table, looked up by index
        return F.embedding(idx, x.t()).t()
    full = [len(s.p["idx"]) if i == d else x.shape[i] for i in range(s.nd)]
    return torch.gather(x, d, idx.view(shape).expand(full))


def _draw_posemb(draw, metas):
    return dict(t=metas[0][1])


def _init_posemb(s, metas, p):
    s.emb = nn.Embedding(p["t"], channels(metas[0]))
    s.register_buffer("pos", torch.arange(p["t"]))


def _posemb(s, x):
    return x + s.emb(s.pos)


# -- pooling and kind changes --------------------------------------------------------------------
def _draw_pool(draw, metas):
    return dict(form=draw(st.sampled_from(["avg", "max", "adaptive", "stride"])))


def _pool(s, x):
    form = s.p["form"]
    if form == "avg":
        return F.avg_pool2d(x, 3, 1, 1)
    if form == "max":
        return F.max_pool2d(x, 3, 1, 1)
    if form == "adaptive":
        return F.adaptive_avg_pool2d(x, 1)
    return F.max_pool2d(x, 2, 2, ceil_mode=True)


def _draw_se(draw, metas):
    return dict(r=draw(st.integers(1, 4)))


def _init_se(s, metas, p):
    c = channels(metas[0])
    s.fc1, s.fc2 = nn.Conv2d(c, p["r"], 1), nn.Conv2d(p["r"], c, 1)


def _se(s, x):
    return x * torch.sigmoid(s.fc2(F.relu(s.fc1(x.mean((2, 3), keepdim=True)))))


def _draw_to_seq(draw, metas):
    return dict()


def _to_seq(s, x):
    return x.flatten(2).transpose(1, 2)


def _draw_to_vec(draw, metas):
    return dict(form=draw(st.sampled_from(["pool", "flatten"] if len(metas[0]) == 4 else ["mean", "token"])))


def _to_vec(s, x):
    form = s.p["form"]
    if form == "pool":
        return F.adaptive_avg_pool2d(x, 1).flatten(1)
    if form == "flatten":
        return x.flatten(1)
    return x.mean(1) if form == "mean" else x[:, 0]


def _draw_to_img(draw, metas):
    return dict(hw=draw(st.integers(1, 3)))


def _to_img(s, x):
    n = s.p["hw"]
    return x[:, :, None, None].expand(-1, -1, n, n)


def _draw_gate(draw, metas):
    return dict(act=draw(st.sampled_from(["sigmoid", "none"])))


def _init_gate(s, metas, p):
    s.proj = nn.Linear(channels(metas[1]), channels(metas[0]))


def _gate(s, x, g):
    g = s.proj(g)
    g = torch.sigmoid(g) if s.p["act"] == "sigmoid" else g
    return x * (g[:, :, None, None] if s.nd == 4 else g[:, None, :])


def _draw_mixer(draw, metas):
    return dict(t2=draw(st.integers(1, 5)))


def _init_mixer(s, metas, p):
    s.m = nn.Linear(metas[0][1], p["t2"])


def _mixer(s, x):
    return s.m(x.transpose(1, 2)).transpose(1, 2)


def _draw_convt(draw, metas):
    c = channels(metas[0])
    cout = _width(draw, c)
    return dict(cout=cout, k=draw(st.sampled_from([2, 3])), groups=draw(st.sampled_from(_divisors(math.gcd(c, cout)))))


def _init_convt(s, metas, p):
    k = p["k"]
    s.m = nn.ConvTranspose2d(channels(metas[0]), p["cout"], k, stride=2 if k == 2 else 1, padding=k // 2 if k == 3 else 0,
                             groups=p["groups"])


def _convt(s, x):
    return s.m(x)


def _draw_rnn(draw, metas):
    return dict(kind=draw(st.sampled_from(["LSTM", "GRU"])), hidden=_width(draw), bi=draw(st.booleans()))


def _init_rnn(s, metas, p):
    s.m = getattr(nn, p["kind"])(channels(metas[0]), p["hidden"], batch_first=True, bidirectional=p["bi"])


def _rnn(s, x):
    return s.m(x)[0]


def _draw_resize(draw, metas):
    return dict(mode=draw(st.sampled_from(["nearest", "bilinear"])))


def _resize(s, x):
    return F.interpolate(x, scale_factor=2, mode=s.p["mode"])


MORE = [
    op("gate", ("img", "seq"), _draw_gate, _gate, _init_gate, arity=2, partner=lambda a, b: len(b) == 2),
    op("mixer", ("seq",), _draw_mixer, _mixer, _init_mixer),
    op("convt", ("img",), _draw_convt, _convt, _init_convt),
    op("rnn", ("seq",), _draw_rnn, _rnn, _init_rnn),
    op("resize", ("img",), _draw_resize, _resize),
    op("attention", ("seq",), _draw_attention, _attention, _init_attention),
    op("mha", ("seq",), _draw_mha, _mha, _init_mha),
    op("heads_fold", ("seq",), _draw_heads_fold, _heads_fold, _init_heads_fold),
    op("pixel_fold", ("img",), _draw_pixel_fold, _pixel_fold),
    op("index", ("img", "seq", "vec"), _draw_index, _index, _init_index),
    op("posemb", ("seq",), _draw_posemb, _posemb, _init_posemb),
    op("pool", ("img",), _draw_pool, _pool),
    op("se", ("img",), _draw_se, _se, _init_se),
    op("to_seq", ("img",), _draw_to_seq, _to_seq),
    op("to_vec", ("img", "seq"), _draw_to_vec, _to_vec),
    op("to_img", ("vec",), _draw_to_img, _to_img),
]
_ = (_no_init, _no_params)
