"""Pass-through and element-wise ops."""
from __future__ import annotations

import builtins
import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..context import IV, OV, TV, RuleContext
from ..registry import declare_shape, method, register
from .common import broadcast, passthrough, tensors_in

# Ops whose output carries the axes of their first tensor argument unchanged.
PASSTHROUGH_FUNCTIONS = [
    F.relu, F.relu6, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh,
    F.leaky_relu, F.elu, F.selu, F.celu, F.softplus, F.softsign, F.tanhshrink, F.logsigmoid,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
    torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.log, torch.sqrt, torch.rsqrt,
    torch.abs, torch.neg, torch.sin, torch.cos, torch.erf, torch.sign, torch.square,
    torch.reciprocal, torch.floor, torch.ceil, torch.round, torch.nan_to_num, torch.clone,
    torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.detach,
    torch.relu_, torch.sigmoid_, torch.exp_,
    "torchvision.ops.stochastic_depth.stochastic_depth",
]
PASSTHROUGH_METHODS = [
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "log", "sqrt", "rsqrt",
    "abs", "neg", "sin", "cos", "erf", "sign", "square", "reciprocal", "floor", "ceil", "round",
    "contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to", "type", "type_as",
    "cpu", "cuda", "requires_grad_", "zero_", "fill_", "nan_to_num",
]
PASSTHROUGH_MODULES = [
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh,
    nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.LogSigmoid, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Threshold, nn.Hardshrink, nn.Softshrink,
]
register(*PASSTHROUGH_FUNCTIONS, *map(method, PASSTHROUGH_METHODS), *PASSTHROUGH_MODULES)(passthrough)
_DTYPE_CHANGING = {"float", "double", "half", "bfloat16", "to", "type", "type_as", "cpu", "cuda"}
declare_shape("same", *(f for f in PASSTHROUGH_FUNCTIONS if not isinstance(f, str)), *PASSTHROUGH_MODULES,
              *(method(m) for m in PASSTHROUGH_METHODS if m not in _DTYPE_CHANGING))

ELEMENTWISE_FUNCTIONS = [
    torch.add, torch.sub, torch.mul, torch.div, torch.true_divide, torch.floor_divide,
    torch.remainder, torch.pow, torch.maximum, torch.minimum, torch.where, torch.clamp,
    torch.masked_fill, torch.lerp, torch.addcmul, torch.addcdiv, torch.eq, torch.ne, torch.lt,
    torch.le, torch.gt, torch.ge, torch.logical_and, torch.logical_or, torch.logical_not,
    torch.fmod, torch.hypot, torch.atan2, torch.copysign, torch.rsub,
]
ELEMENTWISE_METHODS = [
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "true_divide", "floor_divide",
    "remainder", "pow", "pow_", "maximum", "minimum", "clamp", "clamp_", "clip", "masked_fill",
    "masked_fill_", "lerp", "addcmul", "addcdiv", "eq", "ne", "lt", "le", "gt", "ge",
    "logical_and", "logical_or", "logical_not", "where", "fmod", "rsub", "copy_", "clamp_min", "clamp_max",
]
ELEMENTWISE_OPERATORS = [
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod,
    operator.pow, operator.neg, operator.pos, operator.abs, operator.invert, operator.and_,
    operator.or_, operator.xor, operator.eq, operator.ne, operator.lt, operator.le, operator.gt,
    operator.ge, operator.iadd, operator.isub, operator.imul, operator.itruediv,
    builtins.min, builtins.max,
]


ARITHMETIC = [torch.add, torch.sub, torch.mul, operator.add, operator.sub, operator.mul, operator.truediv,
              torch.div, *map(method, ["add", "sub", "mul", "div", "add_", "mul_", "sub_", "div_"])]
declare_shape("broadcast", *ARITHMETIC)


@register(*ELEMENTWISE_FUNCTIONS, *map(method, ELEMENTWISE_METHODS), *ELEMENTWISE_OPERATORS)
def elementwise(ctx: RuleContext):
    tvs = tensors_in(ctx)
    if not tvs:  # arithmetic on Python numbers (sizes): the value is what ran
        return IV(ctx.out, deps=_size_deps(ctx)) if isinstance(ctx.out, (int, float, bool)) else OV(ctx.out)
    return broadcast(ctx, tvs)


def _size_deps(ctx: RuleContext):
    """The sizes a Python number computed from Python numbers depends on (None: unknown)."""
    deps: list = []
    for raw in (*ctx.node.args, *ctx.node.kwargs.values()):
        val = ctx.v(raw)
        if isinstance(val, OV) and isinstance(val.value, (type(None), str)):
            continue
        src = val.sources() if isinstance(val, IV) else None
        if src is None:
            return None
        deps.extend(src)
    return tuple(deps)


@register(F.prelu)
def prelu(ctx: RuleContext) -> TV:
    x, w = ctx.tensor(0, "input"), ctx.tensor(1, "weight")
    if w.shape[0] != 1:
        ctx.unify(w.dims[0], x.dims[1 if x.ndim > 1 else 0])
    return ctx.result(x.dims)


@register(nn.PReLU)
def prelu_module(ctx: RuleContext) -> TV:
    x, w = ctx.tensor(0, "input"), ctx.module_param("weight")
    if w.shape[0] != 1:
        ctx.unify(w.dims[0], x.dims[1 if x.ndim > 1 else 0])
        ctx.set_attr("num_parameters", w.dims[0])
    return ctx.result(x.dims)


def _softmax_dim(ctx: RuleContext, x: TV) -> int:
    if ctx.module is not None:
        d = ctx.module.dim
    else:
        d = ctx.const(1, "dim", None)
    if d is None:
        d = 0 if x.ndim in (0, 1, 3) else 1  # torch's legacy implicit-dim choice
    return ctx.dim(d, x.ndim)


@register(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, method("softmax"),
          method("log_softmax"), nn.Softmax, nn.LogSoftmax, nn.Softmin, F.softmin)
def softmax(ctx: RuleContext) -> TV:
    x = ctx.tensor(0, "input")
    ctx.mixing(x.dims[_softmax_dim(ctx, x)], "softmax")
    return ctx.result(x.dims)


@register(torch._assert, "torch._assert_async", "torch.fx._symbolic_trace._assert_is_none",
          builtins.isinstance, builtins.int, builtins.float, builtins.bool)
def python_value(ctx: RuleContext):
    """Ops whose result is a Python value, not a tensor: they read metadata (asserts, guards)
    or a single element (``int(t)``), never coordinates of a channel axis."""
    for raw in (*ctx.node.args, *ctx.node.kwargs.values()):
        ctx.metadata_only(raw)
    if isinstance(ctx.out, torch.Tensor):
        return ctx.analyzer.from_output(ctx.out, f"opaque value at {ctx.where}")
    return IV(ctx.out) if isinstance(ctx.out, (int, float, bool)) else OV(ctx.out)


__all__ = ["elementwise", "softmax", "prelu", "python_value"]
__all__ += ["PASSTHROUGH_FUNCTIONS", "PASSTHROUGH_METHODS", "PASSTHROUGH_MODULES"]
