"""Helpers shared by rule modules."""
from __future__ import annotations

from typing import Sequence

from ..axes import UNIT
from ..context import IV, SV, TV, RuleContext, RuleError

__all__ = ["broadcast", "passthrough", "tensors_in", "dims_arg", "pin_mixed_dynamic", "pin_moving_bounds", "size_arg_edit"]


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
            dims.append(ctx.axes.fresh(shape[i]) if shape[i] != 1 else UNIT)
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
        pin_mixed_dynamic(ctx, layout)
    ctx.edit(path, layout)
