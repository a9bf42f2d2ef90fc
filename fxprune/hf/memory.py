"""How much memory pruning a checkpoint takes, in memory or streamed, and which path the CLI takes.

Note [Choosing the path]
~~~~~~~~~~~~~~~~~~~~~~~~
``fxprune hf:DIR --out OUT`` either loads the model and prunes it in place (a
certificate, the fresh-analysis oracles, a round trip) or streams the safetensors
shards (Note [Streamed pruning] in ``stream.py``; bit-identical result, memory in
proportion to one shard). Before loading anything, :func:`choose_path` estimates
the peak of both from the checkpoint's headers:

* in memory: the process as it is now, plus the libraries the run imports, plus
  the model in its dtype, plus the largest of the phases that follow one another
  and free what they used: the certificate (a copy of the model in the check
  dtype and its permuted rewrite), the fresh-analysis oracles (four float64
  copies: the model, its permuted and zeroed copies and the removal rewrite, and
  one more for the copy being made), the
  pruning (the pruned graph's tensors, the in-place trials' saved tensors, the
  checkpoint loaded back for the round trip). The last is measured, not derived:
  16.7 bytes per parameter on a bf16 LLaMA of 156M parameters (peak 4.24 GiB with
  --in-memory), several float32 copies' worth; where it goes is not yet known,
  and :data:`PRUNING_PER_PARAM` holds it with a margin;
* streamed: the process, the libraries, an output shard twice (safetensors
  serializes a copy), the tensors held for a decision (one decoder layer, capped
  by ``hold_bytes``), and the largest tensor as read and scored in float64.

The checks in float64 need eight bytes per parameter four times over: they run
only where that is under :data:`FLOAT64_LIMIT` (and fits). A larger model gets a
float32 certificate and no fresh-analysis oracles, and the CLI says so. The
default path is in memory only where the model is small enough for the float64
checks and the estimate fits in free memory (``MemAvailable``); otherwise it
streams. ``--in-memory`` takes the in-memory path anyway (float32 checks for a
large model) and fails with exit 7 when its estimate exceeds free memory.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

import torch

from .checkpoint import Checkpoint, parse_size

__all__ = ["Estimate", "PathChoice", "available_bytes", "rss_bytes", "estimate_in_memory", "estimate_streamed",
           "choose_path", "FLOAT64_LIMIT", "LIBRARIES"]

FLOAT64_LIMIT = 4 * 2**30  # the float64 checks' four copies of the model at most this
LIBRARIES = 768 * 2**20  # torch.export, dynamo, a transformers model class and their workspace, once imported
CAPTURE = 2**30  # in memory: the libraries, the captured graphs and their metadata (measured 0.9-1.0 GiB at 0.1 GB)
PRUNING_PER_PARAM = 20  # bytes per parameter of the in-place pruning phase: measured, not derived (Note below)
GiB = 2**30


def _meminfo(key: str, path: str) -> Optional[int]:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_bytes() -> Optional[int]:
    """``MemAvailable`` from /proc/meminfo (None off Linux)."""
    return _meminfo("MemAvailable", "/proc/meminfo")


def rss_bytes() -> int:
    """This process's resident memory now (``VmRSS``; 0 off Linux)."""
    return _meminfo("VmRSS", "/proc/self/status") or 0


@dataclass(frozen=True)
class Estimate:
    """A path's estimated peak resident memory, by part (bytes)."""

    path: str  # "in memory" or "streamed"
    parts: tuple  # ((what, bytes), ...)
    check_dtype: Optional[torch.dtype] = None  # the certificate's dtype (in memory), None if not checked
    oracles: bool = False  # whether the fresh-analysis float64 oracles run

    @property
    def total(self) -> int:
        return sum(b for _, b in self.parts)

    def __str__(self) -> str:
        parts = " + ".join(f"{what} {b / GiB:.2f}" for what, b in self.parts)
        return f"{self.path} {self.total / GiB:.2f} GiB ({parts})"


def _numel(ck: Checkpoint) -> int:
    return sum(math.prod(t.shape) for t in ck.tensors.values())


def estimate_in_memory(ck: Checkpoint, *, check: bool = True, force_float32: bool = False) -> Estimate:
    """The in-memory path's peak for checkpoint ``ck`` (see Note [Choosing the path]).

    Example::

        >>> import os, tempfile, torch, safetensors.torch as st
        >>> d = tempfile.mkdtemp(); st.save_file({"w": torch.zeros(1000, 1000)}, os.path.join(d, "model.safetensors"))
        >>> e = estimate_in_memory(Checkpoint(d))
        >>> e.check_dtype, e.oracles, dict(e.parts)["model"]
        (torch.float64, True, 4000000)
    """
    n, model = _numel(ck), ck.nbytes
    f64 = check and not force_float32 and 4 * 8 * n <= FLOAT64_LIMIT
    dtype = None if not check else torch.float64 if f64 else torch.float32
    phases = [("pruning", max(2 * model, PRUNING_PER_PARAM * n))]
    if check:
        phases.append(("certificate", 2 * n * dtype.itemsize))
    if f64:
        phases.append(("oracles", 5 * 8 * n))  # four float64 copies and a transient one (measured: 4 too few)
    what, peak = max(phases, key=lambda p: p[1])
    parts = (("process", rss_bytes()), ("libraries and capture", CAPTURE), ("model", model), (what, peak))
    return Estimate("in memory", parts, dtype, f64)


def estimate_streamed(ck: Checkpoint, *, max_shard_size="512MB", hold_bytes: int = 2**30) -> Estimate:
    """The streamed path's peak for checkpoint ``ck`` (see Note [Choosing the path])."""
    shard = min(parse_size(max_shard_size), ck.nbytes)
    largest = max((math.prod(t.shape) for t in ck.tensors.values()), default=0)
    layer = _largest_layer(ck)
    parts = (("process", rss_bytes()), ("libraries", LIBRARIES), ("output shard x2", 2 * shard),
             ("held tensors", min(hold_bytes, layer)), ("largest tensor in float64", 8 * largest))
    return Estimate("streamed", parts)


def _largest_layer(ck: Checkpoint) -> int:
    """Bytes of the largest numbered block (``...layers.3.``), or of the largest tensor."""
    blocks: dict = {}
    for name, t in ck.tensors.items():
        m = re.search(r"\.(\d+)\.", name)
        key = name[:m.end()] if m else name
        blocks[key] = blocks.get(key, 0) + t.nbytes
    return max(blocks.values(), default=0)


@dataclass(frozen=True)
class PathChoice:
    """What :func:`choose_path` decided: ``stream``, the estimate of the path taken, why."""

    stream: bool
    estimate: Estimate
    why: str
    available: Optional[int]

    def __str__(self) -> str:
        free = "unknown" if self.available is None else f"{self.available / GiB:.2f} GiB"
        return f"{self.why}; estimated peak {self.estimate} (free memory {free})"


def choose_path(path: str, *, stream: bool = False, in_memory: bool = False, check: bool = True,
                max_shard_size="512MB") -> PathChoice:
    """Which path ``fxprune hf:PATH --out`` takes (Note [Choosing the path]); raises :class:`MemoryError`
    where ``in_memory`` is forced and its estimate exceeds free memory."""
    ck = Checkpoint(path)
    avail = available_bytes()
    mem = estimate_in_memory(ck, check=check, force_float32=False)
    if stream:
        return PathChoice(True, estimate_streamed(ck, max_shard_size=max_shard_size), "--stream", avail)
    if in_memory:
        if avail is not None and mem.total > avail:
            raise MemoryError(f"--in-memory: pruning {path} in memory needs about {mem.total / GiB:.2f} GiB "
                              f"({mem}) and {avail / GiB:.2f} GiB is free; drop --in-memory to stream it "
                              "tensor by tensor, or free memory")
        return PathChoice(False, mem, "--in-memory" + _dtype_note(mem), avail)
    if check and not mem.oracles:
        why = (f"streamed: {_numel(ck) / 1e6:.0f}M parameters are too many for the in-memory path's float64 "
               f"checks (four float64 copies over {FLOAT64_LIMIT / GiB:.0f} GiB); --in-memory prunes it in memory "
               "with a float32 certificate")
        return PathChoice(True, estimate_streamed(ck, max_shard_size=max_shard_size), why, avail)
    if avail is not None and mem.total > avail:
        why = f"streamed: the in-memory path needs about {mem.total / GiB:.2f} GiB, more than is free"
        return PathChoice(True, estimate_streamed(ck, max_shard_size=max_shard_size), why, avail)
    return PathChoice(False, mem, "in memory: the model and its float64 checks fit" if check else
                      "in memory: the model fits", avail)


def _dtype_note(mem: Estimate) -> str:
    if mem.check_dtype is torch.float32:
        return ("; certificate in float32 and no fresh-analysis float64 oracles: four float64 copies of this model "
                f"are over {FLOAT64_LIMIT / GiB:.0f} GiB")
    return ""
