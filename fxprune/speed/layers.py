"""The timed layers of an analysed model: which kernels run, at which shapes, on which groups' widths.

Note [Timed layers]
~~~~~~~~~~~~~~~~~~~
A layer is a ``Conv1d``/``Conv2d`` (dense or depthwise) or ``Linear`` module of
the analysed graph whose weight carries a group. Its :class:`LayerSpec` (kind,
input shape, widths, kernel hyper-parameters, dtype) is its identity in the
latency table: two layers with one spec share one measurement. Its out width
follows the groups on weight dim 0, its in width those on dim 1 (a product of
groups, heads x head_dim, scales with each factor). A depthwise conv ties both
to one width. Everything else (norms, activations, grouped convs, attention
matmuls) is the *residual*: measured as the dense model's time minus the
layers', and left to the correction loop that times the real pruned model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from fxprune.passes import runnable

from ..capture.modes import eval_copy

__all__ = ["LayerSpec", "Layer", "find_layers"]

_KINDS = {nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Linear: "linear"}


@dataclass(frozen=True)
class LayerSpec:
    """One distinct kernel: a conv or linear at its dense widths and input shape."""

    kind: str
    in_shape: tuple
    in_ch: int
    out_ch: int
    kernel: tuple = ()
    stride: tuple = ()
    padding: object = ()
    dilation: tuple = ()
    depthwise: bool = False
    bias: bool = True
    dtype: str = "float32"

    def key(self) -> str:
        return "|".join(f"{k}={v}" for k, v in self.__dict__.items())

    def build(self, w_in: int, w_out: int) -> tuple:
        """``(module, input)`` of this kernel at widths ``w_in``/``w_out`` (random values)."""
        dtype = getattr(torch, self.dtype)
        shape = list(self.in_shape)
        if self.kind == "linear":
            shape[-1] = w_in
            mod = nn.Linear(w_in, w_out, bias=self.bias)
        else:
            shape[1] = w_in
            conv = nn.Conv1d if self.kind == "conv1d" else nn.Conv2d
            mod = conv(w_in, w_out, self.kernel, self.stride, self.padding, self.dilation,
                       groups=w_in if self.depthwise else 1, bias=self.bias)
        return mod.to(dtype).eval(), torch.randn(shape, dtype=dtype)


@dataclass(frozen=True)
class Layer:
    """A timed layer: its module name, spec, and the group indices on its out and in widths."""

    name: str
    spec: LayerSpec
    out_groups: tuple
    in_groups: tuple

    @property
    def groups(self) -> tuple:
        return tuple(dict.fromkeys(self.out_groups + self.in_groups))

    def widths(self, widths: dict, sizes: dict) -> tuple:
        """``(w_in, w_out)`` when every group ``g`` keeps ``widths[g]`` of its ``sizes[g]`` coordinates."""
        def scale(full, gs):
            frac = math.prod(widths.get(g, sizes[g]) / sizes[g] for g in gs)
            return max(1, math.ceil(full * frac - 1e-9))
        w_out = scale(self.spec.out_ch, self.out_groups)
        return (w_out if self.spec.depthwise else scale(self.spec.in_ch, self.in_groups)), w_out


def _spec(mod: nn.Module, shape: tuple, dtype: torch.dtype) -> Optional[LayerSpec]:
    kind = _KINDS.get(type(mod))
    if kind is None:
        return None
    bias = mod.bias is not None
    if kind == "linear":
        return LayerSpec(kind, shape, mod.in_features, mod.out_features, bias=bias, dtype=str(dtype)[6:])
    depthwise = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
    if mod.groups > 1 and not depthwise:
        return None  # grouped: part of the residual (Note [Timed layers])
    return LayerSpec(kind, shape, mod.in_channels, mod.out_channels, tuple(mod.kernel_size), tuple(mod.stride),
                     mod.padding, tuple(mod.dilation), depthwise, bias, str(dtype)[6:])


def _input_shapes(gm: nn.Module, args: tuple, kwargs: dict) -> dict:
    """``{module name: (input shape, dtype)}`` of the conv/linear modules, from one forward pass."""
    model, seen, hooks = eval_copy(gm), {}, []
    for name, mod in model.named_modules():
        if type(mod) in _KINDS:
            hooks.append(mod.register_forward_pre_hook(
                lambda m, a, name=name: seen.setdefault(name, (tuple(a[0].shape), a[0].dtype)) and None))
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _groups_on(dg, target: str, dim: int) -> tuple:
    use = dg.param_use(target)
    found = []
    for product in use.dims[dim].products():
        found += [g.index for g in (dg.group_of(a.id) for a in product) if g is not None]
    return tuple(dict.fromkeys(found))


def find_layers(dg) -> list:
    """The :class:`Layer` s of ``dg`` (Note [Timed layers]); modules never called are left out.

    Example::

        >>> import torch, fxprune
        >>> from fxprune.speed.layers import find_layers
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
        >>> dg = fxprune.analyze(net, (torch.randn(1, 3, 16, 16),))
        >>> [(l.name, l.spec.in_ch, l.spec.out_ch, l.out_groups, l.in_groups) for l in find_layers(dg)]
        [('0', 3, 8, (0,), ()), ('2', 8, 4, (), (0,))]
    """
    gm = runnable(dg.gm)
    shapes = _input_shapes(gm, tuple(dg.example_args), dict(dg.example_kwargs or {}))
    layers = []
    for name, mod in gm.named_modules():
        target = f"{name}.weight"
        if name not in shapes or target not in dg.param_names:
            continue
        spec = _spec(mod, *shapes[name])
        if spec is None:
            continue
        out_g, in_g = _groups_on(dg, target, 0), (() if spec.depthwise else _groups_on(dg, target, 1))
        if out_g or in_g:
            layers.append(Layer(name, spec, out_g, in_g))
    return layers
