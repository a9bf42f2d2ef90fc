"""Advanced (tensor) indexing, scatters and grouped matmuls: index values are coordinates.

Note [Index tensors]
~~~~~~~~~~~~~~~~~~~~
``x[idx]`` reads ``out[i, ...] = x[idx[i], ...]``. The *values* of ``idx``
address coordinates of the indexed dimension of ``x``: renumbering or removing
those coordinates would need new index values, which the rewrite never writes,
so every indexed dimension is pinned. The *positions* of ``idx`` are another
matter: keeping a subset of them (in any order) keeps the same subset of the
output, ``out'[k] = x[idx[K[k]]] = out[K[k]]``, so the index tensor's dims and
the output dims they become are one axis (a buffer index is then resized with
it). Every dimension of ``x`` that no index addresses passes through. This is
what makes an MoE expert gather (``w[expert_ids]``) keep the expert width and
hidden size prunable, and a relative-position-bias lookup (``table[index]``)
keep its heads prunable, while the experts and the table rows stay pinned.

Boolean masks select a data-dependent number of elements: the masked dims (of
``x`` and of the mask) are pinned and the selected count is a computed dim.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.fx as fx

from ..context import OV, SV, TV, RuleContext, RuleError
from ..registry import method, register
from .attention import broadcast_dims, contract_pair
from .segments import pieces as index_pieces

aten = torch.ops.aten

__all__ = ["index_layouts", "index", "index_put", "index_add", "grouped_mm", "tensor_getitem"]


def _entries(ctx: RuleContext, raw_indices) -> list:
    """``[None | TV]`` for the index list of ``aten.index`` (None: the whole dimension)."""
    val = ctx.v(raw_indices)
    items = val.items if isinstance(val, SV) else (val,)
    out = []
    for item in items:
        if isinstance(item, OV) and item.value is None:
            out.append(None)
        elif isinstance(item, TV):
            out.append(item)
        else:
            raise RuleError("index entry is neither a tensor nor None")
    return out


def _masks(ctx: RuleContext, raw_indices) -> list:
    """Which entries are boolean masks, from the real/meta values of the index nodes."""
    raws = raw_indices if isinstance(raw_indices, (list, tuple)) else [raw_indices]
    flags = []
    for raw in raws:
        t = ctx.analyzer.env.get(raw) if hasattr(raw, "op") else None
        flags.append(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8))
    return flags


def index_layouts(ctx: RuleContext, x: TV, entries: list, masks: list, raw_nodes: tuple = ()) -> tuple:
    """Layouts of ``x[entries]`` (numpy advanced indexing) and, per result dim, the dim of ``x``
    it is (None: a dim of the indices). Pins every indexed dim of ``x``."""
    if len(entries) > x.ndim:
        raise RuleError("more indices than dimensions")
    if any(masks):
        return _mask_layouts(ctx, x, entries)
    where = [k for k, t in enumerate(entries) if t is not None]
    if not where:
        return list(x.dims), list(range(x.ndim))
    known = _constant_index(ctx, raw_nodes[where[0]]) if len(where) == 1 and raw_nodes else None
    for k in where:
        layout = x.dims[k] if known is None else _addressed_piece(ctx, x, k, known)
        ctx.pin(layout, f"dimension addressed by index values at {ctx.where}")
    tensors = [entries[k] for k in where]
    n = max(t.ndim for t in tensors)
    bcast = broadcast_dims(ctx, [(t.shape, t.dims) for t in tensors], n)
    if where == list(range(where[0], where[-1] + 1)):  # adjacent: the result takes their place
        order = [*range(where[0]), *[None] * n, *range(where[-1] + 1, x.ndim)]
    else:
        order = [*[None] * n, *(k for k in range(x.ndim) if k not in where)]
    it = iter(bcast)
    return [next(it) if k is None else x.dims[k] for k in order], order


_COPIES = {"lift_fresh_copy", "clone", "detach", "alias"}


def _constant_index(ctx: RuleContext, raw) -> Optional[list]:
    """The values of a 1-D integer index that is a constant of the graph (``x[..., [-2], :]``,
    lifted by torch.export), else None. Buffers and parameters are not constants: code may change them."""
    if _int_list(raw):
        return list(raw)
    while isinstance(raw, fx.Node) and raw.op == "call_function" and \
            getattr(getattr(raw.target, "overloadpacket", None), "__name__", "") in _COPIES:
        raw = raw.args[0]
    if not isinstance(raw, fx.Node) or raw.op != "get_attr":
        return None
    t = getattr(raw.meta.get("val"), "constant", None)  # torch.export keeps a lifted constant's value
    owner, _, name = raw.target.rpartition(".")
    root = ctx.node.graph.owning_module
    if t is None and root is not None:
        try:
            t = (root.get_submodule(owner) if owner else root).__dict__.get(name)  # not a parameter/buffer
        except AttributeError:
            return None
    if not isinstance(t, torch.Tensor) or t.is_meta or t.ndim != 1 or t.is_floating_point() or \
            t.dtype == torch.bool or t.numel() > 4096:
        return None
    return [int(v) for v in t.tolist()]


def _addressed_piece(ctx: RuleContext, x: TV, k: int, values: list):
    """The part of dim ``k`` that known index values address: negative values count from the end,
    so the coordinates before the lowest one stay free (and the other way round)."""
    n = x.shape[k]
    if not values or any(not -n <= v < n for v in values):
        return x.dims[k]
    if all(v < 0 for v in values):
        head, tail = index_pieces(ctx, x, k, [n + min(values), -min(values)])
        return tail
    if all(v >= 0 for v in values):
        head, tail = index_pieces(ctx, x, k, [max(values) + 1, n - max(values) - 1])
        return head
    return x.dims[k]


def _mask_layouts(ctx: RuleContext, x: TV, entries: list) -> tuple:
    where = [k for k, t in enumerate(entries) if t is not None]
    if len(where) != 1:
        raise RuleError("a boolean mask combined with other indices")
    k, mask = where[0], entries[where[0]]
    reason = f"dimension selected by a boolean mask at {ctx.where}"
    for d in range(k, k + mask.ndim):
        ctx.pin(x.dims[d], reason)
    ctx.pin_value(mask, reason)
    order = [*range(k), None, *range(k + mask.ndim, x.ndim)]
    picked = ctx.computed(ctx.out_shape()[k])
    return [picked if j is None else x.dims[j] for j in order], order


@register(aten.index, aten._unsafe_index)
def index(ctx: RuleContext) -> TV:
    """``aten.index.Tensor(self, indices: list[Tensor | None])``: see Note [Index tensors]."""
    x, raw = ctx.tensor(0, "self"), ctx.arg(1, "indices")
    return ctx.param_view(x, *index_layouts(ctx, x, _entries(ctx, raw), _masks(ctx, raw), tuple(raw)))


def _unify_values(ctx: RuleContext, values: TV, target: list, target_shape: tuple) -> None:
    """``values`` broadcast into the indexed region: aligned from the right."""
    for i in range(1, min(values.ndim, len(target)) + 1):
        if values.shape[-i] != 1 and target_shape[-i] == values.shape[-i]:
            ctx.unify(values.dims[-i], target[-i])


@register(aten.index_put, aten.index_put_, aten._unsafe_index_put)
def index_put(ctx: RuleContext) -> TV:
    """``self[indices] = values`` (or ``+=`` with accumulate): the result has the layout of ``self``;
    the indexed dims and the index positions are pinned, the other dims of ``values`` align."""
    x, raw = ctx.tensor(0, "self"), ctx.arg(1, "indices")
    values = ctx.tensor(2, "values")
    region, order = index_layouts(ctx, x, _entries(ctx, raw), _masks(ctx, raw), tuple(raw))
    for layout, k in zip(region, order):
        if k is None:  # the index positions: dropping one drops a write, which changes the result
            ctx.pin(layout, f"positions written by index_put at {ctx.where}")
    shape = tuple(ctx.axes.layout_size(d) for d in region)
    _unify_values(ctx, values, region, shape)
    return ctx.result(x.dims)


@register(torch.index_add, method("index_add"), method("index_add_"), aten.index_add, aten.index_add_,
          torch.index_copy, method("index_copy"), method("index_copy_"), aten.index_copy, aten.index_copy_)
def index_add(ctx: RuleContext) -> TV:
    """``x.index_add(dim, index, source)``: ``x[index[i]] += source[i]`` along ``dim``; other dims align."""
    x = ctx.tensor(0, "self")
    d = ctx.dim(int(ctx.const(1, "dim")), x.ndim)
    idx, src = ctx.tensor(2, "index"), ctx.tensor(3, "source")
    ctx.pin(x.dims[d], f"dimension addressed by index values at {ctx.where}")
    ctx.pin(idx.dims[0], f"positions written by {ctx.where}")  # dropping one drops a write
    if idx.ndim == 1 and src.ndim == x.ndim:
        ctx.unify(idx.dims[0], src.dims[d])
        for k in range(x.ndim):
            if k != d and src.shape[k] == x.shape[k]:
                ctx.unify(src.dims[k], x.dims[k])
    else:
        ctx.pin_value(src, f"index_add with a broadcast source at {ctx.where}")
    return ctx.result(x.dims)


def tensor_getitem(ctx: RuleContext, x: TV, items: list) -> TV:
    """``x[..., idx, :]`` through ``operator.getitem`` (symbolic_trace): tensors and whole slices only."""
    raws: list = []
    for it in items:
        if it is Ellipsis:
            raws.extend([None] * (x.ndim - sum(1 for i in items if i is not Ellipsis)))
        elif isinstance(it, slice) and it == slice(None):
            raws.append(None)
        elif isinstance(ctx.v(it), TV) or _int_list(it):
            raws.append(it)
        else:
            raise RuleError("advanced indexing mixed with integers, partial slices or None")
    entries = [None if r is None else _list_index(ctx, r) if _int_list(r) else ctx.v(r) for r in raws]
    masks = [r is not None and _masks(ctx, [r])[0] for r in raws]
    return ctx.param_view(x, *index_layouts(ctx, x, entries, masks, tuple(raws)))


def _int_list(raw) -> bool:
    return isinstance(raw, list) and bool(raw) and all(isinstance(v, int) and not isinstance(v, bool) for v in raw)


def _list_index(ctx: RuleContext, raw: list) -> TV:
    """A literal index list ``x[..., [-2], :]``: its positions are a literal the rewrite cannot edit."""
    return TV((len(raw),), (ctx.computed(len(raw)),))


def grouped_mm_core(ctx: RuleContext, a: TV, w: TV, offs) -> TV:
    """``(S, K) x (E, K, N) -> (S, N)``: row block ``e`` (bounded by ``offs``) times expert ``e``.

    K is contracted, N passes to the output, rows pass through; the experts are
    addressed by position in ``offs``, so they are pinned.
    """
    if a.ndim != 2 or w.ndim != 3:
        raise RuleError("grouped matmul other than (S, K) x (E, K, N)")
    reason = f"experts addressed by group offsets at {ctx.where}"
    ctx.pin(w.dims[0], reason)
    if offs is not None:
        ctx.pin_value(offs, reason)
    contract_pair(ctx, a, 1, w, 1)
    return ctx.result((a.dims[0], w.dims[2]))


@register("torch._ops.transformers.transformers::grouped_mm_fallback")
def grouped_mm(ctx: RuleContext) -> TV:
    """transformers' MoE kernel ``grouped_mm_fallback(input, weight, offs)`` (what torch.export records)."""
    return grouped_mm_core(ctx, ctx.tensor(0, "input"), ctx.tensor(1, "weight"), ctx.tensor(2, "offs"))


if hasattr(aten, "_grouped_mm"):
    @register(aten._grouped_mm, *([torch._grouped_mm] if hasattr(torch, "_grouped_mm") else []))
    def aten_grouped_mm(ctx: RuleContext) -> TV:
        """``_grouped_mm(mat_a, mat_b, offs=None, bias=None, out_dtype=None)``, the 2-D x 3-D form."""
        if ctx.tensor(3, "bias", default=None) is not None:
            raise RuleError("grouped matmul with a bias")
        offs = ctx.tensor(2, "offs", default=None)
        return grouped_mm_core(ctx, ctx.tensor(0, "mat_a"), ctx.tensor(1, "mat_b"), offs)

