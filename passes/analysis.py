"""The channel-dependency analysis pass.

Note [Analysis]
~~~~~~~~~~~~~~~
The graph runs once on meta tensors (a structural clone of the module tree
whose parameters live on the meta device: no weight memory, no arithmetic).
After each node runs, its rule states the channel structure of its output in
terms of the axes of its inputs (see passes/axes.py). Nodes without a rule pin
every axis they touch, and so do nodes whose rule raises ``RuleError`` (or,
outside strict mode, any exception: Note [Strict mode] in passes/errors.py).
At the end every node gets a frozen ``ChannelMeta`` under
``node.meta["fxprune"]`` and the unpinned atoms read by parameters become the
pruning groups (passes/finalize.py).

``analyze_graph`` closes the graph: its inputs and outputs are pinned.
``analyze_block`` leaves them open, for a graph that stands for a piece of a
larger one (a folded block): the caller decides their fate.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils._pytree import tree_leaves, tree_map

from . import registry
from .axes import AxisTable
from .context import IV, OV, SV, TV, RuleContext, RuleError, iter_tensors, to_python
from .errors import RuleBugError, ShapePropagationError, is_strict
from .finalize import finalize, resolve_value
from .meta_device import meta_call, meta_clone, to_meta

__all__ = ["AnalysisResult", "analyze_graph", "analyze_block", "ShapePropagationError", "meta_clone"]

_RULE_BUGS = (IndexError, TypeError, ValueError, KeyError, AttributeError)


@dataclass
class AnalysisResult:
    """What the analysis found; every node also carries its ``ChannelMeta``.

    ``group_atoms`` are the atom ids of the pruning groups, in graph order.
    ``inputs``/``outputs`` are set by :func:`analyze_block` only: per
    placeholder, and per flat output leaf, a ``TensorLayout`` (the Python
    value for a non-tensor).
    """

    gm: fx.GraphModule
    axes: AxisTable
    group_atoms: list  # list[int]
    members: dict  # atom id -> list[(target, dim)]
    pinned: dict  # atom id -> list[str] reasons (only atoms read by parameters)
    unknown: list  # list[(node name, description)]
    shape_mode: str = "meta"
    notes: list = field(default_factory=list)
    inputs: tuple = ()
    outputs: tuple = ()


class _Analyzer(fx.Interpreter):
    def __init__(self, module: nn.Module, graph: fx.Graph, parent: Optional["_Analyzer"] = None,
                 seed: Optional[list] = None, strict: bool = False, open_boundaries: bool = False):
        super().__init__(module, graph=graph, garbage_collect_values=True)
        self.values: dict[fx.Node, Any] = {}
        self.contexts: dict[fx.Node, RuleContext] = {}
        self.unused: list = []  # get_attr nodes without users
        self.seed, self.result = seed, None  # a subgraph's input values; its output value
        self.open, self.inputs = open_boundaries, []  # open boundaries: inputs unpinned (recorded), output kept
        if parent is None:
            self.axes = AxisTable()
            self.param_layouts: dict[int, tuple] = {}
            self.uses: dict[fx.Node, list] = defaultdict(list)
            self.consumers: dict[int, set] = defaultdict(set)
            self.unknown: list = []
            self.on_meta, self.strict = False, strict
            self.deferred: list = []  # checks rules ask to run again once every axis is unified
        else:  # a subgraph shares the axes and parameter tables of its parent
            for name in ("axes", "param_layouts", "uses", "consumers", "unknown", "on_meta", "strict", "deferred"):
                setattr(self, name, getattr(parent, name))

    # -- values -------------------------------------------------------------
    def value_of(self, raw: Any) -> Any:
        if isinstance(raw, fx.Node):
            return self.values[raw]
        if isinstance(raw, (tuple, list)):
            return SV(tuple(self.value_of(r) for r in raw))
        if isinstance(raw, dict):
            return {k: self.value_of(r) for k, r in raw.items()}
        if isinstance(raw, (int, float)):
            return IV(raw, literal=True)
        return OV(raw)

    def from_output(self, out: Any, reason: str, ones: bool = False) -> Any:
        """A value for an op output nothing is known about: every axis pinned. ``ones`` (graph
        inputs): a dim of size 1 gets a size-1 axis too, so that a batch of one stays visible
        (Note [Run-time sizes] in passes/rules/common.py)."""
        if isinstance(out, torch.Tensor):
            dims = tuple(((self.axes.new(1, pinned=reason, dynamic=True),),) if ones and n == 1 else
                         self.axes.fresh(int(n), pinned=reason, dynamic=True) for n in out.shape)
            return TV(tuple(int(n) for n in out.shape), dims)
        if isinstance(out, torch.Size):
            return SV(tuple(IV(int(n)) for n in out), is_size=True)
        if isinstance(out, (tuple, list)):
            return SV(tuple(self.from_output(o, reason, ones) for o in out))
        if isinstance(out, dict):
            return {k: self.from_output(o, reason, ones) for k, o in out.items()}
        if isinstance(out, (int, float, bool, torch.SymInt)):
            return IV(out)
        return OV(out)

    def param_value(self, node: fx.Node, target: str, t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return self.value_of(t)
        key = id(t)
        if key not in self.param_layouts:
            self.param_layouts[key] = tuple(self.axes.fresh(int(n)) for n in t.shape)
        self.uses[node].append((target, key))
        return TV(tuple(int(n) for n in t.shape), self.param_layouts[key], source=key)

    def _pin_unused(self, val: Any) -> None:
        for tv in iter_tensors(val):
            for d in tv.dims:
                self.axes.pin(d, "attribute read by no op")

    def pin_unused_attrs(self) -> None:
        """Pin tensors read only by get_attr nodes nothing uses. A tensor that some op uses
        (a tied weight export reads under two names) keeps its groups."""
        dead = set(self.unused)
        used = {key for node, uses in self.uses.items() if node not in dead for _, key in uses}
        for n in self.unused:
            val = self.values.get(n)
            if not (isinstance(val, TV) and val.source in used):
                self._pin_unused(val)

    def mark_consumer(self, key: int, dim: int) -> None:
        self.consumers[key].add(dim)

    # -- interpretation -------------------------------------------------------
    def _shortcut(self, n: fx.Node) -> Any:
        """The meta output of a shape-preserving or broadcasting op, without running it."""
        if not self.on_meta or n.op not in ("call_module", "call_function", "call_method"):
            return None
        kind = registry.shape_kind(n, self.fetch_attr(n.target) if n.op == "call_module" else None)
        if kind is None:
            return None
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if not tensors or any(t.device.type != "meta" for t in tensors):
            return None
        if kind == "same":  # a fresh contiguous tensor: `contiguous()` may be followed by `view`
            x = args[0]
            return torch.empty(x.shape, dtype=x.dtype, device="meta") if isinstance(x, torch.Tensor) else None
        operands = [a for a in args[:2] if isinstance(a, (torch.Tensor, int, float, bool))]
        if len(operands) != min(len(args), 2) or kwargs.get("rounding_mode") is not None:
            return None
        dtype = torch.result_type(*operands) if len(operands) == 2 else tensors[0].dtype
        if not dtype.is_floating_point:
            return None
        shape = torch.broadcast_shapes(*(t.shape for t in tensors))
        return torch.empty(shape, dtype=dtype, device="meta")

    def call_function(self, target, args, kwargs):
        if self.on_meta:
            return meta_call(super().call_function, target, args, kwargs)
        return super().call_function(target, args, kwargs)

    def call_method(self, target, args, kwargs):
        if self.on_meta:
            return meta_call(super().call_method, target, args, kwargs)
        return super().call_method(target, args, kwargs)

    def run_node(self, n: fx.Node) -> Any:
        try:
            out = self._shortcut(n)
            if out is None:
                out = super().run_node(n)
        except Exception as e:
            raise ShapePropagationError(f"shape propagation failed at {n.format_node()}: {e}") from e
        self.values[n] = self._analyze(n, out)
        return out

    def _analyze(self, n: fx.Node, out: Any) -> Any:
        if n.op == "placeholder":
            if self.seed is not None:
                return self.seed.pop(0)
            if self.open:
                self.inputs.append(_open_value(self.axes, out))
                return self.inputs[-1]
            return self.from_output(out, f"graph input '{n.name}'", ones=True)
        if n.op == "get_attr":
            val = self.param_value(n, n.target, out)
            if not n.users:
                self.unused.append(n)
            return val
        if n.op == "output" and (self.seed is not None or self.open):
            self.result = self.value_of(n.args[0])
            return None
        if n.op == "output":
            for tv in iter_tensors(self.value_of(n.args[0])):
                for d in tv.dims:
                    self.axes.pin(d, "graph output")
            return None
        module = self.fetch_attr(n.target) if n.op == "call_module" else None
        rule = registry.lookup(n, module)
        ctx = RuleContext(self, n, out, module)
        if rule is None:
            return self._unknown(ctx, f"no rule for {registry.rule_name(n, module)}")
        try:
            val = rule(ctx)
            ctx.check_all_read()
        except (RuleError, *_RULE_BUGS) as e:
            if self.strict and not isinstance(e, RuleError):
                raise RuleBugError(
                    f"rule {rule.__name__} raised {type(e).__name__} at {n.format_node()}: {e}. A rule says "
                    "'I cannot handle this form' with RuleError; anything else is a bug in the rule. (Strict "
                    "mode; outside it the node is pinned instead, see Note [Strict mode].)") from e
            ctx.clear_instructions()
            return self._unknown(ctx, f"rule {rule.__name__} cannot handle this call ({e})")
        self.contexts[n] = ctx
        return val

    def _unknown(self, ctx: RuleContext, why: str) -> Any:
        n = ctx.node
        reason = f"{why} at node '{n.name}'"
        self.unknown.append((n.name, why))
        for raw in (*n.args, *n.kwargs.values()):
            ctx.pin_value(self.value_of(raw), reason)
        if ctx.module is not None:
            for name, t in [*ctx.module.named_parameters(), *ctx.module.named_buffers()]:
                ctx.pin_value(self.param_value(n, f"{n.target}.{name}", t), reason)
        return self.from_output(ctx.out, reason)


@registry.register(torch.ops.higher_order.wrap_with_set_grad_enabled)
def grad_mode_region(ctx: RuleContext) -> Any:
    """``wrap_with_set_grad_enabled(enabled, subgraph, *inputs)`` (torch.export's no_grad regions).

    The subgraph is analysed in place, sharing the axis table. The rewrite does
    not edit subgraphs, so every axis whose size literal or run-time size read
    it would have to change is pinned.
    """
    parent = ctx.analyzer
    _, sub, *inputs = ctx.node.args
    sub_gm = parent.fetch_attr(sub.target)
    child = _Analyzer(sub_gm, sub_gm.graph, parent=parent, seed=[ctx.v(a) for a in inputs])
    child.run(*(parent.env[a] if isinstance(a, fx.Node) else a for a in inputs))
    reason = f"size used inside the subgraph of {ctx.where}"
    for c in child.contexts.values():
        for layout in c.instruction_layouts():
            ctx.pin(layout, reason)
    return child.result


def _propagate(gm: fx.GraphModule, example_inputs: tuple, strict: bool,
               open_boundaries: bool = False) -> tuple[_Analyzer, str]:
    """Run the graph on meta tensors (on real ones where that fails), the rules after each node."""
    def run(module, inputs):
        analyzer = _Analyzer(module, gm.graph, strict=strict, open_boundaries=open_boundaries)
        analyzer.on_meta = module is not gm
        analyzer.run(*inputs)
        return analyzer

    try:
        return run(meta_clone(gm), tree_map(to_meta, tuple(example_inputs))), "meta"
    except ShapePropagationError as meta_error:
        with torch.no_grad():
            try:
                return run(gm, example_inputs), f"real tensors ({meta_error})"
            except ShapePropagationError as e:
                raise e from None


def _result(gm: fx.GraphModule, an: _Analyzer, mode: str) -> AnalysisResult:
    an.pin_unused_attrs()
    for check in an.deferred:  # checks that need every axis unified first (Note in rules/common.py)
        check()
    groups, members, pinned = finalize(gm, an)
    return AnalysisResult(gm, an.axes, groups, members, pinned, an.unknown, mode)


def analyze_graph(gm: fx.GraphModule, example_inputs: tuple, *, strict: Optional[bool] = None) -> AnalysisResult:
    """Annotate every node of ``gm`` with ``ChannelMeta`` and collect the groups.

    Args:
        gm: the graph to analyse; only ``node.meta`` is written.
        example_inputs: positional inputs (real tensors; only shapes and dtypes are used).
        strict: raise :class:`RuleBugError` where a rule fails with anything but ``RuleError``;
            None follows ``fxprune.passes.strict()`` / ``FXPRUNE_STRICT`` (Note [Strict mode]).

    Returns:
        An :class:`AnalysisResult` holding the axis table and the groups.

    Example::

        >>> import torch, torch.fx as fx
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> result = analyze_graph(fx.symbolic_trace(net), (torch.randn(1, 4),))
        >>> [result.axes.size(a) for a in result.group_atoms]
        [8]
    """
    analyzer, mode = _propagate(gm, example_inputs, is_strict(strict))
    return _result(gm, analyzer, mode)


def analyze_block(gm: fx.GraphModule, example_inputs: tuple, *, strict: Optional[bool] = None) -> AnalysisResult:
    """Analyse a graph with open boundaries: a piece of a larger graph (a folded block).

    Its tensor inputs get fresh, unpinned axes and its outputs are not pinned: the
    caller unifies them with the larger graph. Otherwise as :func:`analyze_graph`;
    the result's ``inputs`` and ``outputs`` hold the boundary's layouts.

    Example::

        >>> import torch, torch.fx as fx
        >>> block = fx.symbolic_trace(torch.nn.Linear(4, 8))
        >>> result = analyze_block(block, (torch.randn(1, 4),))
        >>> [lay.size for lay in result.outputs[0].dims], len(result.group_atoms)  # in, out: unpinned
        ([1, 8], 2)
    """
    analyzer, mode = _propagate(gm, example_inputs, is_strict(strict), open_boundaries=True)
    result = _result(gm, analyzer, mode)
    result.inputs = tuple(resolve_value(analyzer.axes, v) for v in analyzer.inputs)
    result.outputs = tuple(_boundary(analyzer.axes, o) for o in tree_leaves(_plain(analyzer.result)))
    return result


def _open_value(axes: AxisTable, x: Any) -> Any:
    """A block input: tensors get fresh, unpinned axes (the caller decides their fate)."""
    if isinstance(x, torch.Tensor):
        return TV(tuple(int(n) for n in x.shape), tuple(axes.fresh(int(n)) for n in x.shape))
    return IV(x, literal=True) if isinstance(x, (int, float)) and not isinstance(x, bool) else OV(x)


def _plain(val: Any) -> Any:
    return list(_plain(v) for v in val.items) if isinstance(val, SV) else val


def _boundary(axes: AxisTable, val: Any) -> Any:
    """An output leaf: its TensorLayout, or its Python value."""
    return resolve_value(axes, val) if isinstance(val, TV) else to_python(val)
