"""The last step of the analysis: freeze what the rules said into node metadata, collect the groups.

After the graph has run, the axis table is final. Every node gets a frozen
``ChannelMeta`` under ``node.meta["fxprune"]``: raw layouts are resolved into
:class:`~fxprune.passes.layout.Layout`s, and each rule's rewrite instructions
become ``ArgEdit``/``AttrEdit``/``SizeRead`` records (and a ``FoldSite`` at a
folded block's call site). The unpinned atoms read by parameters are the groups.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch.fx as fx

from . import registry
from .axes import AxisTable
from .context import SV, TV
from .folds import FoldSite
from .meta import META_KEY, ArgEdit, AttrEdit, ChannelMeta, ParamUse, SizeRead, TensorLayout

__all__ = ["finalize", "resolve_value"]


class _Resolver:
    """``AxisTable.resolve`` once per distinct raw layout: the analysis is over, the table is final."""

    def __init__(self, axes: AxisTable):
        self.axes, self.memo = axes, {}

    def __call__(self, raw: tuple):
        try:
            lay = self.memo.get(raw)
        except TypeError:  # a rule built a layout from lists: resolve it without the memo
            return self.axes.resolve(raw)
        if lay is None:
            lay = self.memo[raw] = self.axes.resolve(raw)
        return lay

    def all(self, raws: tuple) -> tuple:
        return tuple(self(raw) for raw in raws)


def resolve_value(resolve: Any, val: Any) -> Any:
    """A TensorLayout for a tensor value, a tuple of them for a tuple, else None.

    ``resolve`` is an ``AxisTable`` or the finalize step's memoising resolver.
    """
    if isinstance(resolve, AxisTable):
        resolve = _Resolver(resolve)
    if isinstance(val, TV):
        return TensorLayout(val.shape, resolve.all(val.dims))
    if isinstance(val, SV):
        return tuple(resolve_value(resolve, v) for v in val.items)
    return None


def _has_tensor(val: Any) -> bool:
    if isinstance(val, TV):
        return True
    return isinstance(val, SV) and any(_has_tensor(v) for v in val.items)


def _has_dynamic(axes, raw: tuple) -> bool:
    return any(axes.is_dynamic(a) for a in axes.atoms(raw))


def _fold_site(resolve: _Resolver, fold: tuple) -> FoldSite:
    info, path, amap = fold
    return FoldSite(info, path, tuple((b, resolve(((a,),))) for b, a in amap.items()))


def _node_meta(an, n: fx.Node, resolve: _Resolver) -> ChannelMeta:
    val = an.values.get(n)
    params = tuple(
        ParamUse(target, resolve.all(an.param_layouts[key]), frozenset(an.consumers.get(key, ())))
        for target, key in an.uses.get(n, ())
    )
    common = dict(produces_tensor=_has_tensor(val), params=params, value=resolve_value(resolve, val))
    ctx = an.contexts.get(n)
    if ctx is None:
        return ChannelMeta(rule="unknown" if n.op.startswith("call") else n.op, **common)
    return ChannelMeta(
        rule=registry.rule_name(n, ctx.module),
        arg_edits=tuple(ArgEdit(p, resolve.all(ls), k, v) for p, ls, k, v in ctx.edits),
        attr_edits=tuple(AttrEdit(name, resolve.all(ls), many) for name, ls, many in ctx.attrs),
        retarget=ctx.retarget,
        size_read=None if ctx.size_read is None else SizeRead(resolve(ctx.size_read), val.value,
                                                              _has_dynamic(an.axes, ctx.size_read)),
        fold=None if ctx.fold is None else _fold_site(resolve, ctx.fold),
        **common,
    )


def finalize(gm: fx.GraphModule, an) -> tuple:
    """Write every node's ChannelMeta; return ``(group atoms, members, pinned)``.

    ``members`` maps every atom read by a parameter to its ``(target, dim)`` pairs;
    ``pinned`` maps those that are pinned to the reasons.
    """
    members: dict = defaultdict(dict)  # atom -> {(target, dim): None}, insertion-ordered
    seen: set = set()
    resolve = _Resolver(an.axes)
    for n in gm.graph.nodes:
        meta = _node_meta(an, n, resolve)
        n.meta[META_KEY] = meta
        for use in meta.params:
            if use.target in seen:
                continue
            seen.add(use.target)
            for d, layout in enumerate(use.dims):
                for atom in layout.atoms():
                    members[atom.id][(use.target, d)] = None
    groups, pinned = [], {}
    for atom in members:
        if an.axes.is_pinned(atom):
            pinned[atom] = an.axes.pin_reasons(atom)
        elif an.axes.size(atom) > 1:
            groups.append(atom)
    return groups, {a: list(r) for a, r in members.items()}, pinned
