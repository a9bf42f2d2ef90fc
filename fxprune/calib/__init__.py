"""Calibrated pruning: activation statistics, data-aware criteria and layer repair.

``fxprune.prune(model, inputs, importance="wanda" | "fluctuation" | "obs", data=batches,
repair=None | "bias" | "lstsq")`` uses all of it; the pieces are here for direct use:
:func:`calibrate` (Note [Calibration pass]), the criteria (Note [Calibrated scores])
and :func:`repair` (Note [Repair]).
"""
from .collect import Calibration, ConsumerStats, batch_inputs, calibrate, random_batches
from .criteria import DAMPING, OBS, Calibrated, Fluctuation, Wanda
from .repair import (REPAIRS, LayerRepair, RepairPlan, RepairReport, plan_repair, repair,
                     repair_report)

__all__ = ["Calibration", "ConsumerStats", "batch_inputs", "calibrate", "random_batches", "DAMPING", "OBS", "Calibrated",
           "Fluctuation", "Wanda", "REPAIRS", "LayerRepair", "RepairReport", "RepairPlan", "plan_repair", "repair", "repair_report"]
