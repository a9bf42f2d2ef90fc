"""Removable residual branches: find them, remove them, silence them (the depth oracle).

Note [Removable branches]
~~~~~~~~~~~~~~~~~~~~~~~~~
A *branch* is an operand ``b`` of an add ``y = s + b`` such that

* ``b``'s only user is that add (a value that feeds two adds is not removable:
  removing it would change the other one);
* the skip ``s`` is an ancestor of ``b`` (the branch reads the stream it is added
  back to: ``x + f(x)``; two parallel paths ``f(x) + g(x)`` are not a residual);
* ``s`` has the add's shape (no broadcast the branch was needed for);
* the branch's *exclusive cone* (the nodes whose every use leads only into ``b``)
  reads at least one parameter: the block is something, not a scalar or a view.

Removing the branch replaces ``y`` by ``s``; dead-code elimination then drops the
cone and its parameters, and nothing else, since no value of the cone is used
outside it. That is exactly the original with ``b`` replaced by zeros
(``silence_branches``), the removal oracle of a branch: ``s + 0 == s`` in any
precision. Branches nest (a block inside a block's branch): removing the outer
one removes the inner one with it.

A *block* groups the branches of one repeated unit: the branches whose cones'
parameters share a module path up to its first integer component
(``model.layers.3`` holds a decoder layer's attention and MLP branches;
``layer1.0`` a ResNet bottleneck). A branch outside any indexed container is a
block of its own, named by its module path, or by its add node at the root.
"""
from __future__ import annotations

import copy
import operator
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.fx as fx

from .meta import META_KEY, TensorLayout

__all__ = ["Branch", "Block", "find_branches", "find_blocks", "remove_branches", "silence_branches", "ADD_TARGETS"]

ADD_TARGETS = (operator.add, operator.iadd, torch.add, torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor)
_ADD_METHODS = ("add", "add_")


@dataclass(frozen=True)
class Branch:
    """One removable branch: ``add = skip + out``; ``nodes`` its exclusive cone, ``params`` what it reads."""

    add: str
    skip: str
    out: str
    nodes: frozenset
    params: tuple
    scope: str


@dataclass(frozen=True)
class Block:
    """A unit of depth pruning: the branches of one repeated module (Note [Removable branches])."""

    name: str
    branches: tuple  # tuple[Branch, ...], in graph order

    @property
    def params(self) -> tuple:
        return tuple(dict.fromkeys(p for b in self.branches for p in b.params))


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _ADD_METHODS
    return node.op == "call_function" and node.target in ADD_TARGETS


def _shape(node) -> Optional[tuple]:
    val = node.meta.get(META_KEY) if isinstance(node, fx.Node) else None
    v = getattr(val, "value", None)
    return tuple(v.shape) if isinstance(v, TensorLayout) else None


def _ancestors(node: fx.Node) -> set:
    seen, stack = set(), [node]
    while stack:
        for n in stack.pop().all_input_nodes:
            if n not in seen:
                seen.add(n)
                stack.append(n)
    return seen


def _cone(out: fx.Node, ancestors: set, order: dict) -> set:
    """The nodes all of whose uses lead only into ``out`` (``out`` included)."""
    cone = {out}
    for n in sorted(ancestors, key=order.__getitem__, reverse=True):
        if n.op not in ("placeholder", "output") and n.users and all(u in cone for u in n.users):
            cone.add(n)
    return cone


def _param_targets(gm: fx.GraphModule, cone: set) -> tuple:
    out = []
    for n in cone:
        if n.op == "call_module":
            out += [f"{n.target}.{p}" for p, _ in gm.get_submodule(n.target).named_parameters()]
        elif n.op == "get_attr" and isinstance(_attr(gm, n.target), torch.Tensor):
            out.append(n.target)
    return tuple(sorted(out))


def _attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


def _scope(params: tuple) -> str:
    paths = [p.split(".")[:-1] for p in params]
    common = paths[0]
    for p in paths[1:]:
        k = 0
        while k < min(len(common), len(p)) and common[k] == p[k]:
            k += 1
        common = common[:k]
    for k, part in enumerate(common):
        if part.isdigit():
            return ".".join(common[:k + 1])
    return ".".join(common)


def _branch(gm: fx.GraphModule, add: fx.Node, skip, out, order: dict) -> Optional[Branch]:
    if not (isinstance(skip, fx.Node) and isinstance(out, fx.Node)) or len(out.users) != 1 or skip is out:
        return None
    shape = _shape(add)
    if shape is None or _shape(skip) != shape:
        return None
    ancestors = _ancestors(out)
    if skip not in ancestors:
        return None
    cone = _cone(out, ancestors, order)
    params = _param_targets(gm, cone)
    if not params or skip in cone:
        return None
    return Branch(add.name, skip.name, out.name, frozenset(n.name for n in cone), params, _scope(params))


def find_branches(gm: fx.GraphModule) -> list:
    """Every removable branch of an analysed ``gm`` (Note [Removable branches]), in graph order.

    Example::

        >>> import torch, torch.fx as fx
        >>> from fxprune.passes import analyze_graph
        >>> class Res(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.f = torch.nn.Linear(4, 4)
        ...     def forward(self, x):
        ...         return x + self.f(x)
        >>> gm = analyze_graph(fx.symbolic_trace(Res()), (torch.randn(2, 4),)).gm
        >>> [(b.add, b.skip, b.out, b.params) for b in find_branches(gm)]
        [('add', 'x', 'f', ('f.bias', 'f.weight'))]
    """
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    found = []
    for node in gm.graph.nodes:
        if not _is_add(node) or len(node.args) < 2 or node.kwargs.get("alpha", 1) != 1:
            continue
        a, b = node.args[0], node.args[1]
        for skip, out in ((a, b), (b, a)):
            br = _branch(gm, node, skip, out, order)
            if br is not None:
                found.append(br)
                break
    return found


def find_blocks(gm: fx.GraphModule, branches: Optional[Iterable] = None) -> list:
    """The branches of ``gm`` grouped into blocks (Note [Removable branches]), in graph order."""
    blocks: dict = {}
    for br in find_branches(gm) if branches is None else branches:
        blocks.setdefault(br.scope or br.add, []).append(br)
    return [Block(name, tuple(brs)) for name, brs in blocks.items()]


def _nodes(gm: fx.GraphModule) -> dict:
    return {n.name: n for n in gm.graph.nodes}


def remove_branches(gm: fx.GraphModule, branches: Iterable, *, inplace: bool = False) -> fx.GraphModule:
    """``gm`` with every add of ``branches`` replaced by its skip, and the dead branches (their nodes,
    submodules and parameters) deleted. Nodes are found by name, so ``gm`` may be a rewrite of the graph
    the branches were found in. ``gm`` is not modified unless ``inplace``."""
    new = gm if inplace else copy.deepcopy(gm)
    nodes = _nodes(new)
    order = {name: i for i, name in enumerate(nodes)}
    gone: dict = {}  # erased add -> the node that replaced it (a skip can be an earlier branch's add)
    for br in sorted(branches, key=lambda b: order.get(b.add, -1)):
        add = nodes.get(br.add)
        if add is None or br.add in gone:
            continue
        skip = br.skip
        while skip in gone:
            skip = gone[skip]
        add.replace_all_uses_with(nodes[skip])
        new.graph.erase_node(add)
        gone[br.add] = skip
    new.graph.eliminate_dead_code()
    new.delete_all_unused_submodules()
    _delete_unused_tensors(new)
    new.graph.lint()
    new.recompile()
    return new


def _delete_unused_tensors(gm: fx.GraphModule) -> None:
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    modules = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    names = [n for n, _ in (*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False))]
    for name in names:
        owner, _, leaf = name.rpartition(".")
        if name in used or any(owner == m or owner.startswith(m + ".") for m in modules):
            continue
        mod = gm.get_submodule(owner) if owner else gm
        if leaf in mod._parameters:
            del mod._parameters[leaf]
        elif leaf in mod._buffers:
            del mod._buffers[leaf]


def silence_branches(gm: fx.GraphModule, branches: Iterable) -> fx.GraphModule:
    """A copy of ``gm`` where every branch's output enters its add as zeros: what
    :func:`remove_branches` must compute exactly (the depth oracle)."""
    new = copy.deepcopy(gm)
    nodes = _nodes(new)
    for br in branches:
        add, out = nodes.get(br.add), nodes.get(br.out)
        if add is None or out is None:
            continue
        with new.graph.inserting_before(add):
            zero = new.graph.call_function(torch.zeros_like, (out,))
        add.replace_input_with(out, zero)
    new.graph.lint()
    new.recompile()
    return new
