"""Convolutions and linear layers (functional and module forms share one rule)."""
from __future__ import annotations

from typing import Optional

import torch.nn as nn
import torch.nn.functional as F

from ..context import TV, RuleContext, RuleError
from ..registry import register

__all__ = ["conv", "linear"]

_CONV_FNS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_CONV_T_FNS = {F.conv_transpose1d: 1, F.conv_transpose2d: 2, F.conv_transpose3d: 3}


def conv_core(ctx: RuleContext, x: TV, w: TV, b: Optional[TV], groups: int, transposed: bool):
    """Equate the axes of a (grouped, transposed) convolution.

    Weight layout: (out, in/g, *k) or, transposed, (in, out/g, *k). With g
    groups the channel dims are product(G, per-group) with one shared G.
    Returns (output layout, in-channel layout, groups layout).
    """
    axes = ctx.axes
    nsp = w.ndim - 2
    c = x.ndim - nsp - 1
    w_in, w_out = (0, 1) if transposed else (1, 0)
    g_layout = axes.fresh(groups)
    if groups == 1:
        ctx.unify(x.dims[c], w.dims[w_in])
        out = w.dims[w_out]
    elif transposed:
        ctx.unify(x.dims[c], w.dims[0])
        ctx.unify(w.dims[0], axes.product(g_layout, axes.fresh(w.shape[0] // groups)))
        out = axes.product(g_layout, w.dims[1])
    else:
        ctx.unify(x.dims[c], axes.product(g_layout, w.dims[1]))
        out_per_group = axes.fresh(w.shape[0] // groups)
        ctx.unify(w.dims[0], axes.product(g_layout, out_per_group))
        out = w.dims[0]
    ctx.contract(w, w_in)
    for d in w.dims[2:]:
        ctx.pin(d, "convolution kernel dimension")
    if b is not None:
        ctx.unify(b.dims[0], out)
    shape = ctx.out_shape()
    for d in x.dims[c + 1:]:
        ctx.pin(d, f"spatial dimension of {ctx.where}")
    dims = (*x.dims[:c], out, *(ctx.computed(n) for n in shape[c + 1:]))
    return ctx.result(dims), x.dims[c], g_layout


def _functional_conv(ctx: RuleContext, transposed: bool) -> TV:
    x, w = ctx.tensor(0, "input"), ctx.tensor(1, "weight")
    b = ctx.tensor(2, "bias", default=None)
    gi = 6  # ``groups`` is positional argument 6 of conv and conv_transpose alike
    groups = ctx.const(gi, "groups", 1)
    out, _, g_layout = conv_core(ctx, x, w, b, groups, transposed)
    if ctx.has_arg(gi, "groups"):
        ctx.edit(ctx.path(gi, "groups"), g_layout)
    return out


@register(*_CONV_FNS)
def conv(ctx: RuleContext) -> TV:
    return _functional_conv(ctx, transposed=False)


@register(*_CONV_T_FNS)
def conv_transpose(ctx: RuleContext) -> TV:
    return _functional_conv(ctx, transposed=True)


@register(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def conv_module(ctx: RuleContext) -> TV:
    m = ctx.module
    if ctx.has_arg(1, "output_size") and ctx.arg(1, "output_size") is not None:
        raise RuleError("ConvTranspose with output_size")
    x = ctx.tensor(0, "input")
    w, b = ctx.module_param("weight"), ctx.module_param("bias")
    out, in_layout, g_layout = conv_core(ctx, x, w, b, m.groups, m.transposed)
    ctx.set_attr("in_channels", in_layout)
    ctx.set_attr("out_channels", out.dims[x.ndim - (w.ndim - 2) - 1])
    ctx.set_attr("groups", g_layout)
    return out


def linear_core(ctx: RuleContext, x: TV, w: TV, b: Optional[TV]) -> TV:
    if w.ndim != 2:
        raise RuleError("linear with a non-matrix weight")
    ctx.unify(x.dims[-1], w.dims[1])
    ctx.contract(w, 1)
    if b is not None:
        ctx.unify(b.dims[0], w.dims[0])
    return ctx.result((*x.dims[:-1], w.dims[0]))


@register(F.linear)
def linear(ctx: RuleContext) -> TV:
    return linear_core(ctx, ctx.tensor(0, "input"), ctx.tensor(1, "weight"), ctx.tensor(2, "bias", default=None))


@register(nn.Linear)
def linear_module(ctx: RuleContext) -> TV:
    w = ctx.module_param("weight")
    out = linear_core(ctx, ctx.tensor(0, "input"), w, ctx.module_param("bias"))
    ctx.set_attr("in_features", w.dims[1])
    ctx.set_attr("out_features", w.dims[0])
    return out

