"""Folded blocks: analyse a repeated block once, instantiate it at every call site.

Note [Folded blocks]
~~~~~~~~~~~~~~~~~~~~
A deep model repeats one block (a decoder layer) N times. Capturing and
analysing N copies costs N times one. Instead the top-level graph calls an
opaque op, ``fxprune::folded_block(inputs, key)``, where each block ran, and
the block is captured once as its own graph.

* :func:`summarize` analyses the block graph with *open* boundaries: its
  inputs get fresh, unpinned axes and its outputs are not pinned. The resolved
  layouts of inputs, outputs and parameters over the block's atoms, and each
  atom's size, pins and flags, are the block's summary.
* The rule of ``folded_block`` instantiates the summary in the top-level axis
  table: one new axis per block atom, the inputs unified with the call site,
  the outputs and parameter uses (under the instance's own names) expressed
  over the new axes. Cost per call site is the number of block atoms, not
  the number of block nodes.
* The rewrite prunes the instance parameters like any others, then replaces
  each ``folded_block`` node by a call to the block graph rewritten with the
  instance's keep map (:func:`expand_folded`).

Identical summaries are only sound for identical blocks: ``fxprune.capture.folding``
checks module structure and call signature before it reuses one.
"""
from __future__ import annotations

import itertools
from operator import attrgetter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils._pytree import tree_leaves, tree_unflatten

from . import registry
from .axes import Atom, AxisTable, flat_indices, iter_atoms, touches
from .context import IV, OV, SV, TV, RuleContext, RuleError

__all__ = ["BlockSummary", "FoldInfo", "FoldSite", "FOLD_KEY", "TENSOR", "summarize", "register_outputs",
           "expand_folded", "plant", "tensor_leaves"]

FOLD_KEY = "fxprune_fold"
_OUTPUTS: dict = {}  # key -> [(shape, dtype)]: what folded_block returns, for fake/meta execution
_KEYS = itertools.count()


@torch.library.custom_op("fxprune::folded_block", mutates_args=())
def folded_block(xs: list[torch.Tensor], key: int) -> list[torch.Tensor]:
    """Stands for a block captured separately; never runs (the rewrite replaces it)."""
    raise RuntimeError("fxprune::folded_block is a placeholder for a folded block; run the pruned model "
                       "fxprune.apply returns, which calls the block itself")


@folded_block.register_fake
def _folded_block_fake(xs, key):
    device = xs[0].device if xs else torch.device("cpu")
    return [torch.empty(shape, dtype=dtype, device=device) for shape, dtype in _OUTPUTS[key]]


def register_outputs(outputs: list) -> int:
    """A new key whose ``folded_block`` returns tensors of these ``(shape, dtype)``."""
    key = next(_KEYS)
    _OUTPUTS[key] = [(tuple(shape), dtype) for shape, dtype in outputs]
    return key


@dataclass(frozen=True)
class _AtomInfo:
    size: int
    pins: tuple
    dynamic: bool
    mixing: Any


@dataclass(eq=False)
class BlockSummary:
    """A block graph analysed with open boundaries, ready to instantiate at call sites."""

    gm: fx.GraphModule  # the block graph, nodes annotated over the block's atoms
    inputs: tuple  # per op input: resolved dims of the matching placeholder
    outputs: tuple  # per flat output: (shape, resolved dims)
    params: tuple  # (target, resolved dims, consumer dims, is_state) for every tensor attribute
    atoms: dict  # atom id -> _AtomInfo
    unknown: list  # (node name, why) inside the block

    def __deepcopy__(self, memo):  # shared, immutable once built
        return self


def summarize(gm: fx.GraphModule, example_inputs: tuple, op_inputs: list, state: set) -> BlockSummary:
    """Analyse a block graph with open boundaries.

    ``example_inputs`` are the graph's flat placeholder values; ``op_inputs`` maps each
    ``folded_block`` input to its placeholder index; ``state`` names the block's own
    parameters and buffers (other tensor attributes are graph constants).
    """
    from .analysis import _Analyzer, _finalize, _to_meta, meta_clone

    an = _Analyzer(meta_clone(gm), gm.graph, seed=[])
    seeds = [_open_value(an.axes, x) for x in example_inputs]
    an.seed, an.on_meta = list(seeds), True
    an.run(*(_to_meta(x) for x in example_inputs))
    an.pin_unused_attrs()
    result = _finalize(gm, an, "meta")
    axes = an.axes
    resolve_dims = lambda tv: tuple(axes.resolve(d) for d in tv.dims)  # noqa: E731
    inputs = tuple(resolve_dims(seeds[i]) for i in op_inputs)
    outs = [o for o in tree_leaves(_plain(an.result)) if not isinstance(o, OV)]  # constants: not op outputs
    if not all(isinstance(o, TV) for o in outs):
        raise RuleError("a folded block must return tensors and constants only")
    outputs = tuple((o.shape, resolve_dims(o)) for o in outs)
    params, seen = [], set()
    for n in gm.graph.nodes:
        for target, key in an.uses.get(n, ()):
            if target not in seen:
                seen.add(target)
                dims = tuple(axes.resolve(d) for d in an.param_layouts[key])
                params.append((target, dims, frozenset(an.consumers.get(key, ())), target in state))
    layouts = [*inputs, *(d for _, d in outputs), *(p[1] for p in params)]
    atoms = {}
    for dims in layouts:
        for layout in dims:
            for a in iter_atoms(layout):
                if a.id not in atoms:
                    atoms[a.id] = _AtomInfo(a.size, tuple(axes.pin_reasons(a.id)), axes.is_dynamic(a.id),
                                            axes.mixing_reason(a.id))
    return BlockSummary(gm, inputs, outputs, tuple(params), atoms, list(result.unknown))


def _open_value(axes: AxisTable, x: Any) -> Any:
    """A block input: tensors get fresh, unpinned axes (the call site decides their fate)."""
    if isinstance(x, torch.Tensor):
        return TV(tuple(int(n) for n in x.shape), tuple(axes.fresh(int(n)) for n in x.shape))
    return IV(x, literal=True) if isinstance(x, (int, float)) and not isinstance(x, bool) else OV(x)


def _plain(val: Any) -> Any:
    return list(_plain(v) for v in val.items) if isinstance(val, SV) else val


def _embed(axes: AxisTable, layout: tuple, amap: dict) -> tuple:
    """A resolved block layout as a raw top-level layout over the instance's axes."""
    segs: list = []
    for seg in layout:
        factors = [((amap[f.id],),) if isinstance(f, Atom) else _embed(axes, f, amap) for f in seg]
        segs.extend(axes.product(*factors) if factors else [()])
    return tuple(segs)


@dataclass(eq=False)
class FoldSite:
    """A ``folded_block`` call: the block instance at ``path`` and its atoms in the top-level table."""

    summary: BlockSummary
    path: str
    spec: Any
    leaves: tuple
    amap: dict = field(default_factory=dict)  # block atom -> top-level axis
    resolve: Callable = None

    def __deepcopy__(self, memo):
        return self


class TensorSlot:
    """Where a block call's flat leaves take the ``folded_block`` inputs, in order."""

    def __repr__(self) -> str:
        return "<tensor>"


TENSOR = TensorSlot()


@dataclass(frozen=True)
class FoldInfo:
    """What the capture front end knows about one ``folded_block`` key."""

    summary: BlockSummary
    spec: Any  # pytree spec of the block call's (args, kwargs)
    leaves: tuple  # the call's flat leaves: constants, and TENSOR where an op input goes

    def __deepcopy__(self, memo):
        return self


def _instantiate(ctx: RuleContext, site: FoldSite, inputs: list) -> SV:
    axes, an, summary = ctx.axes, ctx.analyzer, site.summary
    for b, info in summary.atoms.items():
        a = axes.new(info.size, dynamic=info.dynamic)
        for reason in info.pins:
            axes.pin(((a,),), f"{reason} (in folded block {site.path})")
        if info.mixing:
            axes.mark_mixing(((a,),), info.mixing)
        site.amap[b] = a
    for tv, dims in zip(inputs, summary.inputs):
        for d, layout in zip(tv.dims, dims):
            ctx.unify(d, _embed(axes, layout, site.amap))
    for target, dims, consumers, is_state in summary.params:
        embedded = tuple(_embed(axes, layout, site.amap) for layout in dims)
        if not is_state:  # a constant of the block graph: coupled to channels, never pruned
            for layout in embedded:
                ctx.pin(layout, f"constant tensor '{target}' of folded block {site.path}")
            continue
        full = f"{site.path}.{target}"
        t = an.fetch_attr(full)
        tv = an.param_value(ctx.node, full, t)
        for have, want in zip(tv.dims, embedded):
            ctx.unify(have, want)
        for d in consumers:
            an.mark_consumer(tv.source, d)
    site.resolve = lambda: {b: axes.resolve(((a,),)) for b, a in site.amap.items()}
    outs = (TV(shape, tuple(_embed(axes, layout, site.amap) for layout in dims)) for shape, dims in summary.outputs)
    return SV(tuple(outs))


@registry.register(torch.ops.fxprune.folded_block)
def folded_block_rule(ctx: RuleContext):
    """A folded block: its summary instantiated at this call site (Note [Folded blocks])."""
    folds = getattr(ctx.node.graph.owning_module, "_fxprune_folds", None)
    key = ctx.const(1, "key")
    paths = getattr(ctx.node.graph.owning_module, "_fxprune_fold_paths", {})
    if not folds or key not in folds or ctx.node.name not in paths:
        raise RuleError("no block summary for this folded_block call")
    info = folds[key]
    inputs = list(ctx.v(ctx.arg(0, "xs")).items)
    if not all(isinstance(x, TV) for x in inputs) or len(inputs) != len(info.summary.inputs):
        raise RuleError("folded_block inputs do not match the block summary")
    site = FoldSite(info.summary, paths[ctx.node.name], info.spec, info.leaves)
    ctx.node.meta[FOLD_KEY] = site
    return _instantiate(ctx, site, inputs)


# -- rewrite --------------------------------------------------------------------------------
def _instance_module(summary: BlockSummary, inst: nn.Module) -> fx.GraphModule:
    """The block graph over one instance's (already pruned) tensors."""
    root = nn.Module()
    graph = fx.Graph()
    out = graph.graph_copy(summary.gm.graph, {})
    graph.output(out).meta = dict(summary.gm.graph.output_node().meta)
    graph._codegen = summary.gm.graph._codegen  # pytree in/out specs: read-only
    for n in list(graph.nodes):  # the export's guards check the example's channel sizes
        if n.op == "call_module" and not n.users and type(summary.gm.get_submodule(n.target)).__name__ == "GuardsFn":
            graph.erase_node(n)
    for target, *_rest in summary.params:
        owner = inst if _rest[-1] else summary.gm
        plant(root, target, attrgetter(target)(owner))
    for n in graph.nodes:
        if n.op == "call_module" and not _has(root, n.target):
            root.add_module(n.target, summary.gm.get_submodule(n.target))
        elif n.op == "get_attr" and not _has(root, n.target):
            value = attrgetter(n.target)(summary.gm)
            if isinstance(value, fx.GraphModule):
                root.add_module(n.target, value)
            else:
                plant(root, n.target, value)
    gm = fx.GraphModule(root, graph, type(inst).__name__)
    return gm


def plant(root: nn.Module, name: str, t: torch.Tensor) -> None:
    """Register ``t`` under the dotted ``name``, creating plain modules on the way."""
    *prefix, leaf = name.split(".")
    owner = root
    for part in prefix:
        sub = owner._modules.get(part)
        if sub is None:
            sub = nn.Module()
            owner.add_module(part, sub)
        owner = sub
    if isinstance(t, nn.Parameter):
        owner.register_parameter(leaf, t)
    else:
        owner.register_buffer(leaf, t)


def _has(root: nn.Module, target: str) -> bool:
    try:
        attrgetter(target)(root)
        return True
    except AttributeError:
        return False


def tensor_leaves(out: Any) -> list:
    """The tensors of a block's output, in pytree order: what ``folded_block`` returned."""
    return [x for x in tree_leaves(out) if isinstance(x, torch.Tensor)]


def expand_folded(new: fx.GraphModule, sites: dict, keep: dict, rewrite: Callable) -> None:
    """Replace every ``folded_block`` node of the rewritten ``new`` by a call of its pruned block."""
    done: dict = {}
    for node in list(new.graph.nodes):
        site = sites.get(node.name)
        if site is None:
            continue
        if site.path not in done:
            atoms = site.resolve()
            keep_b = {b: flat_indices(lay, keep) for b, lay in atoms.items() if touches(lay, keep)}
            block = _instance_module(site.summary, new.get_submodule(site.path))
            pruned = rewrite(block, keep_b, tensors=False)
            parent, _, name = site.path.rpartition(".")
            setattr(new.get_submodule(parent) if parent else new, name, pruned)
            done[site.path] = pruned
        xs = iter(node.args[0])
        leaves = [next(xs) if isinstance(leaf, TensorSlot) else leaf for leaf in site.leaves]
        args, kwargs = tree_unflatten(leaves, site.spec)
        with new.graph.inserting_before(node):
            call = new.graph.call_module(site.path, tuple(args), dict(kwargs))
            flat = new.graph.call_function(tensor_leaves, (call,))
        node.replace_all_uses_with(flat)
        new.graph.erase_node(node)
    for attr in ("_fxprune_folds", "_fxprune_fold_paths"):  # capture bookkeeping: the result has no folds
        new.__dict__.pop(attr, None)
