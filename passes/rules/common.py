"""Helpers shared by rule modules."""
from __future__ import annotations

from typing import Sequence

from ..axes import UNIT
from ..context import IV, SV, TV, RuleContext, RuleError

__all__ = ["broadcast", "passthrough", "tensors_in", "dims_arg", "pin_mixed_dynamic", "pin_moving_bounds", "size_arg_edit",
           "runtime_size", "hidden_one"]


def tensors_in(ctx: RuleContext) -> list:
    out = []
    for raw in (*ctx.node.args, *ctx.node.kwargs.values()):
        val = ctx.v(raw)
        if isinstance(val, TV):
            out.append(val)
        elif isinstance(val, SV):
            out.extend(v for v in val.items if isinstance(v, TV))
    return out


def broadcast(ctx: RuleContext, tvs: Sequence[TV]) -> TV:
    """Element-wise semantics: equal the axes of all operands, aligned from the right."""
    shape = ctx.out_shape()
    nd = len(shape)
    dims = []
    for i in range(nd):
        layouts = [tv.dims[j] for tv in tvs if (j := i - (nd - tv.ndim)) >= 0 and tv.shape[j] != 1]
        if not layouts:
            dims.append(ctx.axes.fresh(shape[i]) if shape[i] != 1 else hidden_one(
                [tv.dims[j] for tv in tvs if (j := i - (nd - tv.ndim)) >= 0]))
            continue
        for other in layouts[1:]:
            ctx.unify(layouts[0], other)
        dims.append(layouts[0])
    return ctx.result(dims)


# conversions whose other tensor arguments give only a dtype/device (``x.type_as(y)``, ``x.to(y)``)
_CONVERSIONS = {"type_as", "to", "_to_copy"}


def passthrough(ctx: RuleContext) -> TV:
    """The output carries the axes of the first tensor argument unchanged."""
    x = ctx.tensor(0, "input")
    if ctx.out_shape() != x.shape:
        raise RuleError("shape changed by a pass-through op")
    target = ctx.node.target
    if (target if isinstance(target, str) else getattr(target, "__name__", "").split(".")[0]) in _CONVERSIONS:
        for raw in (*ctx.node.args[1:], *ctx.node.kwargs.values()):
            ctx.metadata_only(raw)
    return ctx.result(x.dims)


def dims_arg(ctx: RuleContext, raw, ndim: int) -> list:
    """Normalize an int / sequence / None ``dim`` argument to sorted positive dims."""
    if raw is None:
        return list(range(ndim))
    val = ctx.v(raw)
    items = val.items if isinstance(val, SV) else (val,)
    dims = []
    for item in items:
        if not isinstance(item, IV):
            raise RuleError("dim is not an int")
        dims.append(ctx.dim(int(item.value), ndim))
    return sorted(set(dims))


def pin_mixed_dynamic(ctx: RuleContext, layout) -> None:
    """A run-time size of a dimension mixing prunable and dynamic axes cannot be rewritten: pin.

    Checked now and again once the whole graph is analysed: a dimension still fresh here
    (``expand(x, [4 * b, n, n])``) may later turn out to be batch times heads."""
    def check() -> None:
        axes = ctx.axes
        atoms = axes.atoms(layout)
        if any(axes.is_dynamic(a) for a in atoms):
            static = [a for a in atoms if not axes.is_dynamic(a)]
            if static:
                ctx.pin(tuple((a,) for a in static), f"run-time size mixes prunable and dynamic axes at {ctx.where}")

    check()
    ctx.analyzer.deferred.append(check)


# Note [Run-time sizes]
# ~~~~~~~~~~~~~~~~~~~~~
# A dimension can mix run-time axes (batch, sequence, spatial: *dynamic*) with prunable ones
# (heads, channels): ``q.reshape(B * heads, d, -1)``. Its size at run time is D x S, D the
# product of the dynamic axes at that run, S the product of the static ones. Pruning changes
# S_old to S_new and leaves D alone, so
#
# * a size argument computed at run time (``B * heads``, ``x.size(0)``) is rewritten to
#   ``arg // a * b`` with a/b = S_old/S_new in lowest terms: it stays an expression of the
#   run-time dims, with the pruned factor rewritten (B*4 -> B*4 // 4 * 3);
# * a size read of such a dimension is replaced by its original value ``read // b * a``
#   (a read of a static dimension is frozen at its original value, as before).
#
# Both need the dimension to be one product (D x S). Where it is a concatenation that holds a
# dynamic axis, nobody can say how its size splits: its static axes are pinned, and the report
# says so. A batch of one has no axis in the layout algebra (size-1 dims carry none), so graph
# inputs give their size-1 dims a size-1 dynamic axis, which reshapes and broadcasts carry
# along (``hidden_one``): ``reshape(B * heads, ...)`` at batch 1 is then still batch x heads.

def hidden_one(layouts) -> tuple:
    """The size-1 layout to give a size-1 output dim: a run-time axis of size 1 carried by
    one of ``layouts`` (a batch of one, Note [Run-time sizes]), else UNIT."""
    return next((lay for lay in layouts if lay != UNIT and len(lay) == 1), UNIT)


def runtime_size(ctx: RuleContext, layout) -> None:
    """A size at run time of ``layout`` (read, or computed into a size argument): the rewrite
    scales it (Note [Run-time sizes]) where the dimension is one product; where it is a sum
    holding a dynamic axis, its static axes are pinned. Checked again once every axis is
    unified (a dimension still fresh here may turn out to be batch times heads)."""
    def check() -> None:
        axes = ctx.axes
        atoms = axes.atoms(layout)
        if len(layout) > 1 and any(axes.is_dynamic(a) for a in atoms):
            static = [a for a in atoms if not axes.is_dynamic(a)]
            if static:
                ctx.pin(tuple((a,) for a in static), f"run-time size of a concatenation that mixes prunable and "
                                                     f"dynamic axes at {ctx.where}: cannot say how it decomposes")

    check()
    ctx.analyzer.deferred.append(check)


def pin_moving_bounds(ctx: RuleContext, layout, bounds) -> None:
    """Slice bounds computed at run time from a dynamic size (``cos[:seq_len]``) move with it:
    the pieces they cut are not fixed coordinates, so the whole sliced dimension is pinned.
    Bounds computed from static sizes only (``x[..., : x.shape[-1] // 2]``) are rewritten instead."""
    axes = ctx.axes
    for v in bounds:
        if not isinstance(v, IV) or v.literal:
            continue
        deps = v.sources()
        if deps is None or any(axes.is_dynamic(a) for dep in deps for a in axes.atoms(dep)):
            ctx.pin(layout, f"slice bound computed at run time at {ctx.where}")
            return


def size_arg_edit(ctx: RuleContext, path: tuple, raw, layout) -> None:
    """Record that the size argument at ``path`` describes ``layout`` (unless it is -1)."""
    val = ctx.v(raw)
    if isinstance(val, IV) and val.literal and val.value == -1:
        return
    if isinstance(val, IV) and not val.literal:
        runtime_size(ctx, layout)
    ctx.edit(path, layout)
