"""Budgets in parameters or MACs, measured on the pruned layouts: the same share for every criterion.

Note [Honoured budgets]
~~~~~~~~~~~~~~~~~~~~~~~
``scope="global"`` with ``budget="params"`` (or ``"macs"``) removes ``ratio`` of
the parameters (MACs) of the *candidate tensors*: every tensor that carries a
group the config lets be pruned, whether or not the criterion scored it. The
count is measured on the pruned layouts (``adapter.pruned_numel``: a tensor that
loses rows to one group and columns to another is counted once), not summed
from per-coordinate costs, and the ranking's own ratio is bisected until the
measured share is nearest to ``ratio``. So the share depends on the config only:
a criterion that has no opinion on some groups (calibrated criteria score the
groups with a consumer site) removes the same share as one that scores every
group, from the groups it scores. A share the scored groups cannot reach is cut
at their limits (the nearest share reachable).

``budget="macs"`` is the share of the whole model's MACs on the example inputs,
measured on the rewritten model at every probe (attention scores included).
"""
from __future__ import annotations

from typing import Callable

from ..calib import adapter
from ..calib.sites import getattr_path

__all__ = ["candidate_tensors", "measured_plan"]


def candidate_tensors(dg, groups) -> list:
    """Parameter names of every member of ``groups`` that the analysed graph holds."""
    return sorted({t for g in groups for t, _ in g.members if adapter.has_param(dg, t)})


def _meter(dg, ratios: dict, budget: str) -> Callable:
    """``keep -> share removed``: of the candidate tensors' parameters, or of the model's MACs."""
    if budget == "macs":
        from fxprune.passes import runnable

        from ..api import apply
        from .counting import count_macs
        args, kwargs = dg.example_args, dg.example_kwargs
        dense = count_macs(runnable(dg.gm), args, kwargs) or 1
        return lambda keep: 1 - count_macs(apply(dg, keep, check=False), args, kwargs) / dense
    tensors = candidate_tensors(dg, ratios)
    full = {t: getattr_path(dg.gm, t).numel() for t in tensors}
    total = sum(full.values()) or 1
    return lambda keep: sum(full[t] - adapter.pruned_numel(dg, t, keep) for t in tensors) / total


def measured_plan(dg, select: Callable, ratios: dict, ratio: float, budget: str, steps: int = 30) -> dict:
    """The keep-indices of ``select(inner ratio)`` whose measured removed share of the candidate tensors
    (Note [Honoured budgets]) is nearest to ``ratio``; with ``budget="macs"`` each probe is one rewrite
    and one forward pass."""
    share = _meter(dg, ratios, budget)
    lo, hi, best = 0.0, 1.0, None
    for _ in range(steps if budget != "macs" else min(steps, 16)):
        mid = (lo + hi) / 2
        keep = select(mid)
        got = share(keep)
        if best is None or abs(got - ratio) < abs(best[0] - ratio):
            best = (got, keep)
        if abs(got - ratio) < (1e-3 if budget == "macs" else 1e-4):
            break
        lo, hi = (mid, hi) if got < ratio else (lo, mid)
    return best[1]
