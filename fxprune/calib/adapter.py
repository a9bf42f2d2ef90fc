"""The one place calibration reads analysis internals.

Everything the calibration package needs from a :class:`~fxprune.DependencyGraph`
goes through these few functions, built on its public view (``dg.param_use``,
:class:`~fxprune.passes.Layout`): the layout of a parameter dimension, which
dimensions are contracted, which coordinate of a group each flat index
carries, and how the rewrite selects a parameter's kept indices.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..graph import DependencyGraph, Group

__all__ = ["has_param", "dim_layout", "consumer_dims", "coords", "atom_keep", "kept_flat", "touched",
           "prune_like", "pruned_numel"]


def has_param(dg: DependencyGraph, target: str) -> bool:
    """Whether the analysis recorded ``target`` as a tensor some node reads."""
    return target in dg.param_names


def dim_layout(dg: DependencyGraph, target: str, dim: int):
    """The :class:`~fxprune.passes.Layout` of dimension ``dim`` of the parameter ``target``."""
    return dg.param_use(target).dims[dim]


def consumer_dims(dg: DependencyGraph, target: str) -> frozenset:
    """Dimensions of ``target`` contracted against an activation (its consumer dims)."""
    return dg.param_use(target).consumer_dims


def coords(dg: DependencyGraph, target: str, dim: int, group: Group) -> torch.Tensor:
    """For every flat index of ``target``'s dimension ``dim``, the coordinate of ``group`` (-1: none)."""
    return dim_layout(dg, target, dim).coordinate_map(group.atom)


def atom_keep(keep: dict) -> dict:
    """``{group: indices}`` as the rewrite's ``{atom: LongTensor}``."""
    return {g.atom: torch.as_tensor(idx, dtype=torch.long) for g, idx in keep.items()}


def kept_flat(dg: DependencyGraph, target: str, dim: int, keep: dict) -> torch.Tensor:
    """Flat indices of ``target``'s dimension ``dim`` the rewrite keeps, in their new order."""
    return dim_layout(dg, target, dim).flat_indices(atom_keep(keep))


def touched(dg: DependencyGraph, target: str, dim: int, keep: dict) -> bool:
    """Whether ``keep`` removes or reorders anything along ``target``'s dimension ``dim``."""
    return dim_layout(dg, target, dim).touches(atom_keep(keep))


def prune_like(dg: DependencyGraph, target: str, t: torch.Tensor, keep: dict, layouts: Optional[tuple] = None):
    """``t`` (shaped like the original ``target``) selected exactly as the rewrite selects ``target``.

    ``layouts`` overrides the per-dimension layouts (a new bias: the weight's output dim).
    """
    atoms = atom_keep(keep)
    dims = dg.param_use(target).dims if layouts is None else layouts
    out = t
    for d, layout in enumerate(dims):
        if layout.touches(atoms):
            out = out.index_select(d, layout.flat_indices(atoms).to(out.device))
    return out.contiguous()


def pruned_numel(dg: DependencyGraph, target: str, keep: dict) -> int:
    """Elements of ``target`` after the rewrite applies ``keep`` (no rewrite needed)."""
    atoms = atom_keep(keep)
    n = 1
    for layout in dg.param_use(target).dims:
        n *= layout.new_size(atoms)
    return n
