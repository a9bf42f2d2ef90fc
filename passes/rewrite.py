"""The rewrite pass: emit the pruned GraphModule.

Note [Rewrite]
~~~~~~~~~~~~~~
Input: a graph annotated by the analysis pass and ``keep``, a map from atom
id to the kept coordinates (a 1-D LongTensor, in output order). Reads only
``ChannelMeta``:

* every parameter/buffer dim is ``index_select``-ed with the flat indices
  its layout expands to (segments in order, products row-major);
* module attributes and size literals in the graph get the new sizes of the
  layouts they were tied to; a ``chunk`` becomes a ``split``;
* a size read at run time of a pruned dimension is frozen at its original
  value, so arithmetic on it computes what the original computed;
* a folded block's call site (``ChannelMeta.fold``, a ``FoldSite``) becomes
  a call of the block graph, rewritten with that instance's keep map.

The keep map is validated first (passes/validate.py). The input module is
never modified: the result is a deep copy whose tensors are the pruned ones.
"""
from __future__ import annotations

import copy
import math
import operator
from operator import attrgetter
from typing import Any, Mapping

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.node import map_aggregate
from torch.utils._pytree import tree_leaves, tree_unflatten

from .folds import FOLDS_KEY, BlockSummary, FoldSite, TensorSlot, fold_registry
from .meta import META_KEY, ArgEdit, get_channel_meta
from .validate import graph_atoms, validate_keep

__all__ = ["rewrite_graph", "runnable", "plant", "tensor_leaves", "cut_tensor"]


@torch.no_grad()
def cut_tensor(t: torch.Tensor, dims: tuple, keep: Mapping) -> torch.Tensor:
    """``t`` with every dim whose layout ``keep`` touches ``index_select``-ed by the layout's flat
    indices (contiguous), or ``t`` itself when ``keep`` touches no dim. The one place a tensor is
    cut: the rewrite pass and the streamed checkpoint rewrite (``fxprune/hf/engine.py``) call it.

    Example::

        >>> import torch
        >>> from fxprune.passes import Atom, Layout, cut_tensor
        >>> rows, cols = Layout(((Atom(0, 4),),)), Layout(((Atom(1, 2),),))
        >>> cut_tensor(torch.arange(8.).view(4, 2), (rows, cols), {0: torch.tensor([3, 1])})
        tensor([[6., 7.],
                [2., 3.]])
    """
    out = t
    for d, layout in enumerate(dims):
        if layout.touches(keep):
            out = out.index_select(d, layout.flat_indices(keep).to(out.device))
    return t if out is t else out.contiguous()


@torch.no_grad()
def _pruned_tensor(t: torch.Tensor, dims: tuple, keep: dict) -> torch.Tensor:
    src = t.detach()
    out = cut_tensor(src, dims, keep)
    out = out.clone() if out is src else out  # never share storage with the input model
    if isinstance(t, nn.Parameter):
        return nn.Parameter(out, requires_grad=t.requires_grad)
    return out


def _edit_value(edit: ArgEdit, old: Any, keep: dict) -> Any:
    if edit.kind == "constant":
        return edit.value
    sizes = [layout.new_size(keep) for layout in edit.layouts]
    if edit.kind == "sizes":
        return sizes
    if edit.kind == "stop":  # an end offset: everything before it, kept
        return sum(sizes)
    if edit.kind == "slice":
        start, stop = sizes[0], sizes[0] + sizes[1]
        return slice(None if old.start is None else start, None if old.stop is None else stop, old.step)
    return sizes[0]


def _set_in(obj: Any, rest: tuple, fn) -> Any:
    if not rest:
        return fn(obj)
    seq = list(obj)
    seq[rest[0]] = _set_in(seq[rest[0]], rest[1:], fn)
    return tuple(seq) if isinstance(obj, tuple) else seq


def _apply_edit(node: fx.Node, edit: ArgEdit, keep: dict) -> None:
    args, kwargs = list(node.args), dict(node.kwargs)
    where, key, rest = edit.path[0], edit.path[1], edit.path[2:]
    container = args if where == "args" else kwargs
    old = container.get(key) if isinstance(container, dict) else container[key]

    def value(old: Any) -> Any:
        if edit.kind == "size" and isinstance(old, fx.Node):  # computed at run time: scale it
            layout = edit.layouts[0]
            return _scaled(node, old, layout.size, layout.new_size(keep))
        return _edit_value(edit, old, keep)

    container[key] = _set_in(old, rest, value)
    node.args, node.kwargs = tuple(args), kwargs


def _scaled(before: fx.Node, size: fx.Node, old: int, new: int) -> Any:
    """``size // a * b`` with a/b = old/new in lowest terms, inserted before ``before``: a size
    computed at run time keeps its run-time factors (Note [Run-time sizes] in passes/rules/common.py)."""
    g = math.gcd(old, new)
    a, b = old // g, new // g
    if a == b:
        return size
    with before.graph.inserting_before(before):
        out = before.graph.call_function(operator.floordiv, (size, a)) if a != 1 else size
        return before.graph.call_function(operator.mul, (out, b)) if b != 1 else out


def _rewrite_node(new: fx.GraphModule, node: fx.Node, meta, keep: dict) -> None:
    edits = [e for e in meta.arg_edits if any(layout.touches(keep) for layout in e.layouts)]
    for edit in edits:
        _apply_edit(node, edit, keep)
    if edits and meta.retarget is not None:
        node.target = meta.retarget
    if node.op == "call_module":
        module = new.get_submodule(node.target)
        for edit in meta.attr_edits:
            owner, _, attr = edit.name.rpartition(".")
            owner = module.get_submodule(owner) if owner else module
            sizes = [layout.new_size(keep) for layout in edit.layouts]
            setattr(owner, attr, type(getattr(owner, attr))(sizes) if edit.many else sizes[0])
    read = meta.size_read
    if read is not None and read.layout.touches(keep):
        _freeze(node, _original_size(node, read, keep))


def _original_size(node: fx.Node, read, keep: dict) -> Any:
    """What a size read of a pruned dimension read in the original: its value where the dimension
    is static, ``read // b * a`` where it also holds run-time axes (Note [Run-time sizes])."""
    if not read.dynamic:
        return read.value
    return _scaled(node.next, node, read.layout.new_size(keep), read.layout.size)


def _freeze(node: fx.Node, original: Any) -> None:
    """Replace a run-time size read of a pruned dimension by its original value (or expression)."""
    made, walk = set(), original
    while isinstance(walk, fx.Node) and walk is not node:  # the expression's own nodes read ``node``
        made.add(walk)
        walk = walk.args[0]
    for user in list(node.users):
        if user in made:
            continue
        user.args = map_aggregate(user.args, lambda a: original if a is node else a)
        user.kwargs = map_aggregate(user.kwargs, lambda a: original if a is node else a)


def _python_valued(node: fx.Node, meta) -> bool:
    """Nodes computing Python values (sizes and arithmetic on them): free of side effects."""
    return node.op in ("call_function", "call_method") and meta.rule != "unknown" and not meta.produces_tensor


def _erase_dead_size_arithmetic(graph: fx.Graph, candidates: set) -> None:
    """Erase size arithmetic whose only users were size arguments we replaced."""
    for node in reversed(list(graph.nodes)):
        if node.name in candidates and not node.users:
            graph.erase_node(node)


def rewrite_graph(gm: fx.GraphModule, keep: Mapping) -> fx.GraphModule:
    """Emit a pruned copy of an analysed ``gm``.

    Args:
        gm: a GraphModule annotated by the channel analysis pass.
        keep: atom id -> kept coordinates, in order (a 1-D integer tensor or a list of ints);
            atoms not named keep all their coordinates. Validated first (passes/validate.py):
            raises ``InvalidKeepError`` for unknown or pinned atoms and for empty, repeated
            or out-of-range indices.

    Returns:
        A new ``fx.GraphModule``; ``gm`` is not modified.

    Example::

        >>> import torch, torch.fx as fx
        >>> from fxprune.passes import analyze_graph
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> result = analyze_graph(fx.symbolic_trace(net), (torch.randn(1, 4),))
        >>> rewrite_graph(result.gm, {result.group_atoms[0]: [0, 2, 5]}).get_submodule("2")
        Linear(in_features=3, out_features=2, bias=True)
    """
    return _rewrite(gm, validate_keep(keep, graph_atoms(gm)), tensors=True)


def _rewrite(gm: fx.GraphModule, keep: dict, tensors: bool) -> fx.GraphModule:
    """The rewrite of a validated ``keep``. ``tensors=False`` for a folded block's instance, whose
    tensors are pruned already and owned by the caller: the result shares them."""
    memo: dict = {} if tensors else {id(t): t for t in (*gm.parameters(), *gm.buffers())}
    for node in gm.graph.nodes if tensors else ():
        for use in get_channel_meta(node).params:
            t = attrgetter(use.target)(gm)
            if id(t) not in memo:
                memo[id(t)] = _pruned_tensor(t, use.dims, keep)
    stashed = gm.meta.pop(META_KEY, None)  # the analysis result of ChannelAnalysisPass: not copied
    try:
        new = copy.deepcopy(gm, memo)
    finally:
        if stashed is not None:
            gm.meta[META_KEY] = stashed
    old_nodes = {n.name: n for n in gm.graph.nodes}
    candidates, sites = set(), {}
    for node in list(new.graph.nodes):
        meta = get_channel_meta(old_nodes[node.name])
        if node.users and _python_valued(node, meta):
            candidates.add(node.name)
        if meta.fold is not None:
            sites[node.name] = meta.fold
        _rewrite_node(new, node, meta, keep)
    _erase_dead_size_arithmetic(new.graph, candidates)
    if sites:
        _expand_folded(new, sites, keep)
    for node in new.graph.nodes:
        node.meta.pop(META_KEY, None)
    new.graph.lint()
    new.recompile()
    return new


def runnable(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` itself, or where it calls folded blocks (Note [Folded blocks]) an unpruned copy
    that calls the blocks' graphs: the graph as the model computes it."""
    if fold_registry(gm) is not None:
        return rewrite_graph(gm, {})
    return gm


# -- folded blocks (Note [Folded blocks] in passes/blocks.py) --------------------------------
def _expand_folded(new: fx.GraphModule, sites: dict, keep: dict) -> None:
    """Replace every ``folded_block`` node of the rewritten ``new`` by a call of its pruned block."""
    done: set = set()
    for node in list(new.graph.nodes):
        site = sites.get(node.name)
        if site is None:
            continue
        if site.path not in done:
            _install_block(new, site, keep)
            done.add(site.path)
        xs = iter(node.args[0])
        leaves = [next(xs) if isinstance(leaf, TensorSlot) else leaf for leaf in site.info.leaves]
        args, kwargs = tree_unflatten(leaves, site.info.spec)
        with new.graph.inserting_before(node):
            call = new.graph.call_module(site.path, tuple(args), dict(kwargs))
            flat = new.graph.call_function(tensor_leaves, (call,))
        node.replace_all_uses_with(flat)
        new.graph.erase_node(node)
    new.meta.pop(FOLDS_KEY, None)  # the result calls the blocks: it has no folds


def _install_block(new: fx.GraphModule, site: FoldSite, keep: dict) -> None:
    """The block graph, rewritten with this instance's keep map, installed at the block's path."""
    keep_b = {b: layout.flat_indices(keep) for b, layout in site.atoms if layout.touches(keep)}
    block = _instance_module(site.info.summary, new.get_submodule(site.path))
    pruned = _rewrite(block, keep_b, tensors=False)
    parent, _, name = site.path.rpartition(".")
    setattr(new.get_submodule(parent) if parent else new, name, pruned)


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
    for p in summary.params:
        plant(root, p.target, attrgetter(p.target)(inst if p.is_state else summary.gm))
    for n in graph.nodes:
        if n.op == "call_module" and not _has(root, n.target):
            root.add_module(n.target, summary.gm.get_submodule(n.target))
        elif n.op == "get_attr" and not _has(root, n.target):
            value = attrgetter(n.target)(summary.gm)
            if isinstance(value, fx.GraphModule):
                root.add_module(n.target, value)
            else:
                plant(root, n.target, value)
    return fx.GraphModule(root, graph, type(inst).__name__)


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
