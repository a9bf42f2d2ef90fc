"""Per-coordinate importance of a group, from the parameter slices it owns."""
from __future__ import annotations

import torch

from fxprune.passes import Atom

from .graph import DependencyGraph, Group

__all__ = ["coordinate_map", "magnitude", "keep_top"]


def _factor_size(f) -> int:
    if isinstance(f, Atom):
        return f.size
    return sum(_seg_size(s) for s in f)


def _seg_size(seg) -> int:
    n = 1
    for f in seg:
        n *= _factor_size(f)
    return n


def coordinate_map(layout, atom: int) -> torch.Tensor:
    """For each flat index of a dimension, the coordinate of ``atom`` it belongs to (-1: none)."""
    pieces = []
    for seg in layout:
        total = _seg_size(seg)
        idx, stride = torch.arange(total), total
        coord = torch.full((total,), -1, dtype=torch.long)
        for f in seg:
            size = _factor_size(f)
            stride //= size
            local = (idx // stride) % size
            if isinstance(f, Atom):
                if f.id == atom:
                    coord = local
            else:
                sub = coordinate_map(f, atom)
                if (sub >= 0).any():
                    coord = sub[local]
        pieces.append(coord)
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


def _fetch(root, target: str):
    for part in target.split("."):
        root = getattr(root, part)
    return root


@torch.no_grad()
def magnitude(dg: DependencyGraph, group: Group, p: float = 2.0) -> torch.Tensor:
    """The L-p norm of every coordinate of ``group`` over all its member slices."""
    scores = torch.zeros(group.size, dtype=torch.float64)
    for target, d in group.members:
        t = _fetch(dg.gm, target)
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            continue
        coords = coordinate_map(dg._params[target].dims[d], group.atom)
        flat = t.detach().double().transpose(0, d).reshape(t.shape[d], -1)
        per_index = flat.abs().pow(p).sum(1)
        mask = coords >= 0
        scores.index_add_(0, coords[mask], per_index[mask])
    return scores.pow(1.0 / p)


def keep_top(dg: DependencyGraph, ratio: float, p: float = 2.0) -> dict:
    """Keep the ``1 - ratio`` largest-magnitude coordinates of every group, in their original order."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}: it is the fraction of each group to remove")
    keep = {}
    for g in dg.groups:
        n = max(1, g.size - int(round(g.size * ratio)))
        keep[g] = torch.sort(torch.topk(magnitude(dg, g, p), n).indices).values
    return keep
