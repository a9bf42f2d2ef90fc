"""Fold metadata: frozen records of folded blocks (Note [Folded blocks] in passes/blocks.py).

* ``gm.meta[FOLDS_KEY]``: a :class:`FoldRegistry`, written by the capture
  front end: every distinct block's :class:`FoldInfo` by key, and the block
  path each ``folded_block`` call site stands for.
* ``ChannelMeta.fold`` of a call site: a :class:`FoldSite`, written by the
  analysis: the block and the layout, in the top-level graph, of every atom of
  the block. The rewrite expands the site from it alone.

All records are frozen and hold no callables; the block graph inside a
:class:`BlockSummary` is shared, never copied.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch.fx as fx

from . import keys

__all__ = ["FOLDS_KEY", "BlockAtom", "BlockParam", "BlockSummary", "FoldInfo", "FoldRegistry", "FoldSite",
           "TensorSlot", "TENSOR", "fold_registry"]

FOLDS_KEY = keys.FOLDS


class _Shared:
    """Immutable once built: a deep copy of the graph module holding it shares it."""

    def __deepcopy__(self, memo):
        return self


@dataclass(frozen=True)
class BlockAtom:
    """What the top-level table needs to know about one atom of a block."""

    size: int
    pins: tuple  # the reasons it is pinned inside the block
    dynamic: bool
    mixing: Optional[str]


@dataclass(frozen=True)
class BlockParam:
    """A tensor attribute of the block graph: the instance's own (``is_state``) or a graph constant."""

    target: str
    dims: tuple  # tuple[Layout, ...] over the block's atoms
    consumer_dims: frozenset
    is_state: bool


@dataclass(frozen=True, eq=False)
class BlockSummary(_Shared):
    """A block graph analysed with open boundaries, ready to instantiate at call sites."""

    gm: fx.GraphModule  # the block graph, nodes annotated over the block's atoms
    inputs: tuple  # per folded_block input: the dims (Layouts) of the matching placeholder
    outputs: tuple  # per folded_block output: (shape, dims)
    params: tuple  # tuple[BlockParam, ...]
    atoms: tuple  # ((block atom id, BlockAtom), ...)
    unknown: tuple  # ((node name, why), ...) inside the block


class TensorSlot:
    """Where a block call's flat leaves take the ``folded_block`` inputs, in order."""

    def __repr__(self) -> str:
        return "<tensor>"

    def __deepcopy__(self, memo):
        return self


TENSOR = TensorSlot()


@dataclass(frozen=True, eq=False)
class FoldInfo(_Shared):
    """What the capture front end knows about one ``folded_block`` key."""

    summary: BlockSummary
    spec: Any  # pytree spec of the block call's (args, kwargs)
    leaves: tuple  # the call's flat leaves: constants, and TENSOR where an op input goes


@dataclass(frozen=True, eq=False)
class FoldRegistry(_Shared):
    """``gm.meta[FOLDS_KEY]``: the folded blocks of a captured graph."""

    blocks: tuple  # ((key, FoldInfo), ...)
    sites: tuple  # ((folded_block node name, block path), ...)
    _index: dict = field(init=False, repr=False, compare=False)  # lookups in O(1) for deep models

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {"blocks": dict(self.blocks), "sites": dict(self.sites)})

    def info(self, key: int) -> Optional[FoldInfo]:
        return self._index["blocks"].get(key)

    def path(self, node_name: str) -> Optional[str]:
        return self._index["sites"].get(node_name)


@dataclass(frozen=True, eq=False)
class FoldSite(_Shared):
    """A ``folded_block`` call site: the block instance at ``path``, its block atoms in this graph."""

    info: FoldInfo
    path: str
    atoms: tuple  # ((block atom id, Layout in the top-level graph), ...)


def fold_registry(gm: fx.GraphModule) -> Optional[FoldRegistry]:
    """The fold registry of a captured graph, or None where nothing was folded."""
    return getattr(gm, "meta", {}).get(FOLDS_KEY)
