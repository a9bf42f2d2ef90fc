"""The validate step between analysis and rewrite: is a keep map one the rewrite can honour?

Where the passes are entered (``rewrite_graph``, ``PruneRewritePass``, and
``fxprune.apply`` through :func:`keep_indices`), every keep map is checked
against the analysed graph before any tensor is indexed:

* it names atoms the graph's parameters carry, none of them pinned;
* each atom's indices are a non-empty 1-D collection of distinct integers in
  ``range(size)``.

Otherwise the rewrite would silently duplicate channels (a repeated index) or
fail deep inside ``index_select``. Errors are :class:`InvalidKeepError`
(a ``ValueError``) naming the atom or group and the fix.

    >>> from fxprune.passes import Atom
    >>> validate_keep({3: [2, 0]}, {3: Atom(3, 4)})
    {3: tensor([2, 0])}
    >>> validate_keep({3: [2, 2]}, {3: Atom(3, 4)})
    Traceback (most recent call last):
    ...
    fxprune.passes.errors.InvalidKeepError: keep-indices for atom 3 repeat [2]; pass distinct integers in range(4) for atom 3, in the order to keep them
"""
from __future__ import annotations

import numbers
from typing import Any, Mapping, Optional

import torch
import torch.fx as fx

from .errors import InvalidKeepError
from .layout import Atom
from .meta import get_channel_meta

__all__ = ["graph_atoms", "validate_keep", "keep_indices"]


def graph_atoms(gm: fx.GraphModule) -> dict:
    """``{atom id: Atom}`` for every atom a parameter or buffer of the analysed ``gm`` carries."""
    atoms: dict = {}
    for node in gm.graph.nodes:
        for use in get_channel_meta(node).params:
            for layout in use.dims:
                for a in layout.atoms():
                    atoms.setdefault(a.id, a)
    return atoms


def keep_indices(keep: Any, size: int, name: str) -> torch.Tensor:
    """``keep`` as a 1-D LongTensor on the CPU, checked: distinct integers in ``range(size)``, at least one.

    ``name`` names the group in the error (``"G3"``, ``"atom 17"``).
    """
    fix = f"pass distinct integers in range({size}) for {name}, in the order to keep them"
    if isinstance(keep, torch.Tensor):
        if keep.dtype.is_floating_point or keep.dtype.is_complex or keep.dtype == torch.bool or keep.dim() != 1:
            raise InvalidKeepError(f"keep-indices for {name} must be a 1-D integer tensor, got "
                                   f"{keep.dim()}-D {keep.dtype}; {fix}")
        idx = keep.to(torch.long).cpu()
    else:
        items = list(keep.tolist() if hasattr(keep, "tolist") and hasattr(keep, "dtype") else keep)  # numpy
        if not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in items):
            raise InvalidKeepError(f"keep-indices for {name} must be integers; {fix}")
        idx = torch.tensor([int(i) for i in items], dtype=torch.long)
    if idx.numel() == 0:
        raise InvalidKeepError(f"keep-indices for {name} are empty: a group keeps at least one coordinate; {fix}")
    bad = idx[(idx < 0) | (idx >= size)]
    if bad.numel():
        raise InvalidKeepError(f"keep-indices {bad.tolist()[:5]} for {name} are out of range (size {size}); {fix}")
    values, counts = torch.unique(idx, return_counts=True)
    if values.numel() != idx.numel():
        raise InvalidKeepError(f"keep-indices for {name} repeat {values[counts > 1].tolist()[:5]}; {fix}")
    return idx


def validate_keep(keep: Mapping, atoms: Mapping[int, Atom], names: Optional[Mapping[int, str]] = None) -> dict:
    """Check a keep map ``{atom id: indices}`` against the atoms of a graph (:func:`graph_atoms`).

    Returns ``{atom id: 1-D LongTensor}``; raises :class:`InvalidKeepError`.
    """
    names = names or {}
    unknown = [a for a in keep if isinstance(a, bool) or not isinstance(a, int) or a not in atoms]
    if unknown:
        groups = [a for a, atom in atoms.items() if not atom.pinned and atom.size > 1]
        raise InvalidKeepError(
            f"keep names atoms {unknown[:5]} that are not groups of this graph (groups: {groups[:10]}"
            f"{' ...' if len(groups) > 10 else ''}); key a keep map by the atom ids in "
            "AnalysisResult.group_atoms of this exact graph")
    pinned = [a for a in keep if atoms[a].pinned]
    if pinned:
        raise InvalidKeepError(
            f"keep names atoms {pinned[:5]} that the analysis pinned (a graph input or output, or an op "
            "without a rule, touches them: AnalysisResult.pinned says which); pruning them would change what "
            "the model computes. Leave them out of the keep map")
    return {a: keep_indices(k, atoms[a].size, names.get(a, f"atom {a}")) for a, k in keep.items()}
