"""Wall-clock timing that survives a loaded machine: medians, interleaved rounds.

Note [Interleaved timing]
~~~~~~~~~~~~~~~~~~~~~~~~~
On a shared machine the load changes between two measurements taken a few
seconds apart, so "dense, then pruned" compares two machines. Every comparison
here times the candidates in alternation, ``rounds`` times, each turn the
median of a few calls, and reports the median over rounds: a load spike
lands on both sides or is voted out.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

__all__ = ["time_call", "interleaved"]


def time_call(fn: Callable[[], object], min_time: float = 0.01, min_runs: int = 3, max_runs: int = 100,
              clock: Callable[[], float] = time.perf_counter) -> float:
    """Median seconds of one call of ``fn()`` over at least ``min_runs`` calls and ``min_time`` seconds.

    Example::

        >>> from fxprune.speed import time_call
        >>> time_call(lambda: sum(range(1000))) > 0
        True
    """
    times, total = [], 0.0
    while len(times) < min_runs or (total < min_time and len(times) < max_runs):
        t0 = clock()
        fn()
        dt = clock() - t0
        times.append(dt)
        total += dt
    return statistics.median(times)


def interleaved(fns: Sequence[Callable[[], object]], rounds: int = 5, warmup: int = 2, min_time: float = 0.02,
                clock: Callable[[], float] = time.perf_counter) -> list:
    """Median seconds per call of each of ``fns``, timed in alternation (Note [Interleaved timing]).

    Example::

        >>> from fxprune.speed import interleaved
        >>> fast, slow = interleaved([lambda: sum(range(10)), lambda: sum(range(100000))], rounds=3)
        >>> fast < slow
        True
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    per = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            per[i].append(time_call(fn, min_time=min_time, clock=clock))
    return [statistics.median(p) for p in per]
