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
  value, so arithmetic on it computes what the original computed.

The input module is never modified: the result is a deep copy whose tensors
are the pruned ones.
"""
from __future__ import annotations

import copy
from operator import attrgetter
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.node import map_aggregate

from .axes import flat_indices, new_size, touches
from .blocks import FOLD_KEY, expand_folded
from .meta import META_KEY, ArgEdit, get_channel_meta

__all__ = ["rewrite_graph", "runnable"]


@torch.no_grad()
def _pruned_tensor(t: torch.Tensor, dims: tuple, keep: dict) -> torch.Tensor:
    out, selected = t.detach(), False
    for d, layout in enumerate(dims):
        if touches(layout, keep):
            out, selected = out.index_select(d, flat_indices(layout, keep).to(out.device)), True
    out = out.contiguous() if selected else out.clone()  # never share storage with the input model
    if isinstance(t, nn.Parameter):
        return nn.Parameter(out, requires_grad=t.requires_grad)
    return out


def _edit_value(edit: ArgEdit, old: Any, keep: dict) -> Any:
    if edit.kind == "constant":
        return edit.value
    if edit.kind == "sizes":
        return [new_size(layout, keep) for layout in edit.layouts]
    if edit.kind == "stop":  # an end offset: everything before it, kept
        return sum(new_size(layout, keep) for layout in edit.layouts)
    if edit.kind == "slice":
        pre, mid = edit.layouts
        start = new_size(pre, keep)
        stop = start + new_size(mid, keep)
        return slice(None if old.start is None else start, None if old.stop is None else stop, old.step)
    return new_size(edit.layouts, keep)


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
    container[key] = _set_in(old, rest, lambda old: _edit_value(edit, old, keep))
    node.args, node.kwargs = tuple(args), kwargs


def _edit_layouts(edit: ArgEdit):
    return edit.layouts if edit.kind in ("sizes", "slice", "stop") else (edit.layouts,)


def _rewrite_node(new: fx.GraphModule, node: fx.Node, meta, keep: dict) -> None:
    edits = [e for e in meta.arg_edits if any(touches(l, keep) for l in _edit_layouts(e))]
    for edit in edits:
        _apply_edit(node, edit, keep)
    if edits and meta.retarget is not None:
        node.target = meta.retarget
    if node.op == "call_module":
        module = new.get_submodule(node.target)
        for name, layouts in meta.attr_edits:
            owner, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner) if owner else module
            old = getattr(owner, attr)  # a sequence attribute (normalized_shape) has one layout per entry;
            if isinstance(old, (tuple, list)):  # a layout's shape cannot tell: factors nest layouts
                value = type(old)(new_size(l, keep) for l in layouts)
            else:
                value = new_size(layouts, keep)
            setattr(owner, attr, value)
    if meta.size_read is not None and touches(meta.size_read.layout, keep):
        _freeze(node, meta.size_read.value)


def _freeze(node: fx.Node, original: int) -> None:
    """Replace a run-time size read of a pruned dimension by its original value."""
    for user in list(node.users):
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


def rewrite_graph(gm: fx.GraphModule, keep: dict, *, tensors: bool = True) -> fx.GraphModule:
    """Emit a pruned copy of an analysed ``gm``.

    Args:
        gm: a GraphModule annotated by the channel analysis pass.
        keep: atom id -> 1-D LongTensor of kept coordinates, in order.
            Atoms not named keep all their coordinates.
        tensors: prune the parameters and buffers the graph reads. False where they
            already are (a folded block's instance, see Note [Folded blocks]): the
            result then shares ``gm``'s tensors.

    Returns:
        A new ``fx.GraphModule``; ``gm`` is not modified.
    """
    # tensors=False: they are pruned already and owned by the caller; share them, do not copy
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
    candidates = set()
    for node in list(new.graph.nodes):
        meta = get_channel_meta(old_nodes[node.name])
        if node.users and _python_valued(node, meta):
            candidates.add(node.name)
        _rewrite_node(new, node, meta, keep)
    _erase_dead_size_arithmetic(new.graph, candidates)
    sites = {n.name: n.meta[FOLD_KEY] for n in gm.graph.nodes if FOLD_KEY in n.meta}
    if sites:
        expand_folded(new, sites, keep, rewrite_graph)
    for node in new.graph.nodes:
        node.meta.pop(META_KEY, None)
    new.graph.lint()
    new.recompile()
    return new


def runnable(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` itself, or where it calls folded blocks (Note [Folded blocks]) an unpruned copy
    that calls the blocks' graphs: the graph as the model computes it."""
    if any(FOLD_KEY in n.meta for n in gm.graph.nodes):
        return rewrite_graph(gm, {})
    return gm
