"""Latency: measured per-layer tables, deploy runtimes, and pruning to a latency budget.

The policy layer's view of speed (Note [Latency targets] in ``fxprune/speed/search.py``);
``fxprune.passes`` never imports it.
"""
from .runtimes import RUNTIMES, Runtime, get_runtime
from .table import LatencyTable, build_table, staircase
from .timing import interleaved, time_call

__all__ = ["RUNTIMES", "Runtime", "get_runtime", "LatencyTable", "build_table", "staircase", "interleaved",
           "time_call"]
