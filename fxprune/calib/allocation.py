"""Allocation: how much each group's coordinate weighs in a global budget, and what was allocated.

Note [Global allocation]
~~~~~~~~~~~~~~~~~~~~~~~~
``scope="global"`` ranks the normalised scores of every coordinate of every
prunable group together and removes from the bottom (``select_global``): each
layer's ratio follows from one global threshold, as FLAP's adaptive structure
search. With ``budget="params"`` the budget is the share of the prunable
groups' *parameters*: a coordinate weighs the parameters it removes (a kv head
with its query heads weighs ``(2 + 2 n_rep) * head_dim * hidden``, an MLP channel
``3 * hidden``), FLAP's compression weights. The units a layer can run come from
the groups themselves (a kv group carries its query heads; ``factors="outer"``
prunes whole heads, not head dims) and from ``round_to``.
"""
from __future__ import annotations

from . import adapter
from .sites import getattr_path

__all__ = ["coordinate_costs", "allocation", "allocation_table"]


def coordinate_costs(dg, groups) -> dict:
    """``{group: parameters one of its coordinates removes}`` (overlaps between groups ignored)."""
    out = {}
    for g in groups:
        total = 0.0
        for target, d in g.members:
            t = getattr_path(dg.gm, target)
            carried = int((adapter.coords(dg, target, d, g) >= 0).sum())
            total += t.numel() / t.shape[d] * carried / g.size
        out[g] = total
    return out


def allocation(keep: dict) -> list:
    """``[(group name, size, kept, ratio removed)]`` for every group ``keep`` prunes."""
    return [(g.name, g.size, len(idx), 1 - len(idx) / g.size) for g, idx in keep.items()]


def allocation_table(dg, keep: dict) -> str:
    """Per pruned group, in graph order: the layers producing it, kept of its size and the share removed
    (what the ranking allocated to each layer).

    Example::

        >>> import torch, fxprune
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> dg = fxprune.analyze(net, (torch.randn(1, 4),))
        >>> print(allocation_table(dg, {dg.groups[0]: [0, 1, 2]}))
        group    layers    kept    removed
        -------  --------  ------  ---------
        G0       0         3/8     62%
    """
    from tabulate import tabulate

    rows = []
    for g in dg.groups:
        if g in keep:
            layers = sorted({m.param.rpartition(".")[0] for m in g.producers} or {t.rpartition(".")[0]
                                                                                   for t, _ in g.members})
            rows.append([g.name, ", ".join(layers), f"{len(keep[g])}/{g.size}", f"{1 - len(keep[g]) / g.size:.0%}"])
    return tabulate(rows, headers=["group", "layers", "kept", "removed"], disable_numparse=True)
