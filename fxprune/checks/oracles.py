"""Exactness oracles: prove a pruned model computes what the original computes.

* permutation: keep every coordinate of every group, in a random order. The
  outputs must not change (float64): a missed coupling changes them.
* removal: zero the removed coordinates on the consumer side (the weight
  dims contracted against them), then prune them: outputs must not change.
  Groups that a normalization or reduction mixes are left out of this oracle.
"""
from __future__ import annotations

import contextlib
import math
import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from tabulate import tabulate

from fxprune.passes import get_channel_meta, remove_branches, rewrite_graph, runnable, silence_branches

from ..capture.modes import on_meta
from ..errors import MetaDeviceError, OracleMismatchError
from ..compare import relative_error
from .second import second_sizes

__all__ = ["run_oracles", "VerifyReport"]


@dataclass
class VerifyReport:
    """Result of :func:`verify`."""

    groups: int
    coordinates: int
    permutation_error: float
    removal_groups: int
    removal_error: float
    skipped: list = field(default_factory=list)  # (group name, why) left out of removal
    rtol: float = 1e-9
    removal_fraction: float = 0.0  # share of the parameters the removal oracle's pruned model lost
    failures: list = field(default_factory=list)  # pruned models that failed to run, and why
    blocks: tuple = ()  # whole blocks both oracles also removed (depth): against the model with them silenced
    second: str = ""  # what was checked at the second batch size (Note [Second size])

    @property
    def passed(self) -> bool:
        return self.permutation_error <= self.rtol and self.removal_error <= self.rtol

    def __str__(self) -> str:
        rows = [
            ["permutation", f"{self.groups} groups ({self.coordinates} coords)", f"{self.permutation_error:.2e}",
             "ok" if self.permutation_error <= self.rtol else "MISMATCH"],
            ["removal", f"{self.removal_groups} groups", f"{self.removal_error:.2e}",
             "ok" if self.removal_error <= self.rtol else "MISMATCH"],
        ]
        text = tabulate(rows, headers=["oracle", "checked", "max rel. error", f"rtol {self.rtol:g}"])
        if self.blocks:
            text += f"\nboth oracles also removed {len(self.blocks)} blocks (vs. their outputs zeroed): {list(self.blocks)}"
        if self.skipped:
            text += f"\nremoval oracle skipped {len(self.skipped)} groups mixed by normalization/reduction"
        for failure in self.failures:
            text += f"\n{failure}"
        return text + (f"\n{self.second}" if self.second else "")


@torch.no_grad()
def _check_folded_capture(model: nn.Module, gm, inputs: tuple, kwargs: dict, rtol: float = 1e-6) -> None:
    """A folded graph must compute what the model computes: each folded call site runs the
    graph of its representative block, which is only right if the blocks really are alike."""
    err = relative_error(model(*inputs, **kwargs), runnable(gm)(*inputs, **kwargs))
    if err > rtol:
        raise OracleMismatchError(
            f"the folded capture of {type(model).__name__} does not compute what the model computes "
            f"(max relative error {err:.2e}): blocks folded together behave differently (an attribute "
            "listed in fxprune.capture.IDENTITY_ATTRS is not only an index?); use fold=False")


@contextlib.contextmanager
def _float64_default():
    """Factories without a dtype (``torch.ones(shape)``, as exported graphs record them) make
    float64 tensors, as they would in the float64 model; float32 casts are promoted alike."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _random_keep(size: int, fraction_removed: float, gen: torch.Generator) -> torch.Tensor:
    n_keep = max(1, size - int(round(size * fraction_removed)))
    return torch.randperm(size, generator=gen)[:n_keep]


@torch.no_grad()
def _zero_removed_consumers(gm: nn.Module, keep: dict) -> None:
    """Zero the removed coordinates of every tensor the graph contracts against them: parameters
    and buffers alike (a buffer can be a conv weight)."""
    params = {**dict(gm.named_buffers()), **dict(gm.named_parameters())}
    for node in gm.graph.nodes:
        for use in get_channel_meta(node).params:
            t = params.get(use.target)
            if t is None:
                continue
            for d in use.consumer_dims:
                kept = use.dims[d].flat_indices(keep)
                mask = torch.ones(t.shape[d], dtype=torch.bool)
                mask[kept] = False
                t.index_fill_(d, mask.nonzero().flatten(), 0.0)


def _numel(m: nn.Module) -> int:
    return sum(t.numel() for t in m.parameters())


def _refuse_meta(model: nn.Module, example_inputs) -> None:
    if on_meta(model, example_inputs):
        raise MetaDeviceError(
            f"verify runs {type(model).__name__} on numbers, but its tensors (or the example inputs) are on the "
            "meta device and carry no values. fxprune.analyze works on meta models; to verify, materialize the "
            "model first (model.to_empty(device='cpu') and load its weights, or build it on the CPU) and pass "
            "CPU example inputs")


def _pruned_error(ref, gm, keep: dict, inputs: tuple, kwargs: dict, oracle: str, failures: list,
                  branches: tuple = ()) -> tuple:
    """The relative error of the pruned ``gm`` against ``ref``, and the pruned model (None if the rewrite
    failed); a pruned model that fails to run (a shape mismatch from a missed coupling) is a mismatch,
    recorded in ``failures``."""
    pruned = None
    try:
        pruned = rewrite_graph(gm, keep)
        if branches:
            pruned = remove_branches(pruned, branches, inplace=True)
        out = pruned(*inputs, **kwargs)
    except Exception as e:  # noqa: BLE001 - any failure of the pruned model is the oracle's finding
        failures.append(f"{oracle} oracle: the pruned model fails to run: {type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:300]}")
        return math.inf, pruned
    return relative_error(ref, out), pruned


def _at_second_batch(gm, zeroed, perm: dict, keep: dict, inputs: tuple, kwargs: dict, failures: list,
                     branches: tuple = ()) -> tuple:
    """Both oracles again at the second size (Note [Second size] in checks/second.py):
    (permutation error, removal error, what was checked)."""
    def run(g):
        return silence_branches(runnable(g), branches) if branches else runnable(g)

    sizes = second_sizes(inputs, kwargs)
    for what, args2, kwargs2 in sizes:
        try:
            ref, ref_zeroed = run(gm)(*args2, **kwargs2), run(zeroed)(*args2, **kwargs2)
        except Exception:  # noqa: BLE001 - the model fixes this size: try the next
            continue
        perm_err, _ = _pruned_error(ref, gm, perm, args2, kwargs2, f"permutation ({what})", failures, branches)
        rem_err, _ = _pruned_error(ref_zeroed, zeroed, keep, args2, kwargs2, f"removal ({what})", failures, branches)
        return perm_err, rem_err, f"both oracles also ran at {what}"
    return 0.0, 0.0, f"not checked at {sizes[-1][0]}: the captured graph does not run there" if sizes else ""


def run_oracles(dg, inputs: tuple, kwargs: dict, blocks=(), *, seed: int = 0, removal: float = 1 / 3,
                rtol: float = 1e-9, raise_on_mismatch: bool = True, name: str = "model") -> VerifyReport:
    """Both oracles on ``dg`` (a float64 analysis whose graph inputs are ``inputs``/``kwargs``), with
    ``blocks`` (whole blocks, :class:`fxprune.passes.Block`) removed as well; :func:`fxprune.verify` is the verb."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad(), _float64_default():
        branches = tuple(br for b in blocks for br in b.branches)
        silenced = silence_branches(runnable(dg.gm), branches) if branches else runnable(dg.gm)
        ref = silenced(*inputs, **kwargs)
        perm = {g.atom: torch.randperm(g.size, generator=gen) for g in dg.groups}
        failures: list = []
        perm_err, _ = _pruned_error(ref, dg.gm, perm, inputs, kwargs, "permutation", failures, branches)
        safe = [g for g in dg.groups if g.mixing is None]
        keep = {g.atom: _random_keep(g.size, removal, gen) for g in safe}
        zeroed = copy.deepcopy(dg.gm)
        _zero_removed_consumers(zeroed, keep)
        rem_ref = silence_branches(runnable(zeroed), branches) if branches else runnable(zeroed)
        rem_err, removed = _pruned_error(rem_ref(*inputs, **kwargs), zeroed, keep, inputs, kwargs,
                                         "removal", failures, branches)
        second = _at_second_batch(dg.gm, zeroed, perm, keep, inputs, kwargs, failures, branches)
        perm_err, rem_err = max(perm_err, second[0]), max(rem_err, second[1])
    share = 0.0 if removed is None else 1.0 - _numel(removed) / max(1, _numel(dg.gm))
    report = VerifyReport(len(dg.groups), sum(g.size for g in dg.groups), perm_err, len(safe), rem_err,
                          [(g.name, g.mixing) for g in dg.groups if g.mixing is not None], rtol, share, failures,
                          blocks=tuple(b.name for b in blocks), second=second[2])
    if raise_on_mismatch and not report.passed:
        raise OracleMismatchError(f"pruned {name} does not compute what the original "
                                  f"computes; a rule misses a coupling:\n{report}")
    return report
