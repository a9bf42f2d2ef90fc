"""Sizes read at run time.

A direct read of a dimension's size records ``size_read``: where that
dimension is pruned, the rewrite freezes the read at its original value, so
arithmetic on it (``x.sum(1) / x.shape[1]``, attention scales) computes what
the original computed. Size arguments of shape ops are rewritten by the rules
of those ops, from layouts, not from these reads.
"""
from __future__ import annotations

import builtins

import torch

from ..context import IV, OV, SV, TV, RuleContext, RuleError
from ..registry import method, register
from .common import runtime_size

__all__ = ["size", "tensor_getattr", "length", "numel"]


def _read(ctx: RuleContext, x: TV, d: int) -> IV:
    ctx.size_read = x.dims[d]
    runtime_size(ctx, x.dims[d])
    return IV(x.shape[d], x.dims[d])


def _whole_size(x: TV) -> SV:
    return SV(tuple(IV(n, layout) for n, layout in zip(x.shape, x.dims)), is_size=True)


@register(method("size"))
def size(ctx: RuleContext):
    x = ctx.tensor(0, "input")
    raw = ctx.arg(1, "dim", None)
    if raw is None:
        return _whole_size(x)
    return _read(ctx, x, ctx.dim(int(ctx.v(raw).value), x.ndim))


@register(builtins.getattr)
def tensor_getattr(ctx: RuleContext):
    obj, name = ctx.v(ctx.arg(0)), ctx.const(1)
    if isinstance(obj, SV):  # a field of a named tuple: ``torch.max(x, 1).values``
        item = _field(ctx, obj)
        if item is not None:
            return item
    if not isinstance(obj, TV):
        ctx.pin_value(obj, f"opaque attribute at {ctx.where}")  # the output's axes are fresh
        return ctx.analyzer.from_output(ctx.out, f"opaque attribute at {ctx.where}")
    if name == "shape":
        return _whole_size(obj)
    if name in ("T", "mT", "H", "mH"):
        if obj.ndim != 2 and name in ("T", "H"):
            raise RuleError("T of a non-matrix")
        order = [*range(obj.ndim - 2), obj.ndim - 1, obj.ndim - 2]
        return ctx.param_view(obj, [obj.dims[k] for k in order], order)
    if isinstance(ctx.out, torch.Tensor):
        raise RuleError(f"tensor attribute {name!r}")
    return IV(ctx.out) if isinstance(ctx.out, (int, float, bool)) else OV(ctx.out)


def _field(ctx: RuleContext, obj: SV):
    """The item of a named tuple (``return_types.max``) that an attribute read returns."""
    real = ctx.analyzer.env.get(ctx.arg(0))
    if not isinstance(real, tuple) or len(real) != len(obj.items):
        return None
    for item, val in zip(real, obj.items):
        if item is ctx.out:
            return val
    return None


@register(builtins.len)
def length(ctx: RuleContext):
    obj = ctx.v(ctx.arg(0))
    if isinstance(obj, TV):
        return _read(ctx, obj, 0)
    return IV(ctx.out)


@register(method("numel"), torch.numel)
def numel(ctx: RuleContext) -> IV:
    x = ctx.tensor(0, "input")
    layout = ctx.axes.product(*x.dims)
    ctx.size_read = layout
    runtime_size(ctx, layout)
    return IV(ctx.out, layout)


@register(method("dim"), method("ndimension"))
def ndim(ctx: RuleContext) -> IV:
    ctx.metadata_only(ctx.arg(0))  # the rank only: no coordinate is read
    return IV(ctx.out)
