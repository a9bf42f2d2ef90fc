"""Transformer building blocks, one tiny hand-written model each.

Every model: both exactness oracles pass (float64), a structural check of the
groups, removing a third of every group runs with the same output shapes and
fewer parameters, and the pruned model runs at another batch size and
sequence length.
"""
import math
import os
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune

sys.path.insert(0, os.path.dirname(__file__))
from models_tiny import group_with, n_params, sizes  # noqa: E402

torch.manual_seed(0)


def _shapes(out):
    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    if isinstance(out, (tuple, list)):
        return [s for o in out for s in _shapes(o)]
    return [None]


def third_keep(dg) -> dict:
    """Keep a random two thirds of every group (at least one coordinate)."""
    gen = torch.Generator().manual_seed(1)
    return {g: torch.randperm(g.size, generator=gen)[:max(1, g.size - g.size // 3)] for g in dg.groups}


def check(model, inputs, other, *, groups=None):
    """Oracles, then a third of every group removed: same output shapes, fewer params,
    runs on ``other`` (other batch size and sequence length). Returns (dg, pruned)."""
    model = model.eval()
    rep = fxprune.verify(model, inputs, raise_on_mismatch=False)
    assert rep.passed and rep.permutation_error < 1e-9 and rep.removal_error < 1e-9, str(rep)
    dg = fxprune.analyze(model, inputs)
    assert dg.groups, dg.report()
    if groups is not None:
        assert len(dg.groups) == groups, dg.report()
    pruned = fxprune.apply(dg, third_keep(dg))
    assert n_params(pruned) < n_params(model)
    for x in (inputs, other):
        with torch.no_grad():
            assert _shapes(model(*x)) == _shapes(pruned(*x))
    return dg, pruned


B, N, E = 2, 5, 12
X = (torch.randn(B, N, E),)
X2 = (torch.randn(3, 7, E),)


# -- matmul / bmm / @ / einsum --------------------------------------------------------------------

class MatmulWeight(nn.Module):
    """x @ W with a weight parameter: W's dim 0 is the consumer dim of x's features."""

    def __init__(self, fn):
        super().__init__()
        self.fc = nn.Linear(E, 8)
        self.w = nn.Parameter(torch.randn(8, 6))
        self.out = nn.Linear(6, 4)
        self.fn = fn

    def forward(self, x):
        h = F.relu(self.fc(x))
        if self.fn == "matmul":
            h = torch.matmul(h, self.w)
        elif self.fn == "op":
            h = h @ self.w
        elif self.fn == "bmm":
            h = torch.bmm(h, self.w.expand(h.shape[0], 8, 6))
        return self.out(F.relu(h))


@pytest.mark.parametrize("fn", ["matmul", "op", "bmm"])
def test_matmul_with_weight_parameter(fn):
    m = MatmulWeight(fn)
    dg, pruned = check(m, X, X2)
    hidden = group_with(dg, "fc.weight", 0)
    assert hidden.size == 8 and ("w", 0) in hidden.members
    if fn == "bmm":  # the expanded weight is a computed operand: the contraction is marked mixing
        assert hidden.mixing is not None
    else:
        assert dg.param_use("w").consumer_dims == frozenset({0}) and hidden.mixing is None
    assert ("out.weight", 1) in group_with(dg, "w", 1).members
    assert pruned.w.shape[0] < 8


class EinsumBlock(nn.Module):
    """Attention and MLP written with einsum, including '...' subscripts."""

    def __init__(self, h=3, d=4):
        super().__init__()
        self.h, self.d = h, d
        self.wq = nn.Parameter(torch.randn(E, h, d) / 4)
        self.wk = nn.Parameter(torch.randn(E, h, d) / 4)
        self.wv = nn.Parameter(torch.randn(E, h, d) / 4)
        self.wo = nn.Parameter(torch.randn(h, d, E) / 4)
        self.w1 = nn.Parameter(torch.randn(E, 10) / 4)
        self.w2 = nn.Parameter(torch.randn(10, E) / 4)

    def forward(self, x):
        q = torch.einsum("bne,ehd->bhnd", x, self.wq)
        k = torch.einsum("bne,ehd->bhnd", x, self.wk)
        v = torch.einsum("...ne,ehd->...hnd", x, self.wv)
        a = torch.einsum("bhnd,bhmd->bhnm", q, k).softmax(-1)
        o = torch.einsum("bhnm,bhmd->bnhd", a, v)
        x = x + torch.einsum("bnhd,hde->bne", o, self.wo)
        return x + torch.einsum("...f,fe->...e", F.gelu(torch.einsum("...e,ef->...f", x, self.w1)), self.w2)


def test_einsum_attention_and_mlp():
    m = EinsumBlock()
    dg, pruned = check(m, X, X2)
    # heads (q, k, v, o), qk head dim, v head dim, MLP width; the residual stream is an output
    assert sizes(dg) == [3, 4, 4, 10]
    heads = group_with(dg, "wq", 1)
    assert {("wk", 1), ("wv", 1), ("wo", 0)} <= set(heads.members)
    assert group_with(dg, "wq", 2) is group_with(dg, "wk", 2)
    assert group_with(dg, "wv", 2) is group_with(dg, "wo", 1)
    assert group_with(dg, "wq", 2) is not group_with(dg, "wv", 2)
    assert pruned.w1.shape == (E, 10 - 3)


# -- SDPA -------------------------------------------------------------------------------------------

class SDPABlock(nn.Module):
    def __init__(self, mode, h=2, d=6):
        super().__init__()
        self.h, self.d, self.mode = h, d, mode
        self.q, self.k, self.v = nn.Linear(E, h * d), nn.Linear(E, h * d), nn.Linear(E, h * d)
        self.o = nn.Linear(h * d, E)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.h, self.d).transpose(1, 2)
        k = self.k(x).view(b, n, self.h, self.d).transpose(1, 2)
        v = self.v(x).view(b, n, self.h, self.d).transpose(1, 2)
        if self.mode == "mask":
            mask = torch.ones(n, n, dtype=torch.bool).tril()
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif self.mode == "float_mask":
            mask = torch.zeros(n, n) - torch.arange(n).float()[None, :]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
        elif self.mode == "causal":
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            o = F.scaled_dot_product_attention(q, k, v)
        return self.o(o.transpose(1, 2).reshape(b, n, self.h * self.d))


@pytest.mark.parametrize("mode", ["plain", "mask", "float_mask", "causal"])
def test_sdpa_heads_and_head_dims(mode):
    m = SDPABlock(mode)
    dg, _ = check(m, X, X2)
    # heads (shared by q, k, v, o), qk head_dim, v head_dim
    assert sizes(dg) == [2, 6, 6]
    heads = group_with(dg, "q.weight", 0, size=2)
    assert {("k.weight", 0), ("v.weight", 0), ("o.weight", 1)} <= set(heads.members)
    qk = group_with(dg, "q.weight", 0, size=6)
    assert ("k.weight", 0) in qk.members and ("v.weight", 0) not in qk.members


def test_sdpa_head_dim_removal_keeps_the_scale():
    """Pruning qk head dims: the rewrite passes the original 1/sqrt(d) scale explicitly, so with
    the removed q coordinates zeroed the pruned model computes exactly what the original did."""
    m = SDPABlock("plain").double().eval()
    x = torch.randn(2, 5, E, dtype=torch.double)
    dg = fxprune.analyze(m, (x,))
    qk = group_with(dg, "q.weight", 0, size=6)
    keep = [0, 2, 3, 5]
    removed = [1, 4]
    with torch.no_grad():
        for h in range(2):  # zero the removed qk dims of q in every head (after the permutation-free view)
            for j in removed:
                m.q.weight[h * 6 + j] = 0
                m.q.bias[h * 6 + j] = 0
        ref = m(x)
    pruned = fxprune.apply(dg, {qk: keep})
    assert pruned.q.weight.shape == (8, E) and pruned.k.weight.shape == (8, E)
    sdpa = [n for n in pruned.graph.nodes if n.target is F.scaled_dot_product_attention]
    assert sdpa and sdpa[0].kwargs.get("scale") == pytest.approx(1 / math.sqrt(6))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), ref, rtol=1e-12, atol=1e-12)


# -- softmax, norms ---------------------------------------------------------------------------------

class SoftmaxOverTokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(E, 8), nn.Linear(8, 4)

    def forward(self, x):
        h = self.a(x)
        h = h * h.softmax(dim=1)  # over the sequence: channels stay independent
        return self.b(h)


def test_softmax_over_a_non_channel_dim_keeps_channels_prunable():
    dg, _ = check(SoftmaxOverTokens(), X, X2, groups=1)
    g = dg.groups[0]
    assert g.size == 8 and g.mixing is None


class SoftmaxOverChannels(SoftmaxOverTokens):
    def forward(self, x):
        return self.b(self.a(x).softmax(-1))


def test_softmax_over_channels_is_mixing():
    dg, _ = check(SoftmaxOverChannels(), X, X2, groups=1)
    assert dg.groups[0].mixing is not None


class RMSNorm(nn.Module):
    def __init__(self, n, eps=1e-6):
        super().__init__()
        self.w, self.eps = nn.Parameter(torch.rand(n) + 0.5), eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.w


class NormBlock(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.up = nn.Linear(E, 10)
        self.norm = nn.LayerNorm(10) if kind == "layer" else RMSNorm(10)
        self.down = nn.Linear(10, 4)

    def forward(self, x):
        return self.down(self.norm(self.up(x)))


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_layer_norm_and_handwritten_rms_norm(kind):
    dg, pruned = check(NormBlock(kind), X, X2, groups=1)
    g = dg.groups[0]
    w = "norm.weight" if kind == "layer" else "norm.w"
    assert g.size == 10 and (w, 0) in g.members and ("down.weight", 1) in g.members
    assert g.mixing is not None  # the norm statistics mix the coordinates
    assert pruned.get_parameter(w).shape == (7,)


# -- embeddings, tied weights -----------------------------------------------------------------------

class TinyLM(nn.Module):
    def __init__(self, vocab=20, tied=True):
        super().__init__()
        self.emb = nn.Embedding(vocab, E)
        self.fc1, self.fc2 = nn.Linear(E, 16), nn.Linear(16, E)
        self.head = None if tied else nn.Linear(E, vocab, bias=False)

    def forward(self, ids):
        x = self.emb(ids)
        x = x + self.fc2(F.gelu(self.fc1(x)))
        w = self.emb.weight if self.head is None else self.head.weight
        return F.linear(x, w)


IDS = (torch.randint(0, 20, (2, 6)),)
IDS2 = (torch.randint(0, 20, (3, 9)),)


def test_embedding_rows_pinned_features_prunable():
    dg, pruned = check(TinyLM(tied=False), IDS, IDS2)
    assert sizes(dg) == [12, 16]
    stream = group_with(dg, "emb.weight", 1)
    assert ("head.weight", 1) in stream.members and ("fc2.weight", 0) in stream.members
    assert not any(("emb.weight", 0) in g.members for g in dg.groups)
    assert pruned.emb.embedding_dim == pruned.emb.weight.shape[1] == 8


def test_tied_embedding_and_output_weight_are_one_group():
    m = TinyLM(tied=True)
    dg, pruned = check(m, IDS, IDS2)
    stream = group_with(dg, "emb.weight", 1)
    assert stream.size == E and ("fc1.weight", 1) in stream.members
    assert pruned.emb.weight.shape == (20, 8)  # the one tensor serves both uses


# -- nn.MultiheadAttention ------------------------------------------------------------------------

class MHABlock(nn.Module):
    def __init__(self, batch_first, need_weights):
        super().__init__()
        self.inp = nn.Linear(E, E)
        self.mha = nn.MultiheadAttention(E, 3, batch_first=batch_first)
        self.out = nn.Linear(E, 4)
        self.need_weights = need_weights

    def forward(self, x):
        h = self.inp(x)
        o, w = self.mha(h, h, h, need_weights=self.need_weights)
        o = self.out(o)
        return (o, w) if self.need_weights else o


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_heads_prunable_head_dim_pinned(batch_first, need_weights):
    m = MHABlock(batch_first, need_weights)
    dg, pruned = check(m, X, X2)
    heads = [g for g in dg.groups if ("mha.in_proj_weight", 0) in g.members]
    assert [g.size for g in heads] == [3], dg.report()
    assert ("mha.out_proj.weight", 1) in heads[0].members
    assert pruned.mha.num_heads == 2 and pruned.mha.head_dim == 4 and pruned.mha.embed_dim == 8


# -- cls token, positional parameters ------------------------------------------------------------

class ClsPos(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, E)
        self.cls = nn.Parameter(torch.randn(1, 1, E))
        self.pos = nn.Parameter(torch.randn(1, 5, E))
        self.fc1, self.fc2 = nn.Linear(E, 10), nn.Linear(10, E)
        self.head = nn.Linear(E, 3)

    def forward(self, x):
        x = self.embed(x)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = x + self.fc2(F.relu(self.fc1(x)))
        return self.head(x[:, 0])


def test_cls_token_and_positional_embedding_join_the_stream():
    m = ClsPos()
    x, x2 = (torch.randn(2, 4, 6),), (torch.randn(5, 4, 6),)  # sequence length is fixed by pos
    dg, pruned = check(m, x, x2)
    stream = group_with(dg, "embed.weight", 0)
    assert {("cls", 2), ("pos", 2), ("head.weight", 1), ("fc2.bias", 0)} <= set(stream.members)
    assert pruned.cls.shape == (1, 1, 8) and pruned.pos.shape == (1, 5, 8)


# -- repeats, GQA ---------------------------------------------------------------------------------

class Repeats(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.a = nn.Linear(E, 4)
        self.b = nn.Linear(8, 3)
        self.how = how

    def forward(self, x):
        h = self.a(x)
        if self.how == "repeat":
            h = h.repeat(1, 1, 2)
        elif self.how == "repeat_interleave":
            h = h.repeat_interleave(2, dim=-1)
        else:
            h = h[..., None].expand(-1, -1, -1, 2).reshape(h.shape[0], h.shape[1], 8)
        return self.b(h)


@pytest.mark.parametrize("how", ["repeat", "repeat_interleave", "expand"])
def test_repeat_expand_tie_the_copies(how):
    m = Repeats(how)
    dg, pruned = check(m, X, X2)
    g = group_with(dg, "a.weight", 0)
    assert g.size == 4 and ("b.weight", 1) in g.members
    assert pruned.b.weight.shape[1] == 2 * pruned.a.weight.shape[0]


class GQA(nn.Module):
    def __init__(self, how, h=4, kv=2, d=4):
        super().__init__()
        self.h, self.kv, self.d, self.how = h, kv, d, how
        self.q = nn.Linear(E, h * d)
        self.k, self.v = nn.Linear(E, kv * d), nn.Linear(E, kv * d)
        self.o = nn.Linear(h * d, E)

    def _rep(self, t):
        b, kv, n, d = t.shape
        r = self.h // self.kv
        if self.how == "repeat_interleave":
            return t.repeat_interleave(r, dim=1)
        if self.how == "expand":  # HF repeat_kv
            return t[:, :, None, :, :].expand(b, kv, r, n, d).reshape(b, kv * r, n, d)
        return t

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, -1, self.d).transpose(1, 2)
        k = self._rep(self.k(x).view(b, n, -1, self.d).transpose(1, 2))
        v = self._rep(self.v(x).view(b, n, -1, self.d).transpose(1, 2))
        if self.how == "enable_gqa":
            o = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        else:
            o = F.scaled_dot_product_attention(q, k, v)
        return self.o(o.transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize("how", ["repeat_interleave", "expand", "enable_gqa"])
def test_gqa_kv_heads_and_repeats(how):
    m = GQA(how)
    dg, pruned = check(m, X, X2)
    # kv heads (2), repeats (2), qk head dim (4), v head dim (4)
    assert sizes(dg) == [2, 2, 4, 4], dg.report()
    kv = group_with(dg, "k.weight", 0, size=2)
    assert ("v.weight", 0) in kv.members and ("q.weight", 0) in kv.members and ("o.weight", 1) in kv.members
    rep = [g for g in dg.groups if g.size == 2 and g is not kv]
    assert len(rep) == 1 and ("q.weight", 0) in rep[0].members and ("k.weight", 0) not in rep[0].members
    # drop one kv head: q loses its whole group of query heads
    small = fxprune.apply(dg, {kv: [1]})
    assert small.k.weight.shape == (4, E) and small.q.weight.shape == (8, E)
    with torch.no_grad():
        assert small(*X2).shape == m(*X2).shape


# -- masked_fill / where / gather / index_select --------------------------------------------------

class MaskedAttention(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.q, self.k, self.v = nn.Linear(E, 6), nn.Linear(E, 6), nn.Linear(E, 8)
        self.o = nn.Linear(8, 4)

    def forward(self, x):
        n = x.shape[1]
        s = self.q(x) @ self.k(x).transpose(-1, -2)
        mask = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        if self.kind == "masked_fill":
            s = s.masked_fill(mask, float("-inf"))
        else:
            s = torch.where(mask, torch.full_like(s, -1e9), s)
        return self.o(s.softmax(-1) @ self.v(x))


@pytest.mark.parametrize("kind", ["masked_fill", "where"])
def test_masked_fill_and_where_on_scores(kind):
    dg, _ = check(MaskedAttention(kind), X, X2)
    assert sizes(dg) == [6, 8]
    assert ("k.weight", 0) in group_with(dg, "q.weight", 0).members
    assert ("o.weight", 1) in group_with(dg, "v.weight", 0).members


class GatherTokens(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.a, self.b = nn.Linear(E, 8), nn.Linear(8, 4)

    def forward(self, x):
        h = self.a(x)
        n = h.shape[1]
        idx = torch.arange(n - 1, -1, -1, device=x.device)
        if self.kind == "index_select":
            h = h.index_select(1, idx)
        else:
            h = h.gather(1, idx[None, :, None].expand(h.shape[0], n, h.shape[2]))
        return self.b(h)


@pytest.mark.parametrize("kind", ["index_select", "gather"])
def test_gather_and_index_select_on_tokens(kind):
    m = GatherTokens(kind)
    dg, pruned = check(m, X, X2)
    if kind == "index_select":
        g = group_with(dg, "a.weight", 0)
        assert g.size == 8 and ("b.weight", 1) in g.members
        assert pruned.a.weight.shape == (6, E)


# -- recurrent layers -----------------------------------------------------------------------------

class Recurrent(nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.a = nn.Linear(E, 8)
        self.rnn = cls(8, 6, batch_first=True)
        self.b = nn.Linear(6, 3)

    def forward(self, x):
        out, _ = self.rnn(F.relu(self.a(x)))
        return self.b(out)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_rnn_input_features_prunable_hidden_pinned(cls):
    m = Recurrent(cls)
    dg, pruned = check(m, X, X2, groups=1)
    g = dg.groups[0]
    assert g.size == 8 and ("rnn.weight_ih_l0", 1) in g.members
    assert pruned.rnn.input_size == 6 and pruned.rnn.hidden_size == 6


# -- heads reshape, fused qkv, RoPE ---------------------------------------------------------------

class FusedQKV(nn.Module):
    """timm-style attention: one qkv Linear, reshape (B, N, 3, h, d), permute, unbind."""

    def __init__(self, h=3, d=4, fused=True):
        super().__init__()
        self.h, self.d, self.fused = h, d, fused
        self.qkv = nn.Linear(E, 3 * h * d)
        self.proj = nn.Linear(h * d, E)
        self.fc = nn.Linear(E, 5)

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        a = (q * self.d ** -0.5) @ k.transpose(-2, -1)
        o = (a.softmax(-1) @ v).transpose(1, 2).reshape(b, n, self.h * self.d)
        return self.fc(x + self.proj(o))


def test_fused_qkv_unbind_heads_and_head_dim():
    m = FusedQKV()
    dg, pruned = check(m, X, X2)
    assert sizes(dg) == [3, 4], dg.report()
    heads = group_with(dg, "qkv.weight", 0, size=3)
    assert ("proj.weight", 1) in heads.members
    assert pruned.qkv.weight.shape == (3 * 2 * 3, E) and pruned.proj.weight.shape == (E, 2 * 3)


class HeadsReshape(nn.Module):
    """(B, N, h*d) -> (B, N, h, d) -> per-head linear on d: two groups, heads and head_dim."""

    def __init__(self, h=3, d=4):
        super().__init__()
        self.h, self.d = h, d
        self.inp = nn.Linear(E, h * d)
        self.per_head = nn.Parameter(torch.randn(h, d))
        self.out = nn.Linear(h * d, E)

    def forward(self, x):
        b, n, _ = x.shape
        t = self.inp(x).view(b, n, self.h, self.d) * self.per_head
        return self.out(t.reshape(b, n, -1))


def test_heads_reshape_gives_heads_and_head_dim_groups():
    m = HeadsReshape()
    dg, pruned = check(m, X, X2)
    assert sizes(dg) == [3, 4]
    heads, dims = group_with(dg, "per_head", 0), group_with(dg, "per_head", 1)
    assert heads.size == 3 and dims.size == 4
    for g in (heads, dims):
        assert {("inp.weight", 0), ("out.weight", 1)} <= set(g.members)
    assert pruned.per_head.shape == (2, 3)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


class RoPE(nn.Module):
    """Rotary embeddings on q and k. ``table``: cos/sin buffers sliced to the sequence length
    (``cos[:n]``, captured by torch.export); otherwise computed HF-style from ``inv_freq``."""

    def __init__(self, table, h=2, d=8, n_max=16):
        super().__init__()
        self.h, self.d, self.table = h, d, table
        self.q, self.k, self.v = nn.Linear(E, h * d), nn.Linear(E, h * d), nn.Linear(E, h * d)
        self.o = nn.Linear(h * d, E)
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d)))
        if table:
            ang = torch.arange(n_max).float()[:, None] * self.inv_freq[None, :]
            emb = torch.cat([ang, ang], -1)
            self.register_buffer("cos", emb.cos())
            self.register_buffer("sin", emb.sin())

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.h, self.d).transpose(1, 2)
        k = self.k(x).view(b, n, self.h, self.d).transpose(1, 2)
        v = self.v(x).view(b, n, self.h, self.d).transpose(1, 2)
        if self.table:
            cos, sin = self.cos[:n], self.sin[:n]
        else:
            ang = torch.arange(n, device=x.device).to(x.dtype)[:, None] * self.inv_freq[None, :].to(x.dtype)
            emb = torch.cat((ang, ang), dim=-1)
            cos, sin = emb.cos(), emb.sin()
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(o.transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize("table", [False, True])
def test_rope_ties_coordinates_j_and_j_plus_half(table):
    m = RoPE(table)
    dg, pruned = check(m, X, X2)
    # heads 2, v head dim 8, and the qk head dim becomes (half ++ half): one group of d/2 = 4
    assert sizes(dg) == [2, 4, 8], dg.report()
    half = group_with(dg, "q.weight", 0, size=4)
    assert ("k.weight", 0) in half.members
    # symbolic_trace turns ``self.inv_freq[None, :]`` into a tensor constant: the frequencies are pruned too
    freq = {("cos", 1)} if table else {("inv_freq", 0), ("_tensor_constant0", 1)}
    assert freq & set(half.members), half.members
    assert not any(("q.weight", 0) in g.members and g.size == 8 for g in dg.groups)
    if table:  # rows sliced by the run-time sequence length are pinned, never pruned
        assert not any(("cos", 0) in g.members for g in dg.groups)
    # removing coordinate j removes j + d/2 too
    small = fxprune.apply(dg, {half: [0, 2, 3]})
    assert small.get_parameter("q.weight").shape == (2 * 6, E) if not table else True
    with torch.no_grad():
        assert small(*X2).shape == (3, 7, E)
