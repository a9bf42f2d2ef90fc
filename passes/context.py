"""Values flowing through the analysis and the context handed to rules."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.fx as fx

from .axes import UNIT, AxisTable, RawLayout

__all__ = ["TV", "IV", "SV", "OV", "RuleContext", "MISSING", "RuleError"]

MISSING = object()


class RuleError(Exception):
    """A rule met an argument form it does not handle; the node is pinned instead."""


@dataclass(eq=False)
class TV:
    """A tensor: static shape and one raw layout per dimension."""

    shape: tuple
    dims: tuple
    source: Optional[int] = None  # id of the parameter tensor it was read from
    source_dims: Optional[tuple] = None  # a view of it: the parameter dim of each dim (None: not one)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def param_dim(self, d: int) -> Optional[int]:
        """The parameter dimension that dim ``d`` is (a weight, or a transpose/gather of one), else None."""
        if self.source is None:
            return None
        return d if self.source_dims is None else self.source_dims[d]


@dataclass(eq=False)
class IV:
    """A Python int (or float/bool) computed in the graph.

    ``read`` is set for a direct read of a tensor's size (``x.size(1)``,
    ``x.shape[1]``); ``literal`` for a constant written in the graph.
    ``deps`` lists the layouts of every size the value was computed from
    (``x.shape[-1] // 2``), or is None where that is not known.
    """

    value: Any
    read: Optional[RawLayout] = None
    literal: bool = False
    deps: Optional[tuple] = None

    def sources(self) -> Optional[tuple]:
        """Layouts of the sizes this value depends on; () for a literal, None if unknown."""
        if self.literal:
            return ()
        if self.read is not None:
            return (self.read,)
        return self.deps


@dataclass(eq=False)
class SV:
    """A tuple/list/torch.Size of values."""

    items: tuple
    is_size: bool = False


@dataclass(eq=False)
class OV:
    """Anything else (None, strings, dtypes, slices, opaque objects)."""

    value: Any = None


def _describe(node: fx.Node) -> str:
    return f"{node.op} {node.name}"


@dataclass(eq=False)
class RuleContext:
    """What a rule sees: its node, input values, the propagated output, and the axis table."""

    analyzer: Any
    node: fx.Node
    out: Any  # the meta (or real) output of the node
    module: Optional[torch.nn.Module] = None
    edits: list = field(default_factory=list)  # (path, tuple of raw layouts, kind, value)
    attrs: list = field(default_factory=list)  # (name, tuple of raw layouts, many)
    retarget: Any = None
    size_read: Optional[RawLayout] = None
    fold: Any = None  # a folded block's call site: (FoldInfo, path, {block atom: axis}); see passes/blocks.py
    read: set = field(default_factory=set)  # graph nodes whose values the rule read
    params_read: set = field(default_factory=set)  # module parameters/buffers it read

    # -- arguments -----------------------------------------------------------
    @property
    def axes(self) -> AxisTable:
        return self.analyzer.axes

    @property
    def where(self) -> str:
        return _describe(self.node)

    def has_arg(self, i: int, name: Optional[str] = None) -> bool:
        return i < len(self.node.args) or (name is not None and name in self.node.kwargs)

    def arg(self, i: int, name: Optional[str] = None, default: Any = MISSING) -> Any:
        """Raw argument: positional ``i`` or keyword ``name``."""
        if i < len(self.node.args):
            return self.node.args[i]
        if name is not None and name in self.node.kwargs:
            return self.node.kwargs[name]
        if default is MISSING:
            raise RuleError(f"missing argument {name or i}")
        return default

    def path(self, i: int, name: Optional[str] = None) -> tuple:
        if i < len(self.node.args):
            return ("args", i)
        if name is not None and name in self.node.kwargs:
            return ("kwargs", name)
        raise RuleError(f"missing argument {name or i}")

    def v(self, raw: Any) -> Any:
        """The analysis value of a raw argument (node, literal or container), recorded as read."""
        fx.node.map_arg(raw, self.read.add)
        return self.analyzer.value_of(raw)

    def metadata_only(self, raw: Any) -> None:
        """Declare that the rule reads only the shape/dtype/device of ``raw`` (``type_as``), so
        its values need not be pinned (see :meth:`pin_unread`)."""
        fx.node.map_arg(raw, self.read.add)

    def tensor(self, i: int, name: Optional[str] = None, default: Any = MISSING) -> Optional[TV]:
        raw = self.arg(i, name, None if default is not MISSING else MISSING)
        val = self.v(raw)
        if isinstance(val, TV):
            return val
        if default is not MISSING and (raw is None or isinstance(val, OV) and val.value is None):  # None placeholder
            return default
        raise RuleError(f"argument {name or i} is not a tensor")

    def const(self, i: int, name: Optional[str] = None, default: Any = MISSING) -> Any:
        """A non-tensor argument's Python value (ints read from sizes included)."""
        return to_python(self.v(self.arg(i, name, default)))

    def dim(self, d: int, ndim: int) -> int:
        if not -ndim <= d < max(ndim, 1):
            raise RuleError(f"dim {d} out of range for {ndim}-d tensor")
        return d % ndim if ndim else 0

    # -- axes ------------------------------------------------------------------
    def unify(self, l1: RawLayout, l2: RawLayout) -> bool:
        return self.axes.unify(l1, l2, f"incompatible layouts at {self.where}")

    def pin(self, layout: RawLayout, reason: Optional[str] = None) -> None:
        self.axes.pin(layout, reason or f"pinned by {self.where}")

    def pin_value(self, val: Any, reason: str) -> None:
        for tv in iter_tensors(val):
            for d in tv.dims:
                self.axes.pin(d, reason)

    def computed(self, size: int) -> RawLayout:
        """A dimension the op computes (spatial output, pooled length): never pruned."""
        return self.axes.fresh(size, pinned=f"computed by {self.where}", dynamic=True)

    def fresh(self, size: int) -> RawLayout:
        return self.axes.fresh(size)

    def mixing(self, layout: RawLayout, what: str) -> None:
        self.axes.mark_mixing(layout, f"{what} at {self.where}")

    def contract(self, tv: TV, d: int) -> None:
        """Dimension ``d`` of ``tv`` is contracted against an activation."""
        if tv.param_dim(d) is not None:
            self.analyzer.mark_consumer(tv.source, tv.param_dim(d))
        else:
            self.mixing(tv.dims[d], "contraction with a computed operand")

    # -- outputs ---------------------------------------------------------------
    def out_shape(self, out: Any = MISSING) -> tuple:
        out = self.out if out is MISSING else out
        if not isinstance(out, torch.Tensor):
            raise RuleError("expected a tensor output")
        return tuple(int(s) for s in out.shape)

    def result(self, dims, out: Any = MISSING) -> TV:
        shape = self.out_shape(out)
        dims = tuple(dims)
        if len(dims) != len(shape):
            raise RuleError(f"rule produced {len(dims)} dims for a {len(shape)}-d output")
        for d, n in zip(dims, shape):
            if self.axes.layout_size(d) != n:
                raise RuleError(f"rule produced a layout of size {self.axes.layout_size(d)} for size {n}")
        return TV(shape, dims)

    def param_view(self, x: TV, dims, order) -> TV:
        """The result of a view op (transpose, gather) whose dim ``k`` is dim ``order[k]`` of ``x``
        (None: a new dim): a weight stays a weight for the consumer marks of the removal oracle."""
        out = self.result(dims)
        if x.source is not None:
            out.source = x.source
            out.source_dims = tuple(None if k is None else x.param_dim(k) for k in order)
        return out

    def module_param(self, name: str) -> Optional[TV]:
        """A parameter/buffer of this ``call_module`` node's module, recorded as used."""
        t = self.module
        for part in name.split("."):
            t = getattr(t, part, None)
        if t is None:
            return None
        self.params_read.add(name)
        return self.analyzer.param_value(self.node, f"{self.node.target}.{name}", t)

    def check_all_read(self) -> None:
        """Raise :class:`RuleError` naming every tensor the rule did not account for.

        Note [Unread tensors]: a rule states the couplings of the arguments it reads. A tensor
        argument it never read (``attn_mask`` for a rule that ignores masks), or a parameter or
        buffer of its module it never asked for, may be coupled to any axis of the call in ways
        the rule did not state; left free it would become a group of its own whose pruning
        silently changes the result. So a rule that leaves one unread cannot vouch for the call,
        which is then treated as an op without a rule: every axis it touches is pinned.
        """
        unread: list = []  # tensors with a dimension of two or more: others carry no coordinates
        coords = lambda tvs: any(n > 1 for tv in tvs for n in tv.shape)  # noqa: E731
        labelled = [(f"argument {i}", a) for i, a in enumerate(self.node.args)]
        labelled += [(f"keyword '{k}'", a) for k, a in self.node.kwargs.items()]
        for label, raw in labelled:
            fx.node.map_arg(raw, lambda n: unread.append(f"{label} ('{n.name}')")
                            if n not in self.read and coords(iter_tensors(self.analyzer.values.get(n))) else None)
        if self.module is not None:
            unread += [f"'{name}' of {type(self.module).__name__}" for name, t in
                       [*self.module.named_parameters(), *self.module.named_buffers()]
                       if name not in self.params_read and t.numel() > 1]
        if unread:
            raise RuleError(f"the rule does not read {', '.join(unread[:4])}")

    # -- rewrite instructions ----------------------------------------------------
    def edit(self, path: tuple, layouts: Any, kind: str = "size", value: Any = None) -> None:
        """Tie the argument at ``path`` to one raw layout, or to a *list* of them (kinds "sizes",
        "stop", "slice"; see ``ArgEdit``); kind "constant" sets it to ``value`` where the
        layout is pruned (e.g. an attention scale that must not change)."""
        if (kind in ("sizes", "stop", "slice")) != isinstance(layouts, list):
            raise TypeError(f"edit kind {kind!r} takes {'a list of' if kind in ('sizes', 'stop', 'slice') else 'one'} "
                            "raw layout(s)")
        self.edits.append((path, _several(layouts), kind, value))

    def set_attr(self, name: str, layouts: Any) -> None:
        """Recompute module attribute ``name``: one raw layout (an int attribute) or a *list*
        of them (a sequence attribute such as ``normalized_shape``)."""
        self.attrs.append((name, _several(layouts), isinstance(layouts, list)))

    def clear_instructions(self) -> None:
        """Forget every rewrite instruction (the node is pinned instead)."""
        self.edits.clear(), self.attrs.clear()
        self.retarget = self.size_read = self.fold = None

    def instruction_layouts(self):
        """Every raw layout a rewrite instruction of this node depends on."""
        for _, layouts, _, _ in self.edits:
            yield from layouts
        for _, layouts, _ in self.attrs:
            yield from layouts
        if self.size_read is not None:
            yield self.size_read


def _several(layouts: Any) -> tuple:
    """Rules pass one raw layout (a tuple) or a list of them."""
    return tuple(layouts) if isinstance(layouts, list) else (layouts,)


def iter_tensors(val: Any):
    if isinstance(val, TV):
        yield val
    elif isinstance(val, SV):
        for item in val.items:
            yield from iter_tensors(item)
    elif isinstance(val, dict):
        for item in val.values():
            yield from iter_tensors(item)


def to_python(val: Any) -> Any:
    if isinstance(val, IV):
        return val.value
    if isinstance(val, OV):
        return val.value
    if isinstance(val, SV):
        return tuple(to_python(v) for v in val.items)
    if isinstance(val, dict):
        return {k: to_python(v) for k, v in val.items()}
    raise RuleError("expected a constant, got a tensor")


__all__ += ["iter_tensors", "to_python", "UNIT"]
