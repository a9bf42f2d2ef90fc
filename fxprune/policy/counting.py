"""Counting and reporting: parameters and MACs per layer and per group, CPU latency.

MACs are half the FLOPs that ``torch.utils.flop_counter.FlopCounterMode`` counts
on one real forward pass: convolutions (incl. transposed), linear layers,
matmuls and attention kernels. Normalization and element-wise ops count 0.

Every forward pass here runs an eval-mode structural copy of the model
(Note [Training mode] in ``fxprune/capture/modes.py``): counting or timing a
model in train mode never updates its BatchNorm statistics or flips a flag.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
from tabulate import tabulate
from torch.utils.flop_counter import FlopCounterMode

from fxprune.passes import runnable

from ..capture.modes import eval_copy
from ..graph import DependencyGraph

__all__ = ["Count", "count", "count_macs", "count_params", "compare", "compare_counts", "group_table",
           "param_shapes", "latency"]


@dataclass(frozen=True)
class Count:
    """Totals and per-layer ``{module name: (params, macs)}`` (own parameters, children excluded)."""

    params: int
    macs: int
    layers: dict = field(default_factory=dict)


def count_params(model: nn.Module) -> int:
    """Number of parameter entries (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def _as_tuple(inputs) -> tuple:
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


def _forward(model: nn.Module, inputs: tuple, kwargs: Optional[dict]):
    """One forward pass that cannot change ``model`` (eval-mode copy, no grad)."""
    with torch.no_grad():
        return eval_copy(model)(*inputs, **(kwargs or {}))


def _module_flops(model: nn.Module, inputs: tuple, kwargs: Optional[dict] = None) -> dict:
    """Each module's own FLOPs by qualified name; ``None`` holds the total."""
    with FlopCounterMode(display=False) as fc:
        _forward(model, inputs, kwargs)
    counts = {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}
    total = counts.pop("Global", 0)
    root = type(model).__name__
    named = {"": counts.pop(root, total)}
    for k, v in counts.items():
        if k.startswith(root + "."):
            named[k[len(root) + 1:]] = v
    return {**_exclusive(named), None: fc.get_total_flops()}


def _exclusive(named: dict) -> dict:
    """Hierarchical counts -> each module's own (children's counts subtracted)."""
    out = dict(named)
    for k, v in named.items():
        if k:
            parent = k.rpartition(".")[0]
            while parent and parent not in named:
                parent = parent.rpartition(".")[0]
            out[parent] = out.get(parent, 0) - v
    return out


def count_macs(model: nn.Module, example_inputs, example_kwargs: Optional[dict] = None) -> int:
    """Multiply-accumulates of one forward pass on ``example_inputs`` (and ``example_kwargs``).

    Example::

        >>> import torch, fxprune
        >>> fxprune.count_macs(torch.nn.Linear(4, 8), (torch.randn(2, 4),))
        64
    """
    with FlopCounterMode(display=False) as fc:
        _forward(model, _as_tuple(example_inputs), example_kwargs)
    return fc.get_total_flops() // 2


def count(model: nn.Module, example_inputs, example_kwargs: Optional[dict] = None) -> Count:
    """Parameters and MACs, in total and per module.

    Example::

        >>> import torch, fxprune
        >>> c = fxprune.count(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)), (torch.randn(1, 4),))
        >>> c.params, c.macs, c.layers["1"]
        (58, 48, (18, 16))
    """
    inputs = _as_tuple(example_inputs)
    flops = _module_flops(model, inputs, example_kwargs)
    layers = {}
    for name, mod in model.named_modules():  # names are strings: the total (None) is not a layer
        p = sum(t.numel() for t in mod.parameters(recurse=False))
        m = flops.get(name, 0) // 2
        if p or m:
            layers[name] = (p, m)
    return Count(count_params(model), flops[None] // 2, layers)


def _pct(a: int, b: int) -> str:
    return f"{b / a:.1%}" if a else "-"


def compare(original: nn.Module, pruned: nn.Module, example_inputs, example_kwargs: Optional[dict] = None) -> str:
    """A table of parameters and MACs per layer and in total, before and after pruning.

    Layers are matched by qualified name (``fxprune.apply`` keeps module names).

    Example::

        >>> import torch, fxprune
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> small = fxprune.prune(net, (torch.randn(1, 4),), ratio=0.5)
        >>> print(fxprune.compare(net, small, (torch.randn(1, 4),)).splitlines()[-1])
        total          58        30  51.7%       48        24  50.0%
    """
    before = count(original, example_inputs, example_kwargs)
    return compare_counts(before, count(pruned, example_inputs, example_kwargs))


def compare_counts(a: Count, b: Count) -> str:
    """The table of :func:`compare` from two :class:`Count` s, each measured while its model was as counted
    (the original before an in-place rewrite, the result after it)."""
    rows = []
    for name in list(a.layers) + [n for n in b.layers if n not in a.layers]:
        (pa, ma), (pb, mb) = a.layers.get(name, (0, 0)), b.layers.get(name, (0, 0))
        rows.append([name or "(root)", pa, pb, _pct(pa, pb), ma, mb, _pct(ma, mb)])
    rows.append(["total", a.params, b.params, _pct(a.params, b.params), a.macs, b.macs, _pct(a.macs, b.macs)])
    return tabulate(rows, headers=["layer", "params", "pruned", "kept", "MACs", "pruned", "kept"])


def param_shapes(dg: DependencyGraph) -> dict:
    """``{parameter name: shape}`` of the analysed graph, as it is now: taken before an in-place rewrite,
    what :func:`group_table` sizes the groups from (the graph shares its tensors with the model)."""
    return {k: tuple(t.shape) for k, t in dg.gm.named_parameters()}


def group_table(dg: DependencyGraph, keep: dict | None = None, example_inputs=None, *,
                shapes: Optional[dict] = None, before: Optional[Count] = None) -> str:
    """Per group: size, kept coordinates, and the parameters of its members before/after.

    "after" prunes this group alone (other groups' edits are not applied), so a
    row says what pruning that group buys. With ``example_inputs`` (or ``before``),
    MACs of the modules owning the group's parameters are listed too.

    After an in-place rewrite the graph's tensors are the resized model's and its
    literals are stale: pass what was measured before it, ``shapes``
    (:func:`param_shapes`) and ``before`` (:func:`count` of the original), and
    nothing runs or reads the graph's tensors.

    Example::

        >>> import torch, fxprune
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> dg = fxprune.analyze(net, (torch.randn(1, 4),))
        >>> print(fxprune.group_table(dg, {dg.groups[0]: [0, 1, 2, 3]}).splitlines()[-1])
        G0            8       4               56       28
    """
    keep = {g.atom: torch.as_tensor(v) for g, v in (keep or {}).items()}
    if before is not None:
        flops = {k: 2 * macs for k, (_, macs) in before.layers.items()}
    else:
        flops = _module_flops(runnable(dg.gm), _as_tuple(example_inputs), dg.example_kwargs) \
            if example_inputs is not None else None
    shapes = shapes if shapes is not None else param_shapes(dg)
    rows = []
    for g in dg.groups:
        before_n = after_n = 0
        for m in g.layouts:
            shape = shapes.get(m.param)
            if shape is not None:
                numel = math.prod(shape)
                before_n += numel
                after_n += numel // shape[m.dim] * m.layout.new_size(_only(keep, g.atom))
        kept = len(keep[g.atom]) if g.atom in keep else g.size
        row = [g.name, g.size, kept, before_n, after_n]
        if flops is not None:
            owners = {t.rpartition(".")[0] for t, _ in g.members}
            row.append(sum(flops.get(o, 0) for o in owners) // 2)
        rows.append(row)
    headers = ["group", "size", "kept", "member params", "after"] + (["owner MACs"] if flops is not None else [])
    return tabulate(rows, headers=headers)


def _only(keep: dict, atom: int) -> dict:
    return {atom: keep[atom]} if atom in keep else {}


def latency(model: nn.Module, example_inputs, example_kwargs: Optional[dict] = None, *, warmup: int = 3,
            repeats: int = 20, threads: int | None = None) -> dict:
    """CPU wall-clock latency of one forward pass in eval mode, in milliseconds.

    Returns ``{"median_ms", "min_ms", "mean_ms"}`` over ``repeats`` timed runs after ``warmup``.

    Example::

        >>> import torch, fxprune
        >>> sorted(fxprune.latency(torch.nn.Linear(4, 4), (torch.randn(1, 4),), repeats=3))
        ['mean_ms', 'median_ms', 'min_ms']
    """
    inputs, kwargs, model = _as_tuple(example_inputs), dict(example_kwargs or {}), eval_copy(model)
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for _ in range(warmup):
                model(*inputs, **kwargs)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(*inputs, **kwargs)
                times.append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(old)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "mean_ms": statistics.fmean(times)}
