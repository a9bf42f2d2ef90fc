"""Consumer sites: the graph nodes whose weight contracts a group's coordinates.

Note [Consumer sites]
~~~~~~~~~~~~~~~~~~~~~
A site is one node ``y = W x (+ b)`` where ``W`` is a parameter and one of its
dimensions (``dim``) is contracted against the activation ``x``. Which ops are
sites, which argument is ``x``, which dimension of ``W`` is contracted and
which one indexes the output features is data: :data:`_KINDS`, keyed by module
type or call target (aten overloads by their packet), like the analysis rules.

Statistics are kept over the *contracted coordinates*: the flat indices of
``W``'s dimension ``dim``. A linear layer contributes every row of ``x``
(``x.reshape(-1, in)``); a convolution contributes every spatial position of
every sample (``x`` with its channel dim moved last): per channel, not over
unfolded patches. Per channel keeps a Gram matrix at ``C x C`` instead of
``(C k^2)^2``, is what Wanda and FLAP measure on convolutions, and keeps the
repairs exact in the known-answer cases: if a removed channel is a fixed linear
combination of kept ones at every position, it is one in every patch too. What
it leaves out is the correlation between kernel offsets, so a convolution's
least-squares repair and its reported errors are approximations, and mean
compensation uses the mean of every (channel, kernel offset) input over the
output positions instead (``F.unfold`` sums, one layer at a time), so next to
zero padding it adds the best constant, which is exact only away from borders.

Grouped and transposed convolutions, and matmuls whose parameter is on the left,
are not sites: their groups are scored by their other consumers, and they are
never repaired.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from . import adapter

__all__ = ["Site", "find_sites", "walk_graphs", "param_uses", "as_matrix", "from_matrix"]

aten = torch.ops.aten


@dataclass(frozen=True)
class _Kind:
    """How one kind of op reads its activation, weight and bias (positions in ``node.args``)."""

    name: str
    x: int
    weight: Optional[int]  # None: a module's ``weight``
    bias: Optional[int]  # None: a module's ``bias``, or no bias argument (``bias_kw``)
    dim: int  # contracted weight dim
    out: int  # weight dim of the output features
    check: Callable = lambda node, w, mod: True  # noqa: E731
    bias_kw: Optional[str] = "bias"


def _conv_ok(node, w, mod) -> bool:
    if mod is not None:
        return mod.groups == 1 and not mod.transposed
    groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
    return groups == 1


def _convolution_ok(node, w, mod) -> bool:  # aten.convolution(x, w, b, stride, pad, dil, transposed, out_pad, groups)
    return len(node.args) > 8 and not node.args[6] and node.args[8] == 1


def _matrix(node, w, mod) -> bool:
    return w.dim() == 2


def _addmm_ok(node, w, mod) -> bool:
    return w.dim() == 2 and node.kwargs.get("beta", 1) == 1 and node.kwargs.get("alpha", 1) == 1


_LINEAR = _Kind("linear", x=0, weight=1, bias=2, dim=1, out=0, check=_matrix)
_CONV = _Kind("conv", x=0, weight=1, bias=2, dim=1, out=0, check=_conv_ok)
_MATMUL = _Kind("matmul", x=0, weight=1, bias=None, dim=0, out=1, check=_matrix, bias_kw=None)
_KINDS: dict = {
    nn.Linear: _Kind("linear", x=0, weight=None, bias=None, dim=1, out=0),
    **{t: _Kind("conv", x=0, weight=None, bias=None, dim=1, out=0, check=_conv_ok)
       for t in (nn.Conv1d, nn.Conv2d, nn.Conv3d)},
    F.linear: _LINEAR, aten.linear: _LINEAR,
    **{f: _CONV for f in (F.conv1d, F.conv2d, F.conv3d, aten.conv1d, aten.conv2d, aten.conv3d)},
    aten.convolution: _Kind("conv", x=0, weight=1, bias=2, dim=1, out=0, check=_convolution_ok),
    **{f: _MATMUL for f in (torch.matmul, operator.matmul, torch.mm, aten.matmul, aten.mm)},
    **{f: _Kind("addmm", x=1, weight=2, bias=0, dim=0, out=1, check=_addmm_ok) for f in (torch.addmm, aten.addmm)},
}


@dataclass(frozen=True)
class Site:
    """One consumer node: ``key`` is ``(graph prefix, node name)``; targets are full parameter names.

    ``bias`` is the full name of the bias parameter, None where the op has none,
    or ``"<computed>"`` where the bias is an activation (it cannot be repaired).
    """

    key: tuple
    kind: str
    weight: str
    dim: int
    out: int
    x_arg: int
    bias: Optional[str]
    patches: Optional[tuple] = None  # 2-D conv: (kernel, dilation, padding, stride) for F.unfold

    def patch_sums(self, x: torch.Tensor, w: torch.Tensor) -> Optional[tuple]:
        """(count, sum over output positions of every (channel, kernel offset) input), float64.

        The mean of what each weight multiplies, zero padding included: what mean
        compensation subtracts next to a border (Note [Consumer sites]).
        """
        if self.patches is None or x.dim() != 4:
            return None
        cols = F.unfold(x.double(), *self.patches)  # (N, C * K, L)
        return cols.shape[0] * cols.shape[2], cols.sum((0, 2)).view(w.shape[1], -1)

    @property
    def name(self) -> str:
        return self.weight.rpartition(".")[0] or self.weight

    def rows(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The activation as ``(samples, contracted coordinates)``, float64."""
        if self.kind == "conv":
            c = x.dim() - (w.dim() - 2) - 1
            x = x.movedim(c, -1)
        return x.reshape(-1, x.shape[-1]).double()


COMPUTED = "<computed>"


def _kind(node: fx.Node, gm: fx.GraphModule):
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        for base in type(mod).__mro__:
            if base in _KINDS:
                return _KINDS[base], mod
        return None, None
    if node.op == "call_function":
        return _KINDS.get(getattr(node.target, "overloadpacket", node.target)), None
    return None, None


def _param_arg(gm: fx.GraphModule, prefix: str, node: fx.Node, i: Optional[int], kw: Optional[str]):
    """(full target, tensor) of a parameter argument, (None, None) if absent, COMPUTED if an activation."""
    arg = node.args[i] if i is not None and len(node.args) > i else node.kwargs.get(kw) if kw else None
    if arg is None:
        return None, None
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        return prefix + arg.target, getattr_path(gm, arg.target)
    return COMPUTED, None


def getattr_path(root: nn.Module, target: str):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _site(dg, gm: fx.GraphModule, prefix: str, node: fx.Node) -> Optional[Site]:
    kind, mod = _kind(node, gm)
    if kind is None:
        return None
    if mod is not None:
        weight, w = prefix + node.target + ".weight", mod.weight
        bias = None if mod.bias is None else prefix + node.target + ".bias"
    else:
        weight, w = _param_arg(gm, prefix, node, kind.weight, None)
        bias, _ = _param_arg(gm, prefix, node, kind.bias, kind.bias_kw)
    if not isinstance(w, torch.Tensor) or weight == COMPUTED or not kind.check(node, w, mod):
        return None
    if not adapter.has_param(dg, weight) or kind.dim not in adapter.consumer_dims(dg, weight):
        return None
    patches = _conv2d_geometry(node, w, mod) if kind.name == "conv" else None
    return Site((prefix, node.name), kind.name, weight, kind.dim, kind.out, kind.x, bias, patches)


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _conv2d_geometry(node: fx.Node, w: torch.Tensor, mod) -> Optional[tuple]:
    """``(kernel, dilation, padding, stride)`` of a 2-D convolution with numeric padding, else None."""
    if w.dim() != 4:
        return None
    if mod is not None:
        stride, padding, dilation = mod.stride, mod.padding, mod.dilation
        if mod.padding_mode != "zeros":
            return None
    else:
        args = list(node.args) + [None] * 6
        stride, padding, dilation = (args[3] or 1), (args[4] or 0), (args[5] or 1)
        stride = node.kwargs.get("stride", stride)
        padding = node.kwargs.get("padding", padding)
        dilation = node.kwargs.get("dilation", dilation)
    if isinstance(padding, str) or not all(isinstance(v, int) for v in (*_pair(stride), *_pair(padding),
                                                                           *_pair(dilation))):
        return None
    return tuple(w.shape[2:]), _pair(dilation), _pair(padding), _pair(stride)


def walk_graphs(gm: fx.GraphModule, prefix: str = ""):
    """``(prefix, graph module)`` for ``gm`` and every GraphModule it calls (folded blocks), recursively."""
    yield prefix, gm
    for node in gm.graph.nodes:
        if node.op == "call_module":
            sub = gm.get_submodule(node.target)
            if isinstance(sub, fx.GraphModule):
                yield from walk_graphs(sub, f"{prefix}{node.target}.")


def find_sites(dg, runnable_gm: fx.GraphModule) -> dict:
    """``{key: Site}`` for every consumer node of the runnable graph (and the block graphs it calls)."""
    out = {}
    for prefix, gm in walk_graphs(runnable_gm):
        for node in gm.graph.nodes:
            site = _site(dg, gm, prefix, node)
            if site is not None:
                out[site.key] = site
    return out


def param_uses(runnable_gm: fx.GraphModule) -> dict:
    """``{full parameter name: number of ops reading it}``: a weight read twice (tied) is never repaired."""
    uses: dict = {}
    for prefix, gm in walk_graphs(runnable_gm):
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                uses[prefix + node.target] = uses.get(prefix + node.target, 0) + len(node.users)
            elif node.op == "call_module" and not isinstance(gm.get_submodule(node.target), fx.GraphModule):
                for name, _ in gm.get_submodule(node.target).named_parameters():
                    full = f"{prefix}{node.target}.{name}"
                    uses[full] = uses.get(full, 0) + 1
    return uses


def as_matrix(w: torch.Tensor, site: Site) -> tuple:
    """``(M, perm)``: ``w`` as ``(out, rest, in)`` float64, ``in`` the contracted dim; ``perm`` undoes it."""
    others = [d for d in range(w.dim()) if d not in (site.out, site.dim)]
    perm = [site.out, *others, site.dim]
    m = w.detach().double().permute(perm)
    return m.reshape(m.shape[0], -1, m.shape[-1]), perm


def from_matrix(m: torch.Tensor, perm: list, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`as_matrix` for a matrix whose contracted dim may have a new size."""
    shape = [like.shape[d] for d in perm]
    shape[-1] = m.shape[-1]
    inverse = [perm.index(d) for d in range(len(perm))]
    return m.reshape(shape).permute(inverse).contiguous()
