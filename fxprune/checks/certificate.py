"""The certificate every pruning result carries: the permutation oracle on the analysis it used.

Note [Certified by default]
~~~~~~~~~~~~~~~~~~~~~~~~~~~
``fxprune.prune`` and ``fxprune.apply`` (``check=True``, the default) run the
permutation oracle on the very ``DependencyGraph`` they pruned with: every
group keeps all its coordinates in a random order, and the rewritten graph must
compute what the captured graph computes. A missed coupling changes the
outputs (relative errors of 0.1 to 1); float64 rounding is ~1e-16.

* The check runs on a float64 copy of the captured graph, at the example's
  size. Where that copy does not fit (three float64 copies of the tensors must
  fit in half the free memory of their device), it runs in float32 on the graph
  itself against float32 noise (rtol 1e-3: permuting sums changes float32 results
  by ~1e-6, a missed coupling by ~1e-1); the certificate says which and why.
* The capture itself was checked against the model when it was made (Note
  [Checked trace]); a folded capture is checked against the model here.
* Models on the meta device carry no values: the certificate says it was skipped.
* The oracle runs again at a second batch size (Note [Second size] in checks/second.py): a
  size rewritten right at the example's batch only is a mismatch, never exact.
* Every output is compared by :func:`~fxprune.compare.relative_error`: NaN and inf by
  position, finite values by error (Note [NaN and inf]).
* The capture computes what the user's model computes on the user's own example: a symbolic
  trace is checked against it (Note [Checked trace]), a capture widened to batch 2 for
  ``torch.export`` too (Note [Dynamic dims]), and falls back to a static capture otherwise.

The certificate is a :class:`Certificate` in ``pruned.meta["fxprune.certificate"]``
(and ``pruned.fxprune_certificate``). A mismatch raises :class:`OracleMismatchError`:
a rule is wrong, and no result is returned.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
from torch.utils._pytree import tree_map

from fxprune.passes import fold_registry, keys, rewrite_graph, runnable

from ..capture.modes import on_meta
from ..errors import OracleMismatchError
from .precision import cast_value, promote_casts
from ..compare import plain_outputs, relative_error
from .second import second_sizes

__all__ = ["Certificate", "certify", "attach", "CERTIFICATE_KEY", "FLOAT32_RTOL", "FLOAT64_RTOL"]

CERTIFICATE_KEY = keys.CERTIFICATE
FLOAT64_RTOL, FLOAT32_RTOL, HALF_RTOL = 1e-9, 1e-3, 5e-2


@dataclass(frozen=True)
class Certificate:
    """What was checked about a pruning result.

    Attributes:
        oracle: ``"permutation"``.
        dtype: the precision the check ran in (``"float64"``, ``"float32"``, ...), or ``"none"`` if skipped.
        error: the largest relative output error found.
        rtol: the largest accepted.
        seconds: wall time of the check.
        groups, coordinates: what was permuted.
        note: why the check ran below float64 or was skipped; what else was checked.
    """

    oracle: str
    dtype: str
    error: float
    rtol: float
    seconds: float
    groups: int
    coordinates: int
    note: str = ""

    @property
    def checked(self) -> bool:
        return self.dtype != "none"

    @property
    def passed(self) -> bool:
        return not self.checked or self.error <= self.rtol

    def __str__(self) -> str:
        if not self.checked:
            return f"{self.oracle} oracle skipped: {self.note}"
        verdict = "exact" if self.passed else "MISMATCH"
        text = (f"{self.oracle} oracle {verdict} ({self.dtype}, {self.groups} groups, {self.coordinates} coords, "
                f"max rel. error {self.error:.2e}, rtol {self.rtol:g}, {self.seconds:.2f} s)")
        return text + (f"; {self.note}" if self.note else "")


def _tensors(gm: nn.Module) -> list:
    return [*gm.parameters(), *gm.buffers()]


def _free_bytes(device: torch.device) -> Optional[int]:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _choose_dtype(gm: nn.Module, max_bytes: Optional[int]) -> tuple:
    """(dtype of the copy to check, or None to check the graph itself; why not float64)."""
    floats = [t for t in _tensors(gm) if t.is_floating_point()]
    numel = sum(t.numel() for t in floats)
    budget = max_bytes if max_bytes is not None else _free_bytes(floats[0].device if floats else torch.device("cpu"))
    own = floats[0].dtype if floats else torch.float32

    def fits(dtype) -> bool:  # the copy, its permuted rewrite, and as much again for activations
        return budget is None or 3 * numel * dtype.itemsize <= budget // 2

    if fits(torch.float64):
        return torch.float64, ""
    if own.itemsize < 4 and fits(torch.float32):
        return torch.float32, _why(numel, budget)
    return None, _why(numel, budget)


def _why(numel: int, budget: Optional[int]) -> str:
    return (f"a float64 copy of {numel / 1e6:.1f}M parameter entries does not fit in half of "
            f"{(budget or 0) / 2**30:.1f} GiB free memory")


def _inputs(dg) -> tuple:
    lifted = set(dg.lifted)
    return tuple(x for i, x in enumerate(dg.example_args) if i not in lifted), dict(dg.example_kwargs)


@torch.no_grad()
def _fold_error(dg, args: tuple, kwargs: dict) -> float:
    """A folded graph against the model itself (blocks folded together must really be alike)."""
    from ..capture.modes import eval_copy

    return relative_error(plain_outputs(eval_copy(dg.model)(*args, **kwargs)),
                          plain_outputs(runnable(dg.gm)(*args, **kwargs)))


@torch.no_grad()
def certify(dg, *, seed: int = 0, max_bytes: Optional[int] = None, raise_on_mismatch: bool = True) -> Certificate:
    """Run the permutation oracle on ``dg`` (see Note [Certified by default]).

    Args:
        dg: a :class:`fxprune.DependencyGraph`; not modified.
        seed: seeds the random permutations.
        max_bytes: memory the check may use (default: the free memory of the tensors' device).
        raise_on_mismatch: raise :class:`OracleMismatchError` when the outputs differ.

    Example::

        >>> import torch, fxprune
        >>> from fxprune.checks import certify
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> cert = certify(fxprune.analyze(net, (torch.randn(2, 4),)))
        >>> cert.passed, cert.dtype
        (True, 'float64')
    """
    start = time.perf_counter()
    args, kwargs = _inputs(dg)
    groups, coords = len(dg.groups), sum(g.size for g in dg.groups)
    if on_meta(dg.gm, args):
        return Certificate("permutation", "none", 0.0, 0.0, 0.0, groups, coords,
                           "the model is on the meta device: its tensors carry no values")
    notes = []
    folded = fold_registry(dg.gm) is not None
    if folded:
        err = _fold_error(dg, args, kwargs)
        notes.append(f"folded capture matches the model (rel. error {err:.1e})")
        if err > 1e-4:
            raise OracleMismatchError(
                f"the folded capture of {dg.source_name} does not compute what the model computes (max relative "
                f"error {err:.2e}): blocks folded together behave differently; use fold=False")
    dtype, why = _choose_dtype(dg.gm, max_bytes)
    gm = dg.gm
    if dtype is not None:
        gm = copy.deepcopy(dg.gm).to(dtype)
        args, kwargs = tree_map(lambda x: cast_value(x, dtype), args), tree_map(lambda x: cast_value(x, dtype), kwargs)
    if why:
        notes.insert(0, why)
    gen = torch.Generator().manual_seed(seed)
    perm = {g.atom: torch.randperm(g.size, generator=gen) for g in dg.groups}
    ref_gm, perm_gm = runnable(gm), rewrite_graph(gm, perm)
    if dtype is not None:  # the graph's casts to float32, and to a half model's own dtype, follow the copy
        own = next((t.dtype for t in _tensors(dg.gm) if t.is_floating_point()), torch.float32)
        source = (torch.float32, own) if own.itemsize < 4 else (torch.float32,)
        promote_casts(ref_gm, dtype, source), promote_casts(perm_gm, dtype, source)
    error = relative_error(plain_outputs(ref_gm(*args, **kwargs)), plain_outputs(perm_gm(*args, **kwargs)))
    second, note = _second_error(ref_gm, perm_gm, args, kwargs)
    error = max(error, second)  # the certificate's error is the worse of the two sizes
    notes.append(note)
    used = dtype or next((t.dtype for t in _tensors(dg.gm) if t.is_floating_point()), torch.float32)
    rtol = FLOAT64_RTOL if used is torch.float64 else FLOAT32_RTOL if used is torch.float32 else HALF_RTOL
    cert = Certificate("permutation", str(used).replace("torch.", ""), error, rtol, time.perf_counter() - start,
                       groups, coords, "; ".join(n for n in notes if n))
    if raise_on_mismatch and not cert.passed:
        raise OracleMismatchError(f"pruned {dg.source_name} does not compute what the original computes; a rule "
                                  f"misses a coupling (please report it):\n{cert}")
    return cert


def _second_error(ref_gm, perm_gm, args: tuple, kwargs: dict) -> tuple:
    """The oracle at the second size (Note [Second size]): (error, what the note says)."""
    sizes = second_sizes(args, kwargs)
    for what, args2, kwargs2 in sizes:
        try:
            ref = plain_outputs(ref_gm(*args2, **kwargs2))
        except Exception:  # noqa: BLE001 - the model fixes this size: try the next
            continue
        try:
            out = plain_outputs(perm_gm(*args2, **kwargs2))
        except Exception as e:  # noqa: BLE001 - the rewritten graph fails where the original runs: a mismatch
            first = (str(e).strip().splitlines() or [""])[0][:200]
            return float("inf"), f"at {what} the rewritten graph fails: {type(e).__name__}: {first}"
        err = relative_error(ref, out)
        return err, f"also at {what} (rel. error {err:.1e})"
    return 0.0, f"not checked at {sizes[-1][0]}: the captured graph does not run there" if sizes else ""


def attach(model: nn.Module, cert: Certificate) -> None:
    """Record ``cert`` on a result: ``model.meta[CERTIFICATE_KEY]`` (GraphModules, kept by deepcopy)
    and the attribute ``model.fxprune_certificate``."""
    meta = getattr(model, "meta", None)
    if isinstance(meta, dict):
        meta[CERTIFICATE_KEY] = cert
    model.__dict__[keys.CERTIFICATE_ATTR] = cert
