"""Normalization layers: affine parameters equal the normalized axes."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from ..context import TV, RuleContext, RuleError
from ..registry import declare_shape, register

__all__ = ["batch_norm", "group_norm", "layer_norm"]


def _channel_params(ctx: RuleContext, x: TV, params) -> TV:
    c = 1 if x.ndim > 1 else 0
    for p in params:
        if p is not None:
            ctx.unify(p.dims[0], x.dims[c])
    return ctx.result(x.dims)


@register(F.batch_norm, F.instance_norm)
def batch_norm(ctx: RuleContext) -> TV:
    # batch_norm(input, running_mean, running_var, weight, bias, ...)
    # instance_norm(input, running_mean, running_var, weight, bias, ...)
    x = ctx.tensor(0, "input")
    names = ["running_mean", "running_var", "weight", "bias"]
    params = [ctx.tensor(i + 1, n, default=None) for i, n in enumerate(names)]
    return _channel_params(ctx, x, params)


@register(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
          nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
def batch_norm_module(ctx: RuleContext) -> TV:
    x = ctx.tensor(0, "input")
    names = ["weight", "bias", "running_mean", "running_var"]
    out = _channel_params(ctx, x, [ctx.module_param(n) for n in names])
    ctx.set_attr("num_features", x.dims[1 if x.ndim > 1 else 0])
    return out


declare_shape("same", nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d,
              nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm, F.batch_norm,
              F.instance_norm, F.group_norm, F.layer_norm, F.rms_norm)


def group_norm_core(ctx: RuleContext, x: TV, groups: int, w, b):
    axes = ctx.axes
    c = x.dims[1]
    if x.shape[1] % groups:
        raise RuleError("channels not divisible by groups")
    g_layout, per_group = axes.fresh(groups), axes.fresh(x.shape[1] // groups)
    ctx.unify(c, axes.product(g_layout, per_group))
    ctx.mixing(per_group, "group normalization")
    for p in (w, b):
        if p is not None:
            ctx.unify(p.dims[0], c)
    return ctx.result(x.dims), g_layout


@register(F.group_norm)
def group_norm(ctx: RuleContext) -> TV:
    x, groups = ctx.tensor(0, "input"), ctx.const(1, "num_groups")
    out, g_layout = group_norm_core(ctx, x, groups, ctx.tensor(2, "weight", None), ctx.tensor(3, "bias", None))
    ctx.edit(ctx.path(1, "num_groups"), g_layout)
    return out


@register(nn.GroupNorm)
def group_norm_module(ctx: RuleContext) -> TV:
    x = ctx.tensor(0, "input")
    w, b = ctx.module_param("weight"), ctx.module_param("bias")
    out, g_layout = group_norm_core(ctx, x, ctx.module.num_groups, w, b)
    ctx.set_attr("num_groups", g_layout)
    ctx.set_attr("num_channels", x.dims[1])
    return out


def layer_norm_core(ctx: RuleContext, x: TV, k: int, params) -> TV:
    for i in range(k):
        d = x.dims[x.ndim - k + i]
        ctx.mixing(d, "layer normalization")
        for p in params:
            if p is not None:
                ctx.unify(p.dims[i], d)
    return ctx.result(x.dims)


@register(F.layer_norm, F.rms_norm)
def layer_norm(ctx: RuleContext) -> TV:
    x = ctx.tensor(0, "input")
    shape = ctx.const(1, "normalized_shape")
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    has_bias = "rms_norm" not in str(getattr(ctx.node.target, "__name__", ctx.node.target))  # rms_norm: (x, shape, w, eps)
    w, b = ctx.tensor(2, "weight", None), ctx.tensor(3, "bias", None) if has_bias else None
    out = layer_norm_core(ctx, x, len(shape), (w, b))
    raw = ctx.arg(1, "normalized_shape")
    path = ctx.path(1, "normalized_shape")
    if isinstance(raw, (tuple, list)):
        for i in range(len(shape)):
            ctx.edit(path + (i,), x.dims[x.ndim - len(shape) + i])
    else:
        ctx.edit(path, x.dims[-1])
    return out


@register(nn.LayerNorm, nn.RMSNorm)
def layer_norm_module(ctx: RuleContext) -> TV:
    x, m = ctx.tensor(0, "input"), ctx.module
    k = len(m.normalized_shape)
    out = layer_norm_core(ctx, x, k, (ctx.module_param("weight"), ctx.module_param("bias")))
    ctx.set_attr("normalized_shape", [x.dims[x.ndim - k + i] for i in range(k)])
    return out

