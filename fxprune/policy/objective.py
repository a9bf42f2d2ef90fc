"""The calibration objective, and the width split it chooses for one ratio per group (uniform widths).

Note [Width split by objective]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
With one ratio per group (``scope="local"``, and ``uniform=True``, where every
layer keeps the same widths a stock config can describe) the ratio says how
much goes, not from where: heads, head dims or MLP channels. The objective is
the calibration output error summed over every consumer of removed channels,
``sum_l E||W_l x - W'_l x'||^2`` (absolute, not relative: the consumers that
write into one residual stream are comparable), after the config's repair
(``"lstsq"``/``"bias"``; the plain removal without one), from the same Gram
matrices the repair uses (Note [Repair]).

The split searched: a share ``a`` of the factored (attention) components'
parameters on a grid, split among the factors three ways (the nearest split
preferring whole heads, heads only, head dims only: Note [Factored ratios]);
for each, the other groups' ratio is bisected so that the removed share of the
candidate tensors' parameters is ``ratio`` (Note [Honoured budgets]). Each
layer keeps its own best-scored channels at those counts; the split with the
least objective wins. Models without factored groups keep the plain ratio.
"""
from __future__ import annotations

from typing import Optional

from ..calib.repair import plan_repair

__all__ = ["objective", "SHARES", "MODES", "split_by_objective"]

SHARES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
MODES = ("nearest", "heads", "dims")


def objective(dg, keep: dict, cal, repair: Optional[str] = "lstsq") -> float:
    """``sum_l E||W_l x - W'_l x'||^2`` over the consumers ``keep`` touches, after ``repair`` (None: plain
    removal); needs ``cal`` with Gram matrices.

    Example::

        >>> import torch, fxprune
        >>> from fxprune.calib import calibrate
        >>> from fxprune.policy.objective import objective
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> dg = fxprune.analyze(net, (torch.randn(1, 4),))
        >>> cal = calibrate(dg, [torch.randn(64, 4)], gram=True)
        >>> keep = {dg.groups[0]: [0, 1, 2, 3]}
        >>> objective(dg, keep, cal, "lstsq") <= objective(dg, keep, cal, None)
        True
    """
    report = plan_repair(dg, keep, cal, repair or "lstsq").report
    return sum((r.before if repair is None else r.after) * r.energy for r in report.layers
               if r.energy == r.energy)


def split_by_objective(dg, scores: dict, ratios: dict, ratio: float, cfg, cal, ties=(), rounding=None,
                       repair: Optional[str] = "lstsq") -> Optional[dict]:
    """The keep-indices of the least-objective split (Note [Width split by objective]); None where the
    candidate groups have no factored component (the plain ratio applies)."""
    from .budget import _meter
    from .factored import components
    from .selection import _top, factored_counts, select_local

    factored = {g for groups, _ in components(dg, [g for g in ratios if scores.get(g) is not None])
                for g in groups}
    if not factored:
        return None
    share = _meter(dg, ratios, "params")
    rest = {g: r for g, r in ratios.items() if g not in factored}
    best = None
    for mode in MODES:
        for a in SHARES:
            counts = factored_counts(dg, scores, {g: a for g in factored}, cfg, rounding, mode)
            heads = {g: _top(scores[g], n) for g, n in counts.items() if n < g.size}

            def select(r, heads=heads):
                return {**heads, **select_local(scores, {g: min(r, v) for g, v in rest.items()}, cfg, ties,
                                                rounding)}
            keep = _matched(select, share, ratio)
            if keep is None:
                continue
            value = objective(dg, keep, cal, repair)
            if best is None or value < best[0]:
                best = (value, keep)
    return None if best is None else best[1]


def _matched(select, share, ratio: float, steps: int = 24) -> Optional[dict]:
    """``select(r)`` whose removed share is within 0.5% of ``ratio`` (bisection on ``r``), or None."""
    lo, hi, best = 0.0, 1.0 - 1e-9, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        keep = select(mid)
        got = share(keep)
        if best is None or abs(got - ratio) < abs(best[0] - ratio):
            best = (got, keep)
        lo, hi = (mid, hi) if got < ratio else (lo, mid)
    return best[1] if abs(best[0] - ratio) <= 0.005 else None
