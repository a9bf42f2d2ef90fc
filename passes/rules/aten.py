"""Aten overloads (graphs from torch.export): the same rules as the torch functions they mirror.

Keys are overload packets (``aten.add`` covers ``aten.add.Tensor`` and
``aten.add.Scalar``). Where an aten signature matches the torch function's,
the torch rule is reused as is; the few that differ get small adapters here.
"""
from __future__ import annotations

import torch

from ..context import IV, OV, SV, TV, RuleContext
from ..registry import declare_shape, register
from . import attention, index, linear, norm, pointwise, reduce, sequence, shape, sizes, spatial
from .common import passthrough, pin_mixed_dynamic, pin_moving_bounds
from .segments import pieces

aten = torch.ops.aten

__all__ = ["aten_split", "aten_slice", "aten_embedding", "aten_convolution", "aten_sym_size", "aten_native_batch_norm"]


def _packets(*names: str) -> list:
    return [getattr(aten, n) for n in names if hasattr(aten, n)]


_PASSTHROUGH = _packets(
    "relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "hardtanh", "leaky_relu",
    "elu", "selu", "mish", "softplus", "neg", "rsqrt", "sqrt", "exp", "log", "abs", "erf", "sin", "cos",
    "reciprocal", "square", "sign", "floor", "ceil", "round", "clone", "contiguous", "detach", "alias",
    "dropout", "feature_dropout", "to", "_to_copy", "type_as", "zeros_like", "ones_like", "full_like",
    "empty_like", "lift_fresh_copy", "nan_to_num", "relu6", "logit",
)
_PASSTHROUGH += [p for p in _packets(*(f"{n}_" for n in (
    "silu", "gelu", "hardswish", "hardsigmoid", "hardtanh", "leaky_relu", "elu", "sigmoid", "tanh", "dropout",
    "feature_dropout", "mish", "neg", "rsqrt", "sqrt", "exp", "clamp", "relu6"))) if p not in _PASSTHROUGH]
register(*_PASSTHROUGH)(passthrough)
declare_shape("same", *(p for p in _PASSTHROUGH if p not in (aten.to, aten._to_copy, aten.type_as)))

_ELEMENTWISE = _packets(
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "pow", "maximum", "minimum", "where", "clamp",
    "clamp_min", "clamp_max", "masked_fill", "eq", "ne", "lt", "le", "gt", "ge", "__and__", "__or__",
    "logical_and", "logical_or", "logical_not", "bitwise_and", "bitwise_or", "bitwise_not", "rsub",
    "remainder", "floor_divide", "lerp", "addcmul", "addcdiv", "fmod", "copy_", "copy",
)
register(*_ELEMENTWISE)(pointwise.elementwise)

register(*_packets("softmax", "_softmax", "log_softmax", "_log_softmax"))(pointwise.softmax)
register(*_packets("_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size",
                   "sym_constrain_range", "_assert_async", "_functional_assert_async"))(pointwise.python_value)
register(*_packets("layer_norm", "rms_norm"))(norm.layer_norm)
register(*_packets("batch_norm", "instance_norm"))(norm.batch_norm)
register(aten.group_norm)(norm.group_norm)
register(aten.linear)(linear.linear)
register(*_packets("conv1d", "conv2d", "conv3d"))(linear.conv)
register(*_packets("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"))(linear.conv_transpose)
register(*_packets("view", "reshape", "_unsafe_view"))(shape.view)
register(*_packets("unsqueeze", "squeeze", "flatten"))(shape.flatten)
register(aten.unflatten)(shape.unflatten)
register(aten.permute)(shape.permute)
register(aten.transpose)(shape.transpose)
register(aten.t, aten.numpy_T)(shape.matrix_t)
register(aten.expand)(shape.expand)
register(aten.view_as, aten.reshape_as)(shape.view_as)
register(aten.expand_as)(shape.expand_as)
register(aten.repeat)(shape.repeat)
register(aten.cat)(index.cat)
register(aten.stack)(index.stack)
register(aten.split_with_sizes)(index.split)
register(aten.chunk)(index.chunk)
register(aten.unbind)(index.unbind)
register(aten.select)(index.select)
register(aten.narrow)(index.narrow)
register(*_packets("mean", "sum", "amax", "amin", "var", "std", "prod", "logsumexp", "max", "min"))(reduce.reduction)
register(*_packets("argmax", "argmin", "sort", "argsort", "topk", "cumsum", "cumprod"))(reduce.arg_reduction)
register(*_packets("matmul", "bmm", "mm", "mv"))(attention.matmul)
register(*_packets("addmm", "baddbmm"))(attention.addmm)
register(aten.scaled_dot_product_attention)(attention.sdpa)
register(*_packets("index_select"))(sequence.index_select)
register(aten.gather)(sequence.gather)
register(aten.repeat_interleave)(sequence.repeat_interleave)
register(*_packets("triu", "tril", "flip", "roll"))(sequence.coordinate_dependent)
register(*_packets(
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "_adaptive_avg_pool2d",
    "adaptive_max_pool2d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d",
    "max_pool3d", "max_pool2d_with_indices", "upsample_nearest2d", "upsample_bilinear2d",
    "upsample_nearest1d", "upsample_linear1d", "upsample_bicubic2d", "upsample_nearest3d",
))(spatial.spatial)
register(*_packets("constant_pad_nd", "pad"))(spatial.pad)
register(aten.pixel_shuffle)(spatial.pixel_shuffle)
register(aten.pixel_unshuffle)(spatial.pixel_unshuffle)
register(aten.channel_shuffle)(spatial.channel_shuffle)
register(aten.einsum)(attention.einsum)


try:  # the guard module torch.export puts in front of an unlifted graph: checks inputs, returns None
    from torch.export._unlift import GuardsFn

    register(GuardsFn)(pointwise.python_value)
except ImportError:  # older torch
    pass


@register(aten.slice)
def aten_slice(ctx: RuleContext) -> TV:
    """``slice.Tensor(x, dim=0, start=None, end=None, step=1)``."""
    x = ctx.tensor(0, "self")
    d = ctx.dim(int(ctx.const(1, "dim", 0)), x.ndim)
    vals = [ctx.v(ctx.arg(i, n, None)) for i, n in ((2, "start"), (3, "end"), (4, "step"))]
    py = [None if isinstance(v, OV) else int(v.value) for v in vals]
    n = x.shape[d]
    s, e, st = slice(*py).indices(n)
    dims = list(x.dims)
    if (s, e, st) == (0, n, 1):
        return ctx.result(dims)
    if st != 1 or e <= s:
        ctx.pin(x.dims[d], f"strided or empty slice at {ctx.where}")
        dims[d] = ctx.computed(len(range(s, e, st)))
        return ctx.result(dims)
    pre, mid, _ = pieces(ctx, x, d, [s, e - s, n - e])
    if any(isinstance(v, IV) and not v.literal for v in vals):
        pin_mixed_dynamic(ctx, x.dims[d])
        pin_moving_bounds(ctx, x.dims[d], vals)
    if py[0] is not None:
        ctx.edit(ctx.path(2, "start"), pre)
    if py[1] is not None and py[1] < n:
        ctx.edit(ctx.path(3, "end"), [pre, mid], kind="stop")
    dims[d] = mid
    return ctx.result(dims)


@register(aten.embedding)
def aten_embedding(ctx: RuleContext) -> TV:
    return sequence.embedding_core(ctx, ctx.tensor(1, "indices"), ctx.tensor(0, "weight"))


@register(aten.convolution)
def aten_convolution(ctx: RuleContext) -> TV:
    """``convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)``."""
    x, w, b = ctx.tensor(0, "input"), ctx.tensor(1, "weight"), ctx.tensor(2, "bias", default=None)
    out, _, g_layout = linear.conv_core(ctx, x, w, b, int(ctx.const(8, "groups")), bool(ctx.const(6, "transposed")))
    ctx.edit(ctx.path(8, "groups"), g_layout)
    return out


@register(aten.sym_size)
def aten_sym_size(ctx: RuleContext) -> IV:
    x = ctx.tensor(0, "self")
    return sizes._read(ctx, x, ctx.dim(int(ctx.const(1, "dim")), x.ndim))


@register(aten._native_batch_norm_legit_no_training, aten._native_batch_norm_legit)
def aten_native_batch_norm(ctx: RuleContext) -> SV:
    """``(input, weight, bias, running_mean, running_var, ...) -> (out, mean, invstd)``."""
    x = ctx.tensor(0, "input")
    params = [ctx.tensor(i, None, default=None) for i in range(1, 5)]
    c = 1 if x.ndim > 1 else 0
    for p in params:
        if p is not None:
            ctx.unify(p.dims[0], x.dims[c])
    out = ctx.result(x.dims, out=ctx.out[0])
    rest = [ctx.analyzer.from_output(o, f"batch-norm statistics at {ctx.where}") for o in ctx.out[1:]]
    return SV((out, *rest))


@register(aten.split)
def aten_split(ctx: RuleContext) -> SV:
    """``split.Tensor(x, split_size: int, dim)``: pieces that stop being equal need
    ``split_with_sizes``, so an edited node is retargeted to it."""
    x = ctx.tensor(0, "self")
    d = ctx.dim(int(ctx.const(2, "dim", 0)), x.ndim)
    val, pieces = index._split_outputs(ctx, x, d)
    ctx.edit(ctx.path(1, "split_size"), pieces, kind="sizes")
    ctx.retarget = aten.split_with_sizes.default
    return val
