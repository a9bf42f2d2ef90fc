"""The measured latency table: per distinct layer, time as a function of kept width, cached on disk.

Note [Latency table]
~~~~~~~~~~~~~~~~~~~~
For every distinct :class:`~fxprune.speed.layers.LayerSpec` the table holds
measured seconds at a *staircase* of candidate widths (:func:`staircase`: at
most ``points`` multiples of a quantum of 8, and the full width), once with the
out width varied (in width full) and once with the in width varied (out full);
a depthwise conv varies both together. Between steps nothing is interpolated:
a width costs what the next staircase width up costs, so only measured widths
are ever chosen. Each profile is made monotone by its lower envelope
(``env(w) = min over w' >= w of t(w')``); a width slower than a larger one is
not *fast* and is never chosen unless exact counts are asked for.

The table is cached as JSON under ``$FXPRUNE_LATENCY_CACHE`` (default
``~/.cache/fxprune/latency``), one file per runtime key (CPU model, torch and
runtime versions, threads; see :meth:`~fxprune.speed.runtimes.Runtime.key`),
holding ``{"key": ..., "layers": {spec key: {"out"|"in"|"tied": [[width, seconds], ...]}}}``.
A later run measures only the specs the file lacks.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

__all__ = ["staircase", "envelope", "fast_mask", "LatencyTable", "build_table", "cache_dir", "layer_timer"]


def staircase(size: int, points: int = 12, quantum: int = 8) -> list:
    """Candidate widths of a dimension of ``size``: multiples of a step (a multiple of ``quantum``
    once ``size`` allows it), at most about ``points`` of them, and ``size`` itself.

    Example::

        >>> from fxprune.speed import staircase
        >>> staircase(64), staircase(5), staircase(24)
        ([8, 16, 24, 32, 40, 48, 56, 64], [1, 2, 3, 4, 5], [8, 16, 24])
    """
    if size <= 2 * quantum:
        step = max(1, math.ceil(size / points))
    else:
        step = quantum * math.ceil(size / (quantum * points))
    return sorted({min(size, k * step) for k in range(1, size // step + 1)} | {size})


def envelope(times: list) -> list:
    """``times[i]`` lowered to the least time at any later (larger) width: monotone in width."""
    out, best = [0.0] * len(times), math.inf
    for i in range(len(times) - 1, -1, -1):
        best = min(best, times[i])
        out[i] = best
    return out


def fast_mask(times: list) -> list:
    """Which widths are *fast*: strictly quicker than every larger width (the largest always is)."""
    env = envelope(times)
    return [i == len(times) - 1 or times[i] < env[i + 1] for i in range(len(times))]


def cache_dir() -> str:
    """Where tables are cached: ``$FXPRUNE_LATENCY_CACHE`` or ``~/.cache/fxprune/latency``."""
    return os.environ.get("FXPRUNE_LATENCY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fxprune",
                                                                   "latency")


@dataclass
class LatencyTable:
    """Measured profiles ``{spec key: {"out"|"in"|"tied": [[width, seconds], ...]}}`` for one runtime key.

    Attributes:
        key: the runtime key the times are valid for.
        layers: the profiles (Note [Latency table]).
        measured: how many profiles this run measured (0: all from the cache).
        build_s: seconds spent measuring in this run.
        path: the cache file, or None when not cached.
        used: the spec keys of the layers this build was asked for.
    """

    key: dict
    layers: dict = field(default_factory=dict)
    measured: int = 0
    build_s: float = 0.0
    path: Optional[str] = None
    used: tuple = ()

    def profile(self, spec, axis: str) -> tuple:
        """``(widths, enveloped seconds)`` of ``spec`` along ``axis``."""
        pts = self.layers[spec.key()][axis]
        return [w for w, _ in pts], envelope([t for _, t in pts])

    def lookup(self, spec, axis: str, width: int) -> float:
        """Enveloped seconds at the smallest measured width ``>= width``."""
        ws, ts = self.profile(spec, axis)
        for w, t in zip(ws, ts):
            if w >= width:
                return t
        return ts[-1]

    def save(self) -> None:
        if self.path is None:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"key": self.key, "layers": self.layers}, f)
        os.replace(tmp, self.path)


def _path(key: dict, directory: Optional[str]) -> str:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(directory or cache_dir(), f"{key['runtime']}-{digest}.json")


def _load(path: str, key: dict) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data.get("layers", {}) if data.get("key") == key else {}


def _axes(spec) -> dict:
    if spec.depthwise:
        return {"tied": [(w, w) for w in staircase(spec.out_ch)]}
    return {"out": [(spec.in_ch, w) for w in staircase(spec.out_ch)],
            "in": [(w, spec.out_ch) for w in staircase(spec.in_ch)]}


def layer_timer(runtime) -> Callable:
    """``timer(spec, w_in, w_out) -> seconds``: the real kernel, isolated, on ``runtime``'s layer runtime."""
    from .timing import time_call
    rt = runtime.layer_runtime()

    def timer(spec, w_in, w_out):
        mod, x = spec.build(w_in, w_out)
        run = rt.prepare(mod, (x,))
        run()
        return time_call(run, min_time=0.005, min_runs=5)
    return timer


def build_table(layers: list, runtime, timer: Optional[Callable] = None, cache: Optional[str] = "",
                progress=None) -> LatencyTable:
    """Measure (or read from the cache) every distinct layer spec of ``layers`` on ``runtime``.

    Args:
        layers: :class:`~fxprune.speed.layers.Layer` s (see :func:`~fxprune.speed.layers.find_layers`).
        runtime: a :class:`~fxprune.speed.runtimes.Runtime`.
        timer: ``(spec, w_in, w_out) -> seconds``; default :func:`layer_timer` (inject a fake one to test).
        cache: a directory; ``""`` for :func:`cache_dir`, ``None`` for no cache.
        progress: a callable ``(done, total)`` or None.

    Example::

        >>> from fxprune.speed import build_table, get_runtime
        >>> from fxprune.speed.layers import Layer, LayerSpec
        >>> spec = LayerSpec("linear", (1, 16), 16, 16)
        >>> fake = lambda spec, w_in, w_out: 1e-6 * w_in * w_out
        >>> t = build_table([Layer("fc", spec, (0,), ())], get_runtime("eager", 1), timer=fake, cache=None)
        >>> t.profile(spec, "out")[0], t.measured
        ([2, 4, 6, 8, 10, 12, 14, 16], 1)
    """
    key = runtime.key()
    path = None if cache is None else _path(key, cache or None)
    table = LatencyTable(key, _load(path, key) if path else {}, path=path)
    specs = list({l.spec.key(): l.spec for l in layers}.values())
    todo = [s for s in specs if s.key() not in table.layers]
    timer = timer or layer_timer(runtime)
    t0 = time.perf_counter()
    for i, spec in enumerate(todo):
        table.layers[spec.key()] = {axis: [[w_out if axis != "in" else w_in, timer(spec, w_in, w_out)]
                                           for w_in, w_out in pts] for axis, pts in _axes(spec).items()}
        if progress:
            progress(i + 1, len(todo))
    table.measured, table.build_s = len(todo), time.perf_counter() - t0
    table.used = tuple(s.key() for s in specs)
    if todo:
        table.save()
    return table
