"""How :func:`fxprune.prune` uses calibration: one pass per step, feeding both the criterion and the repair."""
from __future__ import annotations

from typing import Optional

from .collect import Calibration, calibrate
from .repair import RepairPlan, plan_repair

__all__ = ["needs_calibration", "calibration_for", "repair_plan"]


def needs_calibration(crit, repair: Optional[str]) -> bool:
    """Whether a criterion or a repair reads activations (``data`` are then model inputs)."""
    return bool(getattr(crit, "needs_calibration", False) or repair)


def calibration_for(dg, crit, repair: Optional[str], data, groups) -> Optional[Calibration]:
    """One calibration pass over ``data`` for a calibrated criterion and/or a repair (None if neither).

    Gram matrices are accumulated where the repair or the criterion (``obs``) needs them;
    ``groups`` limits the consumers to those of the groups that may be pruned.
    """
    if not needs_calibration(crit, repair):
        return None
    return calibrate(dg, data, gram=bool(repair) or getattr(crit, "needs_gram", False), groups=groups)


def repair_plan(dg, keep: dict, cal: Optional[Calibration], repair: Optional[str],
                inplace: bool) -> Optional[RepairPlan]:
    """The repair of every consumer of the removed coordinates, from the original weights (before an
    in-place apply resizes them); None without ``repair``."""
    if not repair:
        return None
    return plan_repair(dg, keep, cal, repair, inplace_model=dg.model if inplace else None)
