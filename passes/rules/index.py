"""Concatenation, splitting and indexing: explicit segments with offsets."""
from __future__ import annotations

import operator

import torch

from ..context import IV, OV, SV, TV, RuleContext, RuleError
from ..registry import method, register
from .common import pin_mixed_dynamic, pin_moving_bounds, runtime_size
from .segments import pieces as _pieces

__all__ = ["cat", "stack", "split", "unbind", "narrow", "select", "getitem"]


def _dim(ctx: RuleContext, i: int, ndim: int, default: int = 0, name: str = "dim") -> int:
    raw = ctx.arg(i, name, default)
    if raw is default and "axis" in ctx.node.kwargs:
        raw = ctx.node.kwargs["axis"]
    return ctx.dim(int(ctx.v(raw).value), ndim)


@register(torch.cat, torch.concat, torch.concatenate)
def cat(ctx: RuleContext) -> TV:
    tvs = [t for t in ctx.v(ctx.arg(0, "tensors")).items if isinstance(t, TV)]
    tvs = [t for t in tvs if t.ndim > 1 or t.shape != (0,)]  # legacy empty tensors
    d = _dim(ctx, 1, tvs[0].ndim)
    first = tvs[0]
    for t in tvs[1:]:
        for k in range(first.ndim):
            if k != d:
                ctx.unify(first.dims[k], t.dims[k])
    dims = list(first.dims)
    dims[d] = tuple(seg for t in tvs for seg in t.dims[d])
    return ctx.result(dims)


@register(torch.stack)
def stack(ctx: RuleContext) -> TV:
    tvs = [t for t in ctx.v(ctx.arg(0, "tensors")).items if isinstance(t, TV)]
    first = tvs[0]
    d = _dim(ctx, 1, first.ndim + 1)
    for t in tvs[1:]:
        for k in range(first.ndim):
            ctx.unify(first.dims[k], t.dims[k])
    dims = list(first.dims)
    dims.insert(d, ctx.axes.fresh(len(tvs), pinned=f"stacked at {ctx.where}"))
    return ctx.result(dims)


def _split_outputs(ctx: RuleContext, x: TV, d: int) -> tuple:
    outs = list(ctx.out)
    pieces = _pieces(ctx, x, d, [int(o.shape[d]) for o in outs])
    items = []
    for o, piece in zip(outs, pieces):
        dims = list(x.dims)
        dims[d] = piece
        items.append(ctx.result(dims, out=o))
    return SV(tuple(items)), pieces


@register(torch.split, method("split"), method("split_with_sizes"))
def split(ctx: RuleContext) -> SV:
    x = ctx.tensor(0, "tensor")
    d = _dim(ctx, 2, x.ndim)
    val, pieces = _split_outputs(ctx, x, d)
    ctx.edit(ctx.path(1, "split_size_or_sections") if ctx.node.op == "call_function"
             else ctx.path(1, "split_size"), pieces, kind="sizes")
    return val


@register(torch.chunk, method("chunk"))
def chunk(ctx: RuleContext) -> SV:
    """A chunk whose pieces may stop being equal is rewritten into a split."""
    x = ctx.tensor(0, "input")
    d = _dim(ctx, 2, x.ndim)
    keyword = ctx.path(1, "chunks")[0] == "kwargs"
    if keyword and ctx.node.op == "call_method":  # Tensor.split takes no ``chunks=`` keyword
        raise RuleError("Tensor.chunk with a chunks= keyword cannot be rewritten into a split")
    val, pieces = _split_outputs(ctx, x, d)
    ctx.edit(ctx.path(1, "chunks"), pieces, kind="sizes")
    ctx.retarget = "split" if ctx.node.op == "call_method" else split_chunks if keyword else torch.split
    return val


def split_chunks(input, chunks, dim=0):  # noqa: A002 - torch.chunk's argument names
    """``torch.split`` under ``torch.chunk``'s argument names: a rewritten ``chunk(chunks=...)``."""
    return torch.split(input, chunks, dim)


@register(torch.unbind, method("unbind"))
def unbind(ctx: RuleContext) -> SV:
    x = ctx.tensor(0, "input")
    d = _dim(ctx, 1, x.ndim)
    ctx.pin(x.dims[d], f"unbind along a dimension at {ctx.where}")
    dims = x.dims[:d] + x.dims[d + 1:]
    return SV(tuple(ctx.result(dims, out=o) for o in ctx.out))


@register(torch.narrow, method("narrow"))
def narrow(ctx: RuleContext) -> TV:
    x = ctx.tensor(0, "input")
    d = _dim(ctx, 1, x.ndim)
    start, length = ctx.v(ctx.arg(2, "start")), ctx.v(ctx.arg(3, "length"))
    n, s = x.shape[d], int(start.value) % max(x.shape[d], 1)
    pre, mid, post = _pieces(ctx, x, d, [s, int(length.value), n - s - int(length.value)])
    for v in (start, length):
        if not v.literal:
            pin_mixed_dynamic(ctx, x.dims[d])
    pin_moving_bounds(ctx, x.dims[d], (start, length))
    ctx.edit(ctx.path(2, "start"), pre)
    ctx.edit(ctx.path(3, "length"), mid)
    dims = list(x.dims)
    dims[d] = mid
    return ctx.result(dims)


@register(torch.select, method("select"))
def select(ctx: RuleContext) -> TV:
    x = ctx.tensor(0, "input")
    d = _dim(ctx, 1, x.ndim)
    ctx.pin(x.dims[d], f"select along a dimension at {ctx.where}")
    return ctx.result(x.dims[:d] + x.dims[d + 1:])


def _slice_dim(ctx: RuleContext, x: TV, d: int, sl: slice, path: tuple):
    vals = [ctx.v(b) for b in (sl.start, sl.stop, sl.step)]
    py = [None if isinstance(v, OV) and v.value is None else int(v.value) for v in vals]
    n = x.shape[d]
    s, e, st = slice(*py).indices(n)
    if (s, e, st) == (0, n, 1):
        return x.dims[d]
    if st != 1 or e <= s:
        ctx.pin(x.dims[d], f"strided or empty slice at {ctx.where}")
        return ctx.computed(len(range(s, e, st)))
    pre, mid, _ = _pieces(ctx, x, d, [s, e - s, n - e])
    if any(isinstance(v, IV) and not v.literal for v in vals):
        pin_mixed_dynamic(ctx, x.dims[d])
        pin_moving_bounds(ctx, x.dims[d], vals)
    ctx.edit(path, [pre, mid], kind="slice")
    return mid


def _tensor_getitem(ctx: RuleContext, x: TV) -> TV:
    raw = ctx.arg(1)
    items, path = (list(raw), ("args", 1)) if isinstance(raw, tuple) else ([raw], None)
    if any(isinstance(it, list) or isinstance(ctx.v(it), TV) for it in items
           if it is not None and it is not Ellipsis and not isinstance(it, slice)):
        from .gather import tensor_getitem  # imports this module

        return tensor_getitem(ctx, x, items)  # advanced indexing: Note [Index tensors]
    used = sum(1 for it in items if it is not None and it is not Ellipsis)
    dims, d = [], 0
    for k, it in enumerate(items):
        if it is None:
            dims.append(((),))
        elif it is Ellipsis:
            dims.extend(x.dims[d:d + x.ndim - used])
            d += x.ndim - used
        elif isinstance(it, slice):
            dims.append(_slice_dim(ctx, x, d, it, path + (k,) if path else ("args", 1)))
            d += 1
        elif isinstance(ctx.v(it), IV):
            ctx.pin(x.dims[d], f"integer index at {ctx.where}")
            d += 1
        else:
            raise RuleError(f"index {it!r}")
    dims.extend(x.dims[d:])
    return ctx.result(dims)


def _seq_getitem(ctx: RuleContext, seq: SV):
    idx = ctx.const(1)
    if isinstance(idx, slice):
        return SV(seq.items[idx], seq.is_size)
    item = seq.items[idx]
    if isinstance(item, IV) and item.read is not None:
        ctx.size_read = item.read
        runtime_size(ctx, item.read)
        return IV(item.value, item.read)
    return item


@register(operator.getitem)
def getitem(ctx: RuleContext):
    obj = ctx.v(ctx.arg(0))
    if isinstance(obj, TV):
        return _tensor_getitem(ctx, obj)
    if isinstance(obj, SV):
        return _seq_getitem(ctx, obj)
    if isinstance(obj, dict):
        return obj[ctx.const(1)]
    return ctx.analyzer.from_output(ctx.out, f"opaque value at {ctx.where}")
