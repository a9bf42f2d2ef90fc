"""Pooling, resampling and pixel (un)shuffle: channels pass, spatial dims are computed."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..context import SV, TV, RuleContext
from ..registry import method, register

__all__ = ["spatial", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "unfold", "fold"]

_SPATIAL_FNS = {
    F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2,
    F.avg_pool3d: 3, F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3,
    F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3,
    F.lp_pool1d: 1, F.lp_pool2d: 2, F.lp_pool3d: 3, torch.max_pool1d: 1, torch.max_pool2d: 2,
    F.max_pool2d_with_indices: 2, F.max_pool1d_with_indices: 1,
    F.max_pool3d_with_indices: 3, F.adaptive_max_pool2d_with_indices: 2,
}
_SPATIAL_MODULES = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2,
    nn.AvgPool3d: 3, nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3, nn.LPPool1d: 1,
    nn.LPPool2d: 2, nn.LPPool3d: 3, nn.ZeroPad1d: 1, nn.ZeroPad2d: 2, nn.ZeroPad3d: 3,
    nn.ConstantPad1d: 1, nn.ConstantPad2d: 2, nn.ConstantPad3d: 3, nn.ReflectionPad1d: 1,
    nn.ReflectionPad2d: 2, nn.ReflectionPad3d: 3, nn.ReplicationPad1d: 1, nn.ReplicationPad2d: 2,
    nn.ReplicationPad3d: 3,
}
_SPATIAL_NDIM = {**_SPATIAL_FNS, **_SPATIAL_MODULES}
_RESAMPLE = [F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear, nn.Upsample,
             nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d]


def _nsp(ctx: RuleContext, x: TV) -> int:
    key = type(ctx.module) if ctx.module is not None else ctx.node.target
    return _SPATIAL_NDIM.get(key, x.ndim - 2)


def _spatial_out(ctx: RuleContext, x: TV, out, nsp: int) -> TV:
    keep = x.ndim - nsp
    for d in x.dims[keep:]:
        ctx.pin(d, f"spatial dimension of {ctx.where}")
    return ctx.result((*x.dims[:keep], *(ctx.computed(int(n)) for n in out.shape[keep:])), out=out)


@register(*_SPATIAL_FNS, *_SPATIAL_MODULES, *_RESAMPLE)
def spatial(ctx: RuleContext):
    """The leading (batch, channel) dims pass through; the trailing ones are recomputed."""
    x = ctx.tensor(0, "input")
    nsp = _nsp(ctx, x)
    if isinstance(ctx.out, (tuple, list)):  # (values, indices)
        return SV(tuple(_spatial_out(ctx, x, o, nsp) for o in ctx.out))
    return _spatial_out(ctx, x, ctx.out, nsp)


@register(F.pad)
def pad(ctx: RuleContext) -> TV:
    x, widths = ctx.tensor(0, "input"), ctx.const(1, "pad")
    dims, shape = list(x.dims), ctx.out_shape()
    for i in range(len(widths) // 2):  # pair i pads dim -1-i
        k = x.ndim - 1 - i
        if widths[2 * i] or widths[2 * i + 1]:
            ctx.pin(dims[k], f"padded dimension at {ctx.where}")
            dims[k] = ctx.computed(shape[k])
    return ctx.result(dims)


def _factor(ctx: RuleContext, i: int, name: str, attr: str) -> int:
    return getattr(ctx.module, attr) if ctx.module is not None else ctx.const(i, name)


@register(F.pixel_shuffle, nn.PixelShuffle)
def pixel_shuffle(ctx: RuleContext) -> TV:
    """(C*r*r, H, W) -> (C, H*r, W*r): in-channels are product(C, r, r)."""
    x = ctx.tensor(0, "input")
    r = _factor(ctx, 1, "upscale_factor", "upscale_factor")
    c, axes = ctx.out_shape()[-3], ctx.axes
    out_c = axes.fresh(c)
    sub = axes.fresh(r * r, pinned=f"pixel shuffle sub-pixels at {ctx.where}")
    ctx.unify(x.dims[-3], axes.product(out_c, sub))
    shape = ctx.out_shape()
    return ctx.result((*x.dims[:-3], out_c, ctx.computed(shape[-2]), ctx.computed(shape[-1])))


@register(F.pixel_unshuffle, nn.PixelUnshuffle)
def pixel_unshuffle(ctx: RuleContext) -> TV:
    """(C, H, W) -> (C*r*r, H/r, W/r): out-channels are product(C, r, r)."""
    x = ctx.tensor(0, "input")
    r = _factor(ctx, 1, "downscale_factor", "downscale_factor")
    sub = ctx.axes.fresh(r * r, pinned=f"pixel unshuffle sub-pixels at {ctx.where}")
    shape = ctx.out_shape()
    out_c = ctx.axes.product(x.dims[-3], sub)
    return ctx.result((*x.dims[:-3], out_c, ctx.computed(shape[-2]), ctx.computed(shape[-1])))


@register(F.channel_shuffle, nn.ChannelShuffle, method("channel_shuffle"))
def channel_shuffle(ctx: RuleContext) -> TV:
    """product(G, C/G) -> product(C/G, G)."""
    x = ctx.tensor(0, "input")
    g = _factor(ctx, 1, "groups", "groups")
    axes = ctx.axes
    g_layout, per = axes.fresh(g), axes.fresh(x.shape[1] // g)
    ctx.unify(x.dims[1], axes.product(g_layout, per))
    if ctx.module is not None:
        ctx.set_attr("groups", g_layout)
    else:
        ctx.edit(ctx.path(1, "groups"), g_layout)
    return ctx.result((x.dims[0], axes.product(per, g_layout), *x.dims[2:]))


def _kernel_count(ctx: RuleContext, i: int, name: str) -> int:
    k = ctx.module.kernel_size if ctx.module is not None else ctx.const(i, name)
    k = (k, k) if isinstance(k, int) else tuple(k)
    return int(k[0]) * int(k[1])


@register(F.unfold, nn.Unfold, torch._C._nn.im2col, torch.ops.aten.im2col)
def unfold(ctx: RuleContext) -> TV:
    """``im2col``: (C, H, W) -> (C*K, L), K the kernel positions (pinned), L the patches (computed).
    Out-channels are product(C, K) as in pixel unshuffle: pruning c removes its K columns."""
    x = ctx.tensor(0, "input")
    kpos = ctx.axes.fresh(_kernel_count(ctx, 1, "kernel_size"), pinned=f"unfold kernel positions at {ctx.where}")
    for d in x.dims[-2:]:
        ctx.pin(d, f"spatial dimension of {ctx.where}")
    shape = ctx.out_shape()
    return ctx.result((*x.dims[:-3], ctx.axes.product(x.dims[-3], kpos), ctx.computed(shape[-1])))


@register(F.fold, nn.Fold, torch._C._nn.col2im, torch.ops.aten.col2im)
def fold(ctx: RuleContext) -> TV:
    """``col2im``: (C*K, L) -> (C, H, W); in-channels are product(C, K), L is spatial."""
    x = ctx.tensor(0, "input")
    shape = ctx.out_shape()
    k = _kernel_count(ctx, 2, "kernel_size")
    c = ctx.fresh(shape[-3])
    ctx.unify(x.dims[-2], ctx.axes.product(c, ctx.axes.fresh(k, pinned=f"fold kernel positions at {ctx.where}")))
    ctx.pin(x.dims[-1], f"patch dimension of {ctx.where}")
    return ctx.result((*x.dims[:-2], c, ctx.computed(shape[-2]), ctx.computed(shape[-1])))
