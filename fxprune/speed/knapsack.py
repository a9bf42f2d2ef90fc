"""Widths under a latency budget: a greedy knapsack over the groups' staircases (HALP's augmented knapsack).

Note [Latency knapsack]
~~~~~~~~~~~~~~~~~~~~~~~
Value is kept importance (a group's scores sorted descending: keeping ``w``
coordinates keeps the ``w`` largest), weight is estimated latency
(:class:`~fxprune.speed.cost.LatencyModel`). Starting from the dense widths,
every group offers one move: down to the largest staircase width whose
estimated cost is *strictly* lower than now (a width that saves nothing is
skipped, so every width chosen is fast). The move that loses the least value
per second saved is taken, its neighbours' offers recomputed (a layer's cost
depends on its in and out groups), until the estimate is within the budget.
With concave values (sorted scores) and additive costs this is the classic
value/weight greedy, optimal up to the last item; tests check it on tables with
known answers.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .table import staircase

__all__ = ["prefix_values", "allocate"]


def prefix_values(scores: torch.Tensor) -> list:
    """``v[w]``: importance kept by the ``w`` best coordinates (``v[0] = 0``)."""
    s = torch.sort(scores.double().flatten(), descending=True).values
    return [0.0] + torch.cumsum(s, 0).tolist()


def _move(model, g: int, widths: dict, values: dict, floor: dict) -> Optional[tuple]:
    """``(value lost per second saved, new width)`` of group ``g``'s best next step down, or None."""
    w = widths[g]
    now = model.group_cost(g, widths)
    for cand in reversed(staircase(model.sizes[g])):
        if cand >= w or cand < floor[g]:
            continue
        saved = now - model.group_cost(g, {**widths, g: cand})
        if saved > 0:
            return (values[g][w] - values[g][cand]) / saved, cand
    return None


def allocate(model, values: dict, budget: float, floor: Optional[dict] = None) -> tuple:
    """Widths ``{group: count}`` keeping the most value with ``model.estimate(widths) <= budget``.

    Args:
        model: a :class:`~fxprune.speed.cost.LatencyModel` (or anything with ``sizes``, ``touching``,
            ``group_cost`` and ``estimate``).
        values: ``{group: prefix values}`` (:func:`prefix_values`); groups absent are not pruned.
        budget: the estimated seconds to reach.
        floor: ``{group: fewest coordinates}`` (default 1).

    Returns:
        ``(widths, estimate)``: only groups that lost coordinates are in ``widths``; ``estimate`` may be
        above ``budget`` when every group is at its floor.
    """
    widths = {g: model.sizes[g] for g in values}
    floor = {g: max(1, (floor or {}).get(g, 1)) for g in values}
    est = model.estimate(widths)
    offers = {g: _move(model, g, widths, values, floor) for g in values}
    while est > budget:
        live = {g: o for g, o in offers.items() if o is not None}
        if not live:
            break
        g = min(live, key=lambda k: (live[k][0], k))
        widths[g] = live[g][1]
        est = model.estimate(widths)
        near = {h for layer in model.touching.get(g, ()) for h in layer.groups} | {g}
        for h in near & set(values):
            offers[h] = _move(model, h, widths, values, floor)
    return {g: w for g, w in widths.items() if w < model.sizes[g]}, est


def floor_of(size: int, cfg) -> int:
    """The fewest coordinates a group of ``size`` keeps under ``cfg``'s ``min_keep``/``max_ratio``."""
    return max(cfg.min_keep, math.ceil(size * (1 - cfg.max_ratio) - 1e-9), 1)
