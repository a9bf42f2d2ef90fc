"""Embeddings, recurrent layers, gathers, repeats and coordinate-dependent ops."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..axes import UNIT
from ..context import IV, SV, TV, RuleContext, RuleError
from ..registry import method, register
from .common import size_arg_edit

__all__ = ["embedding", "recurrent", "index_select", "gather", "take_along_dim", "repeat_interleave", "coordinate_dependent"]


def embedding_core(ctx: RuleContext, idx: TV, w: TV, max_norm=None) -> TV:
    ctx.pin(w.dims[0], f"embedding rows are addressed by token ids at {ctx.where}")
    if max_norm is not None:
        ctx.mixing(w.dims[1], "embedding rows renormalized (max_norm)")
    return ctx.result((*idx.dims, w.dims[1]))


@register(F.embedding)
def embedding(ctx: RuleContext) -> TV:
    return embedding_core(ctx, ctx.tensor(0, "input"), ctx.tensor(1, "weight"), ctx.const(3, "max_norm", None))


@register(nn.Embedding)
def embedding_module(ctx: RuleContext) -> TV:
    w = ctx.module_param("weight")
    out = embedding_core(ctx, ctx.tensor(0, "input"), w, ctx.module.max_norm)
    ctx.set_attr("embedding_dim", w.dims[1])
    return out


@register(nn.LSTM, nn.GRU, nn.RNN)
def recurrent(ctx: RuleContext) -> SV:
    """The input features are prunable (the first layer's input weights read them);
    the hidden size is pinned: gates are interleaved blocks of it and states leave the module."""
    m = ctx.module
    x = ctx.tensor(0, "input")
    w_ih = ctx.module_param("weight_ih_l0")
    ctx.unify(x.dims[-1], w_ih.dims[1])
    ctx.analyzer.mark_consumer(w_ih.source, 1)
    if m.bidirectional:
        w_rev = ctx.module_param("weight_ih_l0_reverse")
        ctx.unify(x.dims[-1], w_rev.dims[1])
        ctx.analyzer.mark_consumer(w_rev.source, 1)
    reason = f"hidden state of {type(m).__name__} at {ctx.where}"
    for name, p in m.named_parameters():
        if name not in ("weight_ih_l0", "weight_ih_l0_reverse"):
            ctx.pin_value(ctx.module_param(name), reason)
    for name in ("weight_ih_l0", "weight_ih_l0_reverse"):
        if hasattr(m, name):
            ctx.pin(ctx.module_param(name).dims[0], reason)
    if ctx.has_arg(1, "hx") and ctx.arg(1, "hx") is not None:
        ctx.pin_value(ctx.v(ctx.arg(1, "hx")), reason)
    ctx.set_attr("input_size", x.dims[-1])
    out = ctx.analyzer.from_output(ctx.out, reason)
    seq = out.items[0]
    batch_dims = x.dims[:-1]
    seq.dims = (*batch_dims, seq.dims[-1])  # time and batch dims pass through
    return out


# Note [Index tensors]: an index's *values* are coordinates of the dim they address, so that
# dim is pinned (renumbering it would need the values rewritten). An index's own dims are
# coordinates of the output (``out[j] = x[idx[j]]``): they are the same axes, so keeping a
# subset of the index's entries keeps the same subset of the output, exactly.
@register(torch.index_select, method("index_select"))
def index_select(ctx: RuleContext) -> TV:
    x = ctx.tensor(0, "input")
    d = ctx.dim(ctx.const(1, "dim"), x.ndim)
    index = ctx.tensor(2, "index")
    ctx.pin(x.dims[d], f"rows selected by index at {ctx.where}")
    dims = list(x.dims)
    dims[d] = index.dims[0] if index.ndim == 1 else ctx.computed(ctx.out_shape()[d])
    return ctx.result(dims)


def _gather_dims(ctx: RuleContext, x: TV, index: TV, d: int) -> list:
    """``out[..., i, ...] = x[..., index[..., i, ...], ...]`` along ``d``; elsewhere ``index`` reads
    the leading ``index.shape[k]`` coordinates of ``x``: the same axis where sizes match, else
    a prefix, which no renumbering preserves, so both are pinned."""
    ctx.pin(x.dims[d], f"gathered by index at {ctx.where}")
    for k in range(index.ndim):
        if k == d or x.shape[k] == 1 and index.shape[k] == 1:
            continue
        if index.shape[k] == x.shape[k]:
            ctx.unify(index.dims[k], x.dims[k])
        else:
            reason = f"index reads a prefix of the dimension at {ctx.where}"
            ctx.pin(x.dims[k], reason), ctx.pin(index.dims[k], reason)
    return list(index.dims)


@register(torch.gather, method("gather"))
def gather(ctx: RuleContext) -> TV:
    x = ctx.tensor(0, "input")
    d = ctx.dim(ctx.const(1, "dim"), x.ndim)
    return ctx.result(_gather_dims(ctx, x, ctx.tensor(2, "index"), d))


@register(torch.take_along_dim, method("take_along_dim"))
def take_along_dim(ctx: RuleContext) -> TV:
    """``take_along_dim(x, indices, dim)``: a gather whose other dims broadcast."""
    x, index = ctx.tensor(0, "input"), ctx.tensor(1, "indices")
    raw = ctx.arg(2, "dim", None)
    if raw is None or x.ndim != index.ndim:
        raise RuleError("take_along_dim over the flattened tensor")
    d = ctx.dim(int(ctx.const(2, "dim")), x.ndim)
    ctx.pin(x.dims[d], f"gathered by index at {ctx.where}")
    dims = []
    for k in range(x.ndim):
        if k == d:
            dims.append(index.dims[k])
            continue
        layouts = [t.dims[k] for t in (x, index) if t.shape[k] != 1]
        for other in layouts[1:]:
            ctx.unify(layouts[0], other)
        dims.append(layouts[0] if layouts else UNIT)
    return ctx.result(dims)


@register(torch.repeat_interleave, method("repeat_interleave"))
def repeat_interleave(ctx: RuleContext) -> TV:
    """Each coordinate repeated ``r`` times in a row: the dim becomes product(x, r)."""
    x = ctx.tensor(0, "input")
    reps = ctx.v(ctx.arg(1, "repeats"))
    raw_dim = ctx.arg(2, "dim", None)
    if not isinstance(reps, IV) or raw_dim is None:
        raise RuleError("repeat_interleave with tensor repeats or without dim")
    d = ctx.dim(int(ctx.v(raw_dim).value), x.ndim)
    count = ctx.fresh(int(reps.value))
    size_arg_edit(ctx, ctx.path(1, "repeats"), ctx.arg(1, "repeats"), count)
    dims = list(x.dims)
    dims[d] = ctx.axes.product(x.dims[d], count)
    if ctx.arg(3, "output_size", None) is not None:  # the total, a count of the output dim
        size_arg_edit(ctx, ctx.path(3, "output_size"), ctx.arg(3, "output_size"), dims[d])
    return ctx.result(dims)


def _coordinate_dims(ctx: RuleContext, x: TV) -> list:
    target = ctx.node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    if name in ("triu", "tril"):
        return [x.ndim - 2, x.ndim - 1]
    raw = ctx.arg(2 if name == "roll" else 1, "dims", None)
    if raw is None:
        return list(range(x.ndim))
    val = ctx.v(raw)
    items = val.items if isinstance(val, SV) else (val,)
    return [ctx.dim(int(i.value), x.ndim) for i in items]


@register(torch.triu, method("triu"), torch.tril, method("tril"), torch.flip, method("flip"),
          torch.roll, method("roll"))
def coordinate_dependent(ctx: RuleContext) -> TV:
    """Ops whose result depends on coordinate positions pin the dims they act on."""
    x = ctx.tensor(0, "input")
    dims = list(x.dims)
    for d in _coordinate_dims(ctx, x):
        ctx.pin(x.dims[d], f"position-dependent op at {ctx.where}")
    return ctx.result(dims)
