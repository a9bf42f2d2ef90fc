"""The checked trace's graph run reuses the eager run's convolutions and linear layers.

Note [Replayed leaves]
~~~~~~~~~~~~~~~~~~~~~~
The checked trace (Note [Checked trace] in ``capture/frontends.py``) runs the
model and its traced graph on the example and compares the outputs. A
symbolic_trace graph calls the model's own leaf modules (the same objects), and
nearly all the arithmetic of both runs is in the convolutions and linear layers.
So the eager run records, for each call of such a layer, its input and its
output; the graph run, when it calls the same layer on an input equal to
a recorded one (same shape, dtype, and every element equal, ``torch.equal``),
takes the recorded output instead of computing it again.

This proves the same thing as computing it: a torch convolution or linear
layer is a deterministic function of its input and parameters (eval mode, no
RNG), so the graph run's every value is bit for bit what a full run would give,
and its outputs are compared with the model's as before. Where the graph feeds a
layer anything else (a trace of another branch), the input differs, nothing is
replayed and the layer computes. Only layers whose ``forward`` is torch's own
are replayed (not subclasses that override it); copies are taken when recorded,
nothing is copied: a record is replayed only while the version counters of its
input and output are unchanged (an in-place edit after the call, in either run,
bumps them), never into a tensor that shares storage with the model's outputs
(the graph could edit the very reference it is compared with), and once.
Recording stops at :data:`BUDGET_BYTES` of recorded tensors (the rest computes).
Meta-device runs have no values and replay nothing.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn

__all__ = ["replayed_leaves", "BUDGET_BYTES"]

BUDGET_BYTES = 512 << 20
_KINDS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_FORWARDS = {k.forward for k in _KINDS}


def _replayable(m: nn.Module) -> bool:
    return isinstance(m, _KINDS) and type(m).forward in _FORWARDS and "forward" not in m.__dict__


class _Calls:
    """Recorded (input, output) per module, with their version counters; each replayed at most once."""

    def __init__(self) -> None:
        self.calls: dict = {}
        self.bytes = 0

    def record(self, m: nn.Module, x: torch.Tensor, out: torch.Tensor) -> None:
        size = (x.numel() * x.element_size()) + (out.numel() * out.element_size())
        if self.bytes + size > BUDGET_BYTES:
            return
        self.bytes += size
        self.calls.setdefault(id(m), []).append([x, x._version, out, out._version])

    def forget_aliases_of(self, outputs: list) -> None:
        """Drop the records whose output shares storage with the model's outputs: a replayed tensor the
        graph edits in place must never be the reference it is compared with."""
        try:
            ptrs = {t.untyped_storage().data_ptr() for t in outputs if isinstance(t, torch.Tensor)}
        except Exception:  # an output without plain storage (sparse, nested): replay nothing
            self.calls.clear()
            return
        for calls in self.calls.values():
            for call in calls:
                if call[2] is not None and call[2].untyped_storage().data_ptr() in ptrs:
                    call[2] = None

    def take(self, m: nn.Module, x: torch.Tensor):
        for call in self.calls.get(id(m), ()):
            seen, seen_v, out, out_v = call
            if out is None or seen._version != seen_v or out._version != out_v:
                continue  # replayed already, or edited in place since the call
            if seen.shape == x.shape and seen.dtype == x.dtype and torch.equal(seen, x):
                call[2] = None
                return out
        return None


def _single_tensor(args: tuple, kwargs: dict) -> bool:
    return len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor) and not args[0].is_meta


@contextlib.contextmanager
def replayed_leaves(model: nn.Module) -> Iterator:
    """``with replayed_leaves(model) as (record, replay):`` run the eager model inside ``record()``
    and the graph inside ``replay()`` (Note [Replayed leaves]). The instance attributes set on
    ``model``'s layers (a structural copy's: never the user's) are removed on exit."""
    layers = [m for m in {id(m): m for m in model.modules()}.values() if _replayable(m)]
    calls = _Calls()

    def install(wrap):
        for m in layers:
            m.__dict__["forward"] = wrap(m, type(m).forward.__get__(m))

    def recording(m, forward):
        def run(*args, **kwargs):
            out = forward(*args, **kwargs)
            if _single_tensor(args, kwargs) and isinstance(out, torch.Tensor):
                calls.record(m, args[0], out)
            return out
        return run

    def replaying(m, forward):  # the caller has run calls.forget_aliases_of(model outputs)
        def run(*args, **kwargs):
            out = calls.take(m, args[0]) if _single_tensor(args, kwargs) else None
            return forward(*args, **kwargs) if out is None else out
        return run

    @contextlib.contextmanager
    def mode(wrap):
        install(wrap)
        try:
            yield calls
        finally:
            for m in layers:
                m.__dict__.pop("forward", None)

    try:
        yield (lambda: mode(recording)), (lambda: mode(replaying))
    finally:
        calls.calls.clear()
