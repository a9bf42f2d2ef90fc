"""Reductions over dimensions.

A reduction over a prunable axis reduces over the kept coordinates, as the
statistics of a normalization layer do; the axis is marked as mixing, so the
removal oracle leaves it out. Reductions that return coordinates (argmax,
sort, topk, ``max(dim)`` indices that are used) pin the reduced axis.
"""
from __future__ import annotations

import operator

import torch

from ..axes import UNIT
from ..context import SV, TV, RuleContext
from ..registry import method, register
from .common import dims_arg

__all__ = ["reduction", "arg_reduction"]

_VALUE_REDUCTIONS = ["mean", "sum", "amax", "amin", "std", "var", "prod", "logsumexp", "nansum",
                     "nanmean", "norm", "all", "any", "count_nonzero"]
_WITH_INDICES = ["max", "min", "median", "mode"]
_COORDINATES = ["argmax", "argmin", "sort", "argsort", "topk", "cumsum", "cumprod", "cummax"]


def _reduced_dims(ctx: RuleContext, x: TV):
    raw = ctx.arg(1, "dim", None)
    if raw is None and "axis" in ctx.node.kwargs:
        raw = ctx.node.kwargs["axis"]
    val = None if raw is None else ctx.v(raw)
    if isinstance(val, TV):  # torch.max(a, b): element-wise
        return None
    return dims_arg(ctx, raw, x.ndim)


def _reduced(ctx: RuleContext, x: TV, dims: list, out) -> TV:
    keep = out.ndim == x.ndim
    layouts = [UNIT if d in dims else x.dims[d] for d in range(x.ndim)] if keep else \
        [x.dims[d] for d in range(x.ndim) if d not in dims]
    return ctx.result(layouts, out=out)


@register(*(getattr(torch, n) for n in _VALUE_REDUCTIONS if hasattr(torch, n)),
          *map(method, _VALUE_REDUCTIONS), *(getattr(torch, n) for n in _WITH_INDICES),
          *map(method, _WITH_INDICES))
def reduction(ctx: RuleContext):
    x = ctx.tensor(0, "input")
    dims = _reduced_dims(ctx, x)
    if dims is None:
        from .pointwise import elementwise

        return elementwise(ctx)
    for d in dims:
        ctx.mixing(x.dims[d], f"reduction {ctx.node.target}")
    if isinstance(ctx.out, torch.Tensor):
        return _reduced(ctx, x, dims, ctx.out)
    if any(u.target is not operator.getitem or u.args[1] != 0 for u in ctx.node.users):
        for d in dims:  # the indices are coordinates: they must not be renumbered
            ctx.pin(x.dims[d], f"indices returned by {ctx.where}")
    return SV(tuple(_reduced(ctx, x, dims, o) for o in ctx.out))


@register(*(getattr(torch, n) for n in _COORDINATES), *map(method, _COORDINATES))
def arg_reduction(ctx: RuleContext):
    """Ops whose output depends on coordinate order along ``dim`` pin it."""
    x = ctx.tensor(0, "input")
    target = ctx.node.target
    topk = target in ("topk", torch.topk) or getattr(target, "__name__", "").startswith("topk.")  # aten.topk too
    dims = dims_arg(ctx, ctx.arg(2, "dim", -1) if topk else ctx.arg(1, "dim", None), x.ndim)
    for d in dims:
        ctx.pin(x.dims[d], f"coordinate-dependent op at {ctx.where}")
    outs = ctx.out if isinstance(ctx.out, (tuple, list)) else [ctx.out]
    vals = []
    for o in outs:
        if o.ndim == x.ndim:
            vals.append(ctx.result([ctx.computed(o.shape[d]) if d in dims else x.dims[d]
                                    for d in range(x.ndim)], out=o))
        elif o.ndim == x.ndim - len(dims):  # argmax(dim) without keepdim: the dim is gone
            vals.append(ctx.result([x.dims[d] for d in range(x.ndim) if d not in dims], out=o))
        else:  # the output's axes are fresh: the input's must not be pruned under it
            ctx.pin_value(x, f"coordinate-dependent op at {ctx.where}")
            vals.append(ctx.analyzer.from_output(o, f"output of {ctx.where}"))
    return vals[0] if isinstance(ctx.out, torch.Tensor) else SV(tuple(vals))
