"""The one place calibration reads analysis internals.

Everything the calibration package needs from a :class:`~fxprune.DependencyGraph`
beyond its public surface (``groups``, ``gm``, ``members``) goes through these
few functions: the layout of a parameter dimension, which dimensions are
contracted, which coordinate of a group each flat index carries, and how the
rewrite selects a parameter's kept indices. When the analysis exposes public
accessors for these, only this file changes.
"""
from __future__ import annotations

from typing import Optional

import torch

from fxprune.passes import flat_indices, new_size
from fxprune.passes.axes import touches

from ..graph import DependencyGraph, Group
from ..policy.importance import coordinate_map

__all__ = ["has_param", "dim_layout", "consumer_dims", "coords", "atom_keep", "kept_flat", "touched",
           "prune_like", "pruned_numel"]


def has_param(dg: DependencyGraph, target: str) -> bool:
    """Whether the analysis recorded ``target`` as a tensor some node reads."""
    return target in dg._params


def dim_layout(dg: DependencyGraph, target: str, dim: int):
    """The resolved layout of dimension ``dim`` of the parameter ``target``."""
    return dg._params[target].dims[dim]


def consumer_dims(dg: DependencyGraph, target: str) -> frozenset:
    """Dimensions of ``target`` contracted against an activation (its consumer dims)."""
    return dg._params[target].consumer_dims


def coords(dg: DependencyGraph, target: str, dim: int, group: Group) -> torch.Tensor:
    """For every flat index of ``target``'s dimension ``dim``, the coordinate of ``group`` (-1: none)."""
    return coordinate_map(dim_layout(dg, target, dim), group.atom)


def atom_keep(keep: dict) -> dict:
    """``{group: indices}`` as the rewrite's ``{atom: LongTensor}``."""
    return {g.atom: torch.as_tensor(idx, dtype=torch.long) for g, idx in keep.items()}


def kept_flat(dg: DependencyGraph, target: str, dim: int, keep: dict) -> torch.Tensor:
    """Flat indices of ``target``'s dimension ``dim`` the rewrite keeps, in their new order."""
    return flat_indices(dim_layout(dg, target, dim), atom_keep(keep))


def touched(dg: DependencyGraph, target: str, dim: int, keep: dict) -> bool:
    """Whether ``keep`` removes or reorders anything along ``target``'s dimension ``dim``."""
    return touches(dim_layout(dg, target, dim), atom_keep(keep))


def prune_like(dg: DependencyGraph, target: str, t: torch.Tensor, keep: dict, layouts: Optional[tuple] = None):
    """``t`` (shaped like the original ``target``) selected exactly as the rewrite selects ``target``.

    ``layouts`` overrides the per-dimension layouts (a new bias: the weight's output dim).
    """
    atoms = atom_keep(keep)
    dims = dg._params[target].dims if layouts is None else layouts
    out = t
    for d, layout in enumerate(dims):
        if touches(layout, atoms):
            out = out.index_select(d, flat_indices(layout, atoms).to(out.device))
    return out.contiguous()


def pruned_numel(dg: DependencyGraph, target: str, keep: dict) -> int:
    """Elements of ``target`` after the rewrite applies ``keep`` (no rewrite needed)."""
    atoms = atom_keep(keep)
    n = 1
    for layout in dg._params[target].dims:
        n *= new_size(layout, atoms)
    return n
