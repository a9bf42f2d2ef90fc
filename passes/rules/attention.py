"""Matrix products and attention: matmul/bmm/@, einsum, addmm, SDPA, nn.MultiheadAttention."""
from __future__ import annotations

import math
import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..axes import UNIT
from ..context import SV, TV, RuleContext, RuleError
from ..registry import method, register
from .common import hidden_one

__all__ = ["matmul", "einsum", "addmm", "sdpa", "multihead_attention", "contract_pair", "broadcast_dims"]


def contract_pair(ctx: RuleContext, a: TV, da: int, b: TV, db: int) -> None:
    """Equate a contracted axis; a parameter operand records it as its consumer dim."""
    ctx.unify(a.dims[da], b.dims[db])
    if a.param_dim(da) is not None or b.param_dim(db) is not None:
        for t, d in ((a, da), (b, db)):
            if t.param_dim(d) is not None:
                ctx.analyzer.mark_consumer(t.source, t.param_dim(d))
    else:
        ctx.mixing(a.dims[da], "contraction of two activations")


def broadcast_dims(ctx: RuleContext, parts: list, n: int) -> list:
    """Broadcast ``n`` trailing-aligned dims over ``(shape, dims)`` parts."""
    out = []
    for i in range(n):
        layouts = [dims[j] for shape, dims in parts if (j := len(shape) - n + i) >= 0 and shape[j] != 1]
        for other in layouts[1:]:
            ctx.unify(layouts[0], other)
        out.append(layouts[0] if layouts else
                   hidden_one([dims[j] for shape, dims in parts if (j := len(shape) - n + i) >= 0]))
    return out


def matmul_core(ctx: RuleContext, a: TV, b: TV) -> TV:
    a_vec, b_vec = a.ndim == 1, b.ndim == 1
    contract_pair(ctx, a, a.ndim - 1, b, 0 if b_vec else b.ndim - 2)
    n_batch = ctx.out.ndim - (0 if a_vec else 1) - (0 if b_vec else 1)
    parts = [(a.shape[:-2], a.dims[:-2]) if a.ndim > 2 else ((), ()),
             (b.shape[:-2], b.dims[:-2]) if b.ndim > 2 else ((), ())]
    dims = broadcast_dims(ctx, parts, n_batch)
    if not a_vec:
        dims.append(a.dims[-2])
    if not b_vec:
        dims.append(b.dims[-1])
    return ctx.result(dims)


@register(torch.matmul, operator.matmul, method("matmul"), method("__matmul__"), torch.bmm, method("bmm"),
          torch.mm, method("mm"), torch.mv, method("mv"))
def matmul(ctx: RuleContext) -> TV:
    return matmul_core(ctx, ctx.tensor(0, "input"), ctx.tensor(1, "other"))


@register(torch.addmm, method("addmm"), torch.baddbmm, method("baddbmm"), torch.addbmm)
def addmm(ctx: RuleContext) -> TV:
    """``beta * input + alpha * (mat1 @ mat2)``."""
    bias, a, b = ctx.tensor(0, "input"), ctx.tensor(1, "mat1"), ctx.tensor(2, "mat2")
    prod = matmul_core(ctx, a, b)
    out = broadcast_dims(ctx, [(prod.shape, prod.dims), (bias.shape, bias.dims)], len(prod.shape))
    return ctx.result(out)


def _einsum_terms(eq: str, tvs: list):
    lhs, _, rhs = eq.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if len(terms) != len(tvs):
        raise RuleError("einsum operand count")
    n_ell = max((t.ndim - (len(term) - 3) for term, t in zip(terms, tvs) if "..." in term), default=0)
    ell = [chr(0x3B1 + i) for i in range(n_ell)]  # greek letters stand for '...' dims
    expanded = []
    for term, t in zip(terms, tvs):
        if "..." in term:
            k = t.ndim - (len(term) - 3)
            term = term.replace("...", "".join(ell[n_ell - k:]))
        if len(term) != t.ndim:
            raise RuleError("einsum subscripts do not match operand rank")
        expanded.append(term)
    if not rhs and "->" not in eq:
        counts = "".join(expanded)
        rhs = "".join(ell) + "".join(sorted(c for c in set(counts) if counts.count(c) == 1 and c not in ell))
    return expanded, rhs.replace("...", "".join(ell))


@register(torch.einsum)
def einsum(ctx: RuleContext) -> TV:
    eq = ctx.const(0, "equation")
    raw = ctx.node.args[1:]
    vals = [ctx.v(r) for r in (raw[0] if len(raw) == 1 and isinstance(raw[0], (list, tuple)) else raw)]
    tvs = [v for v in vals if isinstance(v, TV)]
    terms, rhs = _einsum_terms(eq, tvs)
    where: dict = {}
    for term, t in zip(terms, tvs):
        for d, c in enumerate(term):
            if t.shape[d] != 1:
                where.setdefault(c, []).append((t, d))
    for c, occ in where.items():
        t0, d0 = occ[0]
        for t, d in occ[1:]:
            ctx.unify(t0.dims[d0], t.dims[d])
        if c not in rhs:
            params = [(t, d) for t, d in occ if t.param_dim(d) is not None]
            for t, d in params:
                ctx.analyzer.mark_consumer(t.source, t.param_dim(d))
            if not params:
                ctx.mixing(t0.dims[d0], "einsum contraction")
    return ctx.result([where[c][0][0].dims[where[c][0][1]] if c in where else UNIT for c in rhs])


def _mask_dims(ctx: RuleContext, mask: TV, target: list) -> None:
    for i in range(1, mask.ndim + 1):
        if mask.shape[-i] != 1 and i <= len(target):
            ctx.unify(mask.dims[-i], target[-i])


@register(F.scaled_dot_product_attention)
def sdpa(ctx: RuleContext) -> TV:
    """q (..., L, E), k (..., S, E), v (..., S, Ev) -> (..., L, Ev).

    Without an explicit ``scale`` SDPA scales by 1/sqrt(E): where E is pruned,
    the rewrite passes the original scale explicitly.
    """
    q, k, v = ctx.tensor(0, "query"), ctx.tensor(1, "key"), ctx.tensor(2, "value")
    ctx.unify(q.dims[-1], k.dims[-1])
    ctx.mixing(q.dims[-1], "attention scores")
    ctx.unify(k.dims[-2], v.dims[-2])
    batch = list(q.dims[:-2])
    gqa = q.ndim >= 3 and k.ndim >= 3 and q.shape[-3] != k.shape[-3]
    if gqa:  # enable_gqa: query heads are product(kv heads, repeats)
        rep = ctx.fresh(q.shape[-3] // k.shape[-3])
        ctx.unify(q.dims[-3], ctx.axes.product(k.dims[-3], rep))
        ctx.unify(k.dims[-3], v.dims[-3])
    for t in (k, v):  # batch dims: everything before (heads,) L/S, E
        for i in range(4 if gqa else 3, min(q.ndim, t.ndim) + 1):
            if t.shape[-i] != 1 and q.shape[-i] != 1:
                ctx.unify(q.dims[-i], t.dims[-i])
    mask = ctx.tensor(3, "attn_mask", default=None)
    if mask is not None:
        _mask_dims(ctx, mask, [*batch, q.dims[-2], k.dims[-2]])
    if ctx.const(6, "scale", None) is None:
        ctx.edit(("kwargs", "scale"), q.dims[-1], kind="constant", value=1.0 / math.sqrt(q.shape[-1]))
    return ctx.result((*q.dims[:-1], v.dims[-1]))


def _mha_inputs(ctx: RuleContext):
    q, k, v = ctx.tensor(0, "query"), ctx.tensor(1, "key"), ctx.tensor(2, "value")
    m = ctx.module
    if not m._qkv_same_embed_dim or m.bias_k is not None or ctx.const(4, "need_weights", True) and \
            not ctx.const(6, "average_attn_weights", True):
        raise RuleError("MultiheadAttention variant without a rule (separate q/k/v weights, bias_k, per-head weights)")
    return q, k, v


def _mha_masks(ctx: RuleContext, q: TV, k: TV, heads) -> list:
    """``key_padding_mask`` is (N, S); ``attn_mask`` is (L, S) or (N * num_heads, L, S):
    their dims are the batch, the query and key positions and the heads they mask.
    Returns the layouts of the attention weights' dims, (N, L, S) or (L, S)."""
    m, batched = ctx.module, q.ndim == 3
    seq = (1 if m.batch_first else 0) if batched else 0
    batch = q.dims[1 - seq] if batched else None
    length, source = q.dims[seq], k.dims[seq]
    pad = ctx.tensor(3, "key_padding_mask", default=None)
    if pad is not None:
        for have, want in zip(pad.dims, ([batch] if batched else []) + [source]):
            ctx.unify(have, want)
    mask = ctx.tensor(5, "attn_mask", default=None)
    if mask is not None:
        want = [length, source] if mask.ndim == 2 else \
            [ctx.axes.product(batch, heads) if batched else heads, length, source]
        for have, layout in zip(mask.dims, want):
            ctx.unify(have, layout)
    return ([batch] if batched else []) + [length, source]


@register(nn.MultiheadAttention)
def multihead_attention(ctx: RuleContext):
    """Packed in_proj rows are (q ++ k ++ v), each product(heads, head_dim) of size embed_dim.

    The module reshapes with ``embed_dim`` (the query's size) and scales by
    1/sqrt(head_dim), so the q/k/v axis is the query's embedding axis and the
    head dim is pinned: the embedding prunes by whole heads. Masks are tied to the
    batch, positions and heads they mask.
    """
    m, axes = ctx.module, ctx.axes
    q, k, v = _mha_inputs(ctx)
    w, b = ctx.module_param("in_proj_weight"), ctx.module_param("in_proj_bias")
    ow, ob = ctx.module_param("out_proj.weight"), ctx.module_param("out_proj.bias")
    e = q.dims[-1]
    heads, head_dim = axes.fresh(m.num_heads), axes.fresh(m.head_dim)
    ctx.unify(e, axes.product(heads, head_dim))
    ctx.pin(head_dim, "MultiheadAttention scales by 1/sqrt(head_dim)")
    wdims = _mha_masks(ctx, q, k, heads)
    for t in (k, v):
        ctx.unify(t.dims[-1], w.dims[1])
    ctx.unify(q.dims[-1], w.dims[1])
    ctx.unify(w.dims[0], e + e + e)
    if b is not None:
        ctx.unify(b.dims[0], w.dims[0])
    ctx.unify(ow.dims[1], e)
    if ob is not None:
        ctx.unify(ob.dims[0], ow.dims[0])
    for t, d in ((w, 1), (ow, 1)):
        ctx.analyzer.mark_consumer(t.source, d)
    ctx.mixing(head_dim, "attention scores")
    for name, layout in (("embed_dim", e), ("kdim", e), ("vdim", e), ("num_heads", heads), ("head_dim", head_dim),
                         ("out_proj.in_features", e), ("out_proj.out_features", ow.dims[0])):
        ctx.set_attr(name, layout)
    out = ctx.result((*q.dims[:-1], ow.dims[0]), out=ctx.out[0])
    weights = ctx.out[1]
    if weights is None:
        return SV((out, ctx.analyzer.value_of(None)))
    ctx.mixing(heads, "attention weights averaged over heads")
    return SV((out, ctx.result(wdims, out=weights)))
