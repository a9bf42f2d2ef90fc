"""The channel-dependency analysis pass.

Note [Analysis]
~~~~~~~~~~~~~~~
The graph runs once on meta tensors (a structural clone of the module tree
whose parameters live on the meta device: no weight memory, no arithmetic).
After each node runs, its rule states the channel structure of its output in
terms of the axes of its inputs (see passes/axes.py). Nodes without a rule pin
every axis they touch. At the end every node gets a frozen ``ChannelMeta``
under ``node.meta["fxprune"]`` and the unpinned atoms read by parameters
become the pruning groups.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils._pytree import tree_map

from . import registry
from .axes import AxisTable, iter_atoms
from .context import IV, OV, SV, TV, RuleContext, RuleError, iter_tensors
from .meta import META_KEY, ArgEdit, ChannelMeta, ParamUse, SizeRead, TensorLayout

__all__ = ["AnalysisResult", "analyze_graph", "ShapePropagationError"]


class ShapePropagationError(RuntimeError):
    pass


@dataclass
class AnalysisResult:
    gm: fx.GraphModule
    axes: AxisTable
    groups: list  # list[int]: atom ids, in graph order
    members: dict  # atom id -> list[(target, dim)]
    pinned: dict  # atom id -> list[str] reasons (only atoms read by parameters)
    unknown: list  # list[(node name, description)]
    shape_mode: str = "meta"
    notes: list = field(default_factory=list)


def meta_clone(module: nn.Module, memo: Optional[dict] = None) -> nn.Module:
    """A structural copy of ``module`` whose tensors live on the meta device."""
    memo = {} if memo is None else memo
    if id(module) in memo:
        return memo[id(module)]
    clone = copy.copy(module)
    memo[id(module)] = clone
    clone.__dict__ = dict(module.__dict__)
    clone._parameters = {k: _meta_tensor(p, memo) for k, p in module._parameters.items()}
    clone._buffers = {k: _meta_tensor(b, memo) for k, b in module._buffers.items()}
    clone._modules = {k: (None if m is None else meta_clone(m, memo)) for k, m in module._modules.items()}
    for k, v in module.__dict__.items():
        if isinstance(v, torch.Tensor):
            clone.__dict__[k] = _meta_tensor(v, memo)
    return clone


def _meta_tensor(t: Optional[torch.Tensor], memo: dict):
    if t is None:
        return None
    if id(t) not in memo:
        m = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(m, t.requires_grad) if isinstance(t, nn.Parameter) else m
    return memo[id(t)]


class _Analyzer(fx.Interpreter):
    def __init__(self, module: nn.Module, graph: fx.Graph, parent: Optional["_Analyzer"] = None,
                 seed: Optional[list] = None):
        super().__init__(module, graph=graph, garbage_collect_values=True)
        self.values: dict[fx.Node, Any] = {}
        self.contexts: dict[fx.Node, RuleContext] = {}
        self.unused: list = []  # get_attr nodes without users
        self.seed, self.result = seed, None  # a subgraph's input values and output value
        if parent is None:
            self.axes = AxisTable()
            self.param_layouts: dict[int, tuple] = {}
            self.uses: dict[fx.Node, list] = defaultdict(list)
            self.consumers: dict[int, set] = defaultdict(set)
            self.unknown: list = []
            self.on_meta = False
        else:  # a subgraph shares the axes and parameter tables of its parent
            for name in ("axes", "param_layouts", "uses", "consumers", "unknown", "on_meta"):
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

    def from_output(self, out: Any, reason: str) -> Any:
        """A value for an op output nothing is known about: every axis pinned."""
        if isinstance(out, torch.Tensor):
            dims = tuple(self.axes.fresh(int(n), pinned=reason, dynamic=True) for n in out.shape)
            return TV(tuple(int(n) for n in out.shape), dims)
        if isinstance(out, torch.Size):
            return SV(tuple(IV(int(n)) for n in out), is_size=True)
        if isinstance(out, (tuple, list)):
            return SV(tuple(self.from_output(o, reason) for o in out))
        if isinstance(out, dict):
            return {k: self.from_output(o, reason) for k, o in out.items()}
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
            return _meta_call(super().call_function, target, args, kwargs)
        return super().call_function(target, args, kwargs)

    def call_method(self, target, args, kwargs):
        if self.on_meta:
            return _meta_call(super().call_method, target, args, kwargs)
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
            return self.from_output(out, f"graph input '{n.name}'")
        if n.op == "get_attr":
            val = self.param_value(n, n.target, out)
            if not n.users:
                self.unused.append(n)
            return val
        if n.op == "output" and self.seed is not None:
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
        except (RuleError, IndexError, TypeError, ValueError, KeyError, AttributeError) as e:
            ctx.edits.clear(), ctx.attrs.clear()
            ctx.retarget = ctx.size_read = None
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


def _to_meta_device(args: tuple, kwargs: dict) -> tuple:
    """On meta, devices named in the graph (``.to("cpu")``, factories with ``device=``) become meta."""
    def swap(a):
        if isinstance(a, torch.device) or (isinstance(a, str) and a.split(":")[0] in ("cpu", "cuda", "mps", "xpu")):
            return torch.device("meta")
        return a

    kwargs = dict(kwargs)
    if kwargs.get("device") is not None:
        kwargs["device"] = torch.device("meta")
    return tuple(swap(a) for a in args), kwargs


class _MetaRunner(fx.Interpreter):
    """Runs a subgraph (of a higher-order op) on meta tensors, devices swapped like the main graph."""

    def call_function(self, target, args, kwargs):
        return _meta_call(super().call_function, target, args, kwargs)

    def call_method(self, target, args, kwargs):
        return _meta_call(super().call_method, target, args, kwargs)


def _meta_call(call, target, args, kwargs):
    args, kwargs = _to_meta_device(args, kwargs)
    if getattr(target, "__name__", "") == "wrap_with_set_grad_enabled":  # (enabled, subgraph, *inputs)
        enabled, sub, *inputs = args
        with torch.set_grad_enabled(enabled):
            return _MetaRunner(sub).run(*inputs)
    return call(target, args, kwargs)


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
        for _, layouts, _, _ in c.edits:
            for layout in layouts if isinstance(layouts, list) else [layouts]:
                ctx.pin(layout, reason)
        if c.size_read is not None:
            ctx.pin(c.size_read, reason)
        for _, layouts in c.attrs:
            for layout in layouts if isinstance(layouts, list) else [layouts]:
                ctx.pin(layout, reason)
    return child.result


def _to_meta(x: Any) -> Any:
    return torch.empty_like(x, device="meta") if isinstance(x, torch.Tensor) else x


def _propagate(gm: fx.GraphModule, example_inputs: tuple) -> tuple[_Analyzer, str]:
    try:
        analyzer = _Analyzer(meta_clone(gm), gm.graph)
        analyzer.on_meta = True
        analyzer.run(*tree_map(_to_meta, tuple(example_inputs)))
        return analyzer, "meta"
    except ShapePropagationError as meta_error:
        analyzer = _Analyzer(gm, gm.graph)
        with torch.no_grad():
            try:
                analyzer.run(*example_inputs)
            except ShapePropagationError as e:
                raise e from None
        return analyzer, f"real tensors ({meta_error})"


def analyze_graph(gm: fx.GraphModule, example_inputs: tuple) -> AnalysisResult:
    """Annotate every node of ``gm`` with ``ChannelMeta`` and collect the groups.

    Args:
        gm: the graph to analyse; only ``node.meta`` is written.
        example_inputs: positional inputs (real tensors; only shapes and dtypes are used).

    Returns:
        An :class:`AnalysisResult` holding the axis table and the groups.
    """
    analyzer, mode = _propagate(gm, example_inputs)
    analyzer.pin_unused_attrs()
    return _finalize(gm, analyzer, mode)


def _resolve_value(axes: AxisTable, val: Any) -> Any:
    if isinstance(val, TV):
        return TensorLayout(val.shape, tuple(axes.resolve(d) for d in val.dims))
    if isinstance(val, SV):
        return tuple(_resolve_value(axes, v) for v in val.items)
    return None


def _resolve_layouts(axes: AxisTable, layouts: Any) -> Any:
    if isinstance(layouts, list):
        return tuple(_resolve_layouts(axes, x) for x in layouts)
    return axes.resolve(layouts)


def _has_tensor(val: Any) -> bool:
    if isinstance(val, TV):
        return True
    return isinstance(val, SV) and any(_has_tensor(v) for v in val.items)


def _node_meta(an: _Analyzer, n: fx.Node) -> ChannelMeta:
    axes, val = an.axes, an.values.get(n)
    params = tuple(
        ParamUse(target, tuple(axes.resolve(d) for d in an.param_layouts[key]), frozenset(an.consumers.get(key, ())))
        for target, key in an.uses.get(n, ())
    )
    common = dict(produces_tensor=_has_tensor(val), params=params,
                  resolver=(lambda: _resolve_value(axes, val)) if _has_tensor(val) else None)
    ctx = an.contexts.get(n)
    if ctx is None:
        return ChannelMeta(rule="unknown" if n.op.startswith("call") else n.op, **common)
    return ChannelMeta(
        rule=registry.rule_name(n, ctx.module),
        arg_edits=tuple(ArgEdit(p, _resolve_layouts(axes, l), k, v) for p, l, k, v in ctx.edits),
        attr_edits=tuple((name, _resolve_layouts(axes, l)) for name, l in ctx.attrs),
        retarget=ctx.retarget,
        size_read=None if ctx.size_read is None else SizeRead(axes.resolve(ctx.size_read), val.value),
        **common,
    )


def _finalize(gm: fx.GraphModule, an: _Analyzer, mode: str) -> AnalysisResult:
    members: dict = defaultdict(dict)  # atom -> {(target, dim): None}, insertion-ordered
    seen: set = set()
    for n in gm.graph.nodes:
        meta = _node_meta(an, n)
        n.meta[META_KEY] = meta
        for use in meta.params:
            if use.target in seen:
                continue
            seen.add(use.target)
            for d, layout in enumerate(use.dims):
                for atom in iter_atoms(layout):
                    members[atom.id][(use.target, d)] = None
    groups, pinned = [], {}
    for atom, refs in members.items():
        if an.axes.is_pinned(atom):
            pinned[atom] = an.axes.pin_reasons(atom)
        elif an.axes.size(atom) > 1:
            groups.append(atom)
    return AnalysisResult(gm, an.axes, groups, {a: list(r) for a, r in members.items()}, pinned, an.unknown, mode)
