"""Prune to a latency: table, knapsack, then time the real pruned model and correct.

Note [Latency targets]
~~~~~~~~~~~~~~~~~~~~~~
``target_latency`` is a fraction of the dense model's latency (a float in
``(0, 1)``) or an absolute time (a string: ``"12ms"``, ``"0.012s"``) on
``runtime`` with ``threads``. One step:

1. build the :class:`~fxprune.speed.cost.LatencyModel` of the analysed graph
   (Note [Timed layers], Note [Latency table]; cached) and time the dense model;
2. choose widths with the knapsack (Note [Latency knapsack]) for the budget;
3. rewrite, and time pruned and dense interleaved (Note [Interleaved timing]);
   the measured ratio, not the estimate, is compared with the target;
4. off by more than ``latency_tolerance``: scale the budget by target/measured
   and repeat (at most ``_ITERATIONS`` times); the closest choice is kept and a
   miss is said with a warning.

Any pruning with a ``runtime`` ends with that interleaved timing: the result's
``fxprune_latency`` (:class:`LatencyReport`) holds dense and pruned seconds,
and a pruned model that is not faster than dense is never returned silently
(a ``SlowerThanDenseWarning``).
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from fxprune.passes import runnable

from ..api import apply
from .cost import LatencyModel
from .knapsack import allocate, floor_of, prefix_values
from .layers import find_layers
from .runtimes import get_runtime
from .table import build_table
from .timing import interleaved, time_call

__all__ = ["LatencyReport", "SlowerThanDenseWarning", "parse_target", "latency_model", "search_latency",
           "search_count", "snapper", "measure"]

_ITERATIONS = 6
_ROUNDS = 5


class SlowerThanDenseWarning(UserWarning):
    """A pruned model measured no faster than the dense one on the chosen runtime."""


@dataclass
class LatencyReport:
    """Dense vs pruned latency on one runtime (medians of interleaved rounds, seconds)."""

    runtime: str
    threads: Optional[int]
    dense_s: float
    pruned_s: float
    target_s: Optional[float] = None
    iterations: int = 0
    table_build_s: float = 0.0
    table_measured: int = 0
    table_layers: int = 0
    cache: Optional[str] = None
    kinds: tuple = ()

    @property
    def ratio(self) -> float:
        return self.pruned_s / self.dense_s

    @property
    def slower(self) -> bool:
        return self.pruned_s >= self.dense_s

    def summary(self) -> str:
        t = "" if self.target_s is None else f" (target {self.target_s * 1e3:.2f} ms)"
        return (f"{self.runtime} ({self.threads or torch.get_num_threads()} threads): dense "
                f"{self.dense_s * 1e3:.2f} ms, pruned {self.pruned_s * 1e3:.2f} ms = {self.ratio:.1%}{t}; "
                f"latency table: {self.table_layers} layer kinds, {self.table_measured} measured in "
                f"{self.table_build_s:.1f}s, the rest from {self.cache or 'no cache'}")


def parse_target(target, dense_s: float) -> float:
    """``target_latency`` as a fraction of ``dense_s`` (Note [Latency targets]).

    Example::

        >>> from fxprune.speed.search import parse_target
        >>> parse_target(0.5, 0.02), parse_target("10ms", 0.02), parse_target("0.005s", 0.02)
        (0.5, 0.5, 0.25)
    """
    if isinstance(target, str):
        m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(ms|s|us)\s*", target)
        if not m:
            raise ValueError(f"target_latency {target!r}: write a fraction (0.5) or a time ('12ms', '0.01s')")
        secs = float(m.group(1)) * {"s": 1.0, "ms": 1e-3, "us": 1e-6}[m.group(2)]
        return secs / dense_s
    return float(target)


def latency_model(dg, runtime, cache: Optional[str] = "", timer: Optional[Callable] = None,
                  dense_s: Optional[float] = None) -> tuple:
    """``(LatencyModel, table, dense seconds)`` for ``dg`` on ``runtime`` (the dense model timed once
    unless ``dense_s`` is given)."""
    layers = find_layers(dg)
    table = build_table(layers, runtime, timer=timer, cache=cache)
    if dense_s is None:
        dense_s = time_call(runtime.prepare(runnable(dg.gm), tuple(dg.example_args)), min_time=0.1)
    sizes = {g.index: g.size for g in dg.groups}
    lm = LatencyModel(layers, table, sizes)
    lm.residual = max(dense_s - lm.estimate({}), 0.0)  # isolated kernels may sum above the graph
    return lm, table, dense_s


def _keep(dg, scores: dict, widths: dict) -> dict:
    from ..scoring import top_indices as _top
    by_index = {g.index: g for g in dg.groups}
    return {by_index[i]: _top(scores[by_index[i]], w) for i, w in widths.items()}


def measure(dg, model, runtime, rounds: int = _ROUNDS, dense_run=None, check: bool = False) -> tuple:
    """``(dense seconds, pruned seconds)``, interleaved (Note [Interleaved timing])."""
    args = tuple(dg.example_args)
    dense_run = dense_run or runtime.prepare(runnable(dg.gm), args)
    return tuple(interleaved([dense_run, runtime.prepare(model, args, check=check)], rounds=rounds))


def _values(dg, scores: dict, allowed) -> dict:
    return {g.index: prefix_values(scores[g]) for g in allowed if scores.get(g) is not None}


def search_latency(dg, scores: dict, cfg, allowed, timer: Optional[Callable] = None, cache: Optional[str] = "",
                   measurer: Optional[Callable] = None, dense_s: Optional[float] = None) -> tuple:
    """``(keep, LatencyReport)`` reaching ``cfg.target_latency`` (Note [Latency targets]).

    ``allowed``: the groups that may be pruned (``fxprune.policy.selection.group_ratios``);
    ``timer``/``measurer``/``dense_s`` replace the layer timer, the whole-model ``(keep) -> (dense s,
    pruned s)`` timing and the dense model's time (tests inject fakes).
    """
    rt = get_runtime(cfg.runtime or "eager", cfg.threads)
    lm, table, dense_s = latency_model(dg, rt, cache, timer, dense_s)
    goal = parse_target(cfg.target_latency, dense_s)
    if not 0.0 < goal < 1.0:
        raise ValueError(f"target_latency {cfg.target_latency!r} is {goal:.1%} of the dense latency "
                         f"({dense_s * 1e3:.2f} ms on {rt.name}); it must be below it")
    values = _values(dg, scores, allowed)
    floors = {g.index: floor_of(g.size, cfg) for g in allowed}
    dense_run = None if measurer else rt.prepare(runnable(dg.gm), tuple(dg.example_args))
    measurer = measurer or (lambda keep: measure(dg, apply(dg, keep, check=False), rt, dense_run=dense_run))
    aim, tried, seen = goal, [], {}
    for it in range(1, _ITERATIONS + 1):
        widths, _ = allocate(lm, values, aim * lm.estimate({}), floors)
        key = tuple(sorted(widths.items()))
        d, p = seen[key] if key in seen else measurer(_keep(dg, scores, widths))
        seen[key] = (d, p)
        tried.append((abs(p / d - goal) / goal, it, widths, d, p))
        if abs(p / d - goal) <= cfg.latency_tolerance * goal:
            break
        aim = min(max(aim * goal / (p / d), 0.02), 1.0)
    # a miss keeps the closest try that is not slower than asked: a noisy dense timing must not pull the
    # result back towards the dense model (Note [Latency targets])
    fast = [t for t in tried if t[4] / t[3] <= goal * (1 + cfg.latency_tolerance)]
    err, it, widths, d, p = min(fast or tried, key=lambda t: t[0])
    report = LatencyReport(rt.name, rt.threads, d, p, goal * d, len(tried), table.build_s, table.measured,
                           len(table.used), table.path, table.used)
    if err > cfg.latency_tolerance:
        warnings.warn(f"target_latency {cfg.target_latency!r} not reached within {cfg.latency_tolerance:.0%}: "
                      f"the closest pruned model runs at {p / d:.1%} of dense for {goal:.1%} asked "
                      f"({len(tried)} tries); the groups' fast widths are too coarse or the machine too noisy",
                      stacklevel=3)
    return _keep(dg, scores, widths), report


def search_count(dg, scores: dict, cfg, allowed, counter: Callable, target: float, timer: Optional[Callable] = None,
                 cache: Optional[str] = "") -> tuple:
    """``(keep, table)`` reaching a MACs/params ``target`` with the latency knapsack's widths.

    Note [Counts on the latency knapsack]: with a ``runtime``, a MACs or parameter target is met by
    bisecting the knapsack's *estimated* latency budget (Note [Latency knapsack]) until ``counter`` of
    the pruned model is within ``tolerance`` (or, fast widths being coarse, 5%) of ``target``: the
    coordinates that go first are those with the least importance per second saved, so the latency falls
    faster than uniform pruning at the same count, and every width is fast. No whole-model timing is
    needed to choose; the result is timed after (Note [Latency targets]).
    """
    rt = get_runtime(cfg.runtime or "eager", cfg.threads)
    layers = find_layers(dg)
    table = build_table(layers, rt, timer=timer, cache=cache)
    lm = LatencyModel(layers, table, {g.index: g.size for g in dg.groups})
    values = _values(dg, scores, allowed)
    floors = {g.index: floor_of(g.size, cfg) for g in allowed}
    full, lo, hi, tried = lm.estimate({}), 0.0, 1.0, []
    for _ in range(16):
        mid = (lo + hi) / 2
        keep = _keep(dg, scores, allocate(lm, values, mid * full, floors)[0])
        got = counter(apply(dg, keep, check=False))
        tried.append((abs(got - target), got, keep))
        if abs(got - target) <= cfg.tolerance * target:
            break
        lo, hi = (lo, mid) if got > target else (mid, hi)
    err, got, keep = min(tried, key=lambda t: t[0])
    if err > max(cfg.tolerance, 0.05) * target:
        warnings.warn(f"target {target:.4g}: the closest count on the latency knapsack's widths is {got:.4g} "
                      f"({got / target - 1:+.1%}); pass exact_widths=True for exact counts", stacklevel=4)
    return keep, table


def snapper(dg, cfg, timer: Optional[Callable] = None, cache: Optional[str] = "") -> tuple:
    """``(snap, table)``: ``snap(keep, scores)`` raises every group's count to its smallest fast width
    at least as large (Note [Latency table]), re-taking its best coordinates."""
    from ..scoring import top_indices as _top
    rt = get_runtime(cfg.runtime or "eager", cfg.threads)
    layers = find_layers(dg)
    table = build_table(layers, rt, timer=timer, cache=cache)
    lm = LatencyModel(layers, table, {g.index: g.size for g in dg.groups})
    fast = {}

    def snap(keep: dict, scores: dict) -> dict:
        out = {}
        for g, idx in keep.items():
            if g.index not in fast:
                fast[g.index] = lm.fast_widths(g.index)
            n = next((w for w in fast[g.index] if w >= len(idx)), g.size)
            if n < g.size:
                out[g] = _top(scores[g], n)
        return out
    return snap, table


def check_speed(dg, model, cfg, report: Optional[LatencyReport] = None, table=None) -> LatencyReport:
    """Time ``model`` beside dense on ``cfg.runtime`` (unless ``report`` has it), warn if not faster."""
    if report is None:
        rt = get_runtime(cfg.runtime or "eager", cfg.threads)
        d, p = measure(dg, model, rt, check=True)
        report = LatencyReport(rt.name, rt.threads, d, p)
        if table is not None:
            report.table_build_s, report.table_measured = table.build_s, table.measured
            report.table_layers, report.cache, report.kinds = len(table.used), table.path, table.used
    if report.slower:
        warnings.warn(f"the pruned model is not faster than the dense one on {report.runtime}: "
                      f"{report.pruned_s * 1e3:.2f} ms vs {report.dense_s * 1e3:.2f} ms. Prune with "
                      "target_latency (or without exact_widths) so widths come from the measured fast widths",
                      SlowerThanDenseWarning, stacklevel=3)
    return report
