"""Shape ops: view/reshape/flatten/(un)squeeze/permute/transpose/expand/repeat."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..axes import UNIT
from ..context import IV, SV, TV, RuleContext, RuleError
from ..registry import method, register
from .common import hidden_one, size_arg_edit

__all__ = ["reshape_layouts", "view", "view_as", "flatten", "permute", "transpose", "expand", "repeat"]


def reshape_layouts(ctx: RuleContext, x: TV, out_shape: tuple) -> list:
    """Layouts of a reshape's output dims.

    Input and output dims are matched in minimal blocks of equal product.
    A block of one output dim takes the row-major product of its input
    layouts; a block of several output dims refines that product into fresh
    axes, one per output dim. A size-1 input dim with a run-time axis (a batch
    of one, Note [Run-time sizes] in rules/common.py) goes to the next size-1
    output dim, or else is the outer factor of the next block's first dim.
    """
    axes, ins = ctx.axes, x.shape
    if 0 in ins or 0 in out_shape:
        raise RuleError("reshape of an empty tensor")
    out: list = [UNIT] * len(out_shape)
    hidden: list = []
    i = j = 0
    while True:
        while i < len(ins) and ins[i] == 1:
            hidden += [x.dims[i]] if hidden_one([x.dims[i]]) != UNIT else []
            i += 1
        while j < len(out_shape) and out_shape[j] == 1:
            if hidden:
                out[j], hidden = hidden[0], hidden[1:]
            j += 1
        if i == len(ins) or j == len(out_shape):
            break
        bi, bj, pi, pj = [i], [j], ins[i], out_shape[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                pi, i = pi * ins[i], i + 1
                bi.append(i - 1)
            else:
                pj, j = pj * out_shape[j], j + 1
                bj.append(j - 1)
        block = axes.product(*(x.dims[k] for k in bi))
        if len(bj) == 1:
            out[bj[0]] = axes.product(*hidden, block)
            hidden = []
            continue
        pieces = [axes.fresh(out_shape[k]) for k in bj]
        ctx.unify(block, axes.product(*pieces))
        for k, piece in zip(bj, pieces):
            out[k] = piece
        out[bj[0]], hidden = axes.product(*hidden, pieces[0]), []
    return out


def _size_args(ctx: RuleContext, first: int, name: str):
    """(raw sizes, path of each) for ``f(x, *sizes)`` or ``f(x, sizes)``."""
    args = ctx.node.args
    if len(args) == first + 1 and isinstance(args[first], (tuple, list)):
        return list(args[first]), [("args", first, k) for k in range(len(args[first]))]
    if len(args) > first:
        return list(args[first:]), [("args", first + k) for k in range(len(args) - first)]
    raw = ctx.node.kwargs.get(name)
    if isinstance(raw, (tuple, list)):
        return list(raw), [("kwargs", name, k) for k in range(len(raw))]
    return [raw], [("kwargs", name)]


@register(method("view"), method("reshape"), torch.reshape)
def view(ctx: RuleContext) -> TV:
    x = ctx.tensor(0, "input")
    dims = reshape_layouts(ctx, x, ctx.out_shape())
    raws, paths = _size_args(ctx, 1, "shape")
    if len(raws) == 1 and isinstance(ctx.v(raws[0]), SV):  # a whole torch.Size node
        return ctx.result(dims)
    if len(raws) != len(dims):
        raise RuleError("cannot match size arguments to output dims")
    for raw, path, layout in zip(raws, paths, dims):
        size_arg_edit(ctx, path, raw, layout)
    return ctx.result(dims)


@register(torch.flatten, method("flatten"), nn.Flatten, torch.squeeze, method("squeeze"),
          torch.unsqueeze, method("unsqueeze"), torch.atleast_1d, torch.atleast_2d, torch.atleast_3d, torch.ravel, method("ravel"))
def flatten(ctx: RuleContext) -> TV:
    """Reshapes with no size literals to rewrite."""
    return ctx.result(reshape_layouts(ctx, ctx.tensor(0, "input"), ctx.out_shape()))


@register(method("view_as"), method("reshape_as"))
def view_as(ctx: RuleContext) -> TV:
    """``x.view_as(other)``: the output takes ``other``'s sizes at run time, so its dims are
    ``other``'s dims (pruned alike), and the reshape maps ``x``'s dims onto them."""
    x, other = ctx.tensor(0, "input"), ctx.tensor(1, "other")
    dims = reshape_layouts(ctx, x, ctx.out_shape())
    for mine, theirs in zip(dims, other.dims):
        ctx.unify(mine, theirs)
    return ctx.result(dims)


@register(torch.unflatten, method("unflatten"), nn.Unflatten)
def unflatten(ctx: RuleContext) -> TV:
    x = ctx.tensor(0, "input")
    dims = reshape_layouts(ctx, x, ctx.out_shape())
    if ctx.module is not None:
        d = ctx.dim(ctx.module.dim, x.ndim)
        ctx.set_attr("unflattened_size", dims[d:d + len(ctx.module.unflattened_size)])
        return ctx.result(dims)
    d = ctx.dim(ctx.const(1, "dim"), x.ndim)
    raw = ctx.arg(2, "sizes")
    path = ctx.path(2, "sizes")
    for k, r in enumerate(raw):
        size_arg_edit(ctx, path + (k,), r, dims[d + k])
    return ctx.result(dims)


@register(torch.permute, method("permute"))
def permute(ctx: RuleContext) -> TV:
    x = ctx.tensor(0, "input")
    raws, _ = _size_args(ctx, 1, "dims")
    order = [ctx.dim(int(ctx.v(r).value), x.ndim) for r in raws]
    return ctx.param_view(x, [x.dims[k] for k in order], order)


@register(torch.transpose, method("transpose"), torch.swapaxes, method("swapaxes"),
          torch.swapdims, method("swapdims"))
def transpose(ctx: RuleContext) -> TV:
    x = ctx.tensor(0, "input")
    a, b = ctx.dim(ctx.const(1, "dim0"), x.ndim), ctx.dim(ctx.const(2, "dim1"), x.ndim)
    order = list(range(x.ndim))
    order[a], order[b] = b, a
    return ctx.param_view(x, [x.dims[k] for k in order], order)


@register(torch.t, method("t"))
def matrix_t(ctx: RuleContext) -> TV:
    x = ctx.tensor(0, "input")
    order = list(reversed(range(x.ndim)))
    return ctx.param_view(x, [x.dims[k] for k in order], order)


@register(torch.movedim, method("movedim"), torch.moveaxis, method("moveaxis"))
def movedim(ctx: RuleContext) -> TV:
    x = ctx.tensor(0, "input")
    src, dst = ctx.const(1, "source"), ctx.const(2, "destination")
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    src = [ctx.dim(d, x.ndim) for d in src]
    perm: list = [None] * x.ndim
    for s, d in zip(src, dst):
        perm[ctx.dim(d, x.ndim)] = s
    rest = iter(k for k in range(x.ndim) if k not in src)
    perm = [next(rest) if p is None else p for p in perm]
    return ctx.result([x.dims[k] for k in perm])


@register(method("expand"), torch.broadcast_to, method("broadcast_to"))
def expand(ctx: RuleContext) -> TV:
    x, shape = ctx.tensor(0, "input"), ctx.out_shape()
    raws, paths = _size_args(ctx, 1, "size")
    lead = len(shape) - x.ndim
    dims = []
    for k, n in enumerate(shape):
        j = k - lead
        if j >= 0 and x.shape[j] == n:  # kept dim: its size argument follows its layout
            dims.append(x.dims[j])
            if len(raws) == len(shape):
                size_arg_edit(ctx, paths[k], raws[k], x.dims[j])
            continue
        layout = ctx.fresh(n)
        dims.append(layout)
        if len(raws) == len(shape):
            size_arg_edit(ctx, paths[k], raws[k], layout)
    return ctx.result(dims)


@register(method("expand_as"))
def expand_as(ctx: RuleContext) -> TV:
    x, y = ctx.tensor(0, "input"), ctx.tensor(1, "other")
    lead = y.ndim - x.ndim
    for j in range(x.ndim):
        if x.shape[j] != 1:
            ctx.unify(x.dims[j], y.dims[j + lead])
    return ctx.result(y.dims)


@register(method("repeat"))
def repeat(ctx: RuleContext) -> TV:
    x, shape = ctx.tensor(0, "input"), ctx.out_shape()
    raws, paths = _size_args(ctx, 1, "repeats")
    lead = len(shape) - x.ndim
    dims = []
    for k, n in enumerate(shape):
        j = k - lead
        reps = ctx.v(raws[k])
        if not isinstance(reps, IV):
            raise RuleError("repeat count is not an int")
        if j < 0:
            dims.append(ctx.fresh(n))
        elif reps.value == 1:
            dims.append(x.dims[j])
        else:
            count = ctx.fresh(reps.value)
            size_arg_edit(ctx, paths[k], raws[k], count)
            dims.append(ctx.axes.product(count, x.dims[j]))
    return ctx.result(dims)
