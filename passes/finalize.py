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


def resolve_value(axes: AxisTable, val: Any) -> Any:
    """A TensorLayout for a tensor value, a tuple of them for a tuple, else None."""
    if isinstance(val, TV):
        return TensorLayout(val.shape, tuple(axes.resolve(d) for d in val.dims))
    if isinstance(val, SV):
        return tuple(resolve_value(axes, v) for v in val.items)
    return None


def _has_tensor(val: Any) -> bool:
    if isinstance(val, TV):
        return True
    return isinstance(val, SV) and any(_has_tensor(v) for v in val.items)


def _resolve_all(axes: AxisTable, layouts: tuple) -> tuple:
    return tuple(axes.resolve(layout) for layout in layouts)


def _fold_site(axes: AxisTable, fold: tuple) -> FoldSite:
    info, path, amap = fold
    return FoldSite(info, path, tuple((b, axes.resolve(((a,),))) for b, a in amap.items()))


def _node_meta(an, n: fx.Node) -> ChannelMeta:
    axes, val = an.axes, an.values.get(n)
    params = tuple(
        ParamUse(target, _resolve_all(axes, an.param_layouts[key]), frozenset(an.consumers.get(key, ())))
        for target, key in an.uses.get(n, ())
    )
    common = dict(produces_tensor=_has_tensor(val), params=params,
                  resolver=(lambda: resolve_value(axes, val)) if _has_tensor(val) else None)
    ctx = an.contexts.get(n)
    if ctx is None:
        return ChannelMeta(rule="unknown" if n.op.startswith("call") else n.op, **common)
    return ChannelMeta(
        rule=registry.rule_name(n, ctx.module),
        arg_edits=tuple(ArgEdit(p, _resolve_all(axes, ls), k, v) for p, ls, k, v in ctx.edits),
        attr_edits=tuple(AttrEdit(name, _resolve_all(axes, ls), many) for name, ls, many in ctx.attrs),
        retarget=ctx.retarget,
        size_read=None if ctx.size_read is None else SizeRead(axes.resolve(ctx.size_read), val.value),
        fold=None if ctx.fold is None else _fold_site(axes, ctx.fold),
        **common,
    )


def finalize(gm: fx.GraphModule, an) -> tuple:
    """Write every node's ChannelMeta; return ``(group atoms, members, pinned)``.

    ``members`` maps every atom read by a parameter to its ``(target, dim)`` pairs;
    ``pinned`` maps those that are pinned to the reasons.
    """
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
                for atom in layout.atoms():
                    members[atom.id][(use.target, d)] = None
    groups, pinned = [], {}
    for atom in members:
        if an.axes.is_pinned(atom):
            pinned[atom] = an.axes.pin_reasons(atom)
        elif an.axes.size(atom) > 1:
            groups.append(atom)
    return groups, {a: list(r) for a, r in members.items()}, pinned
