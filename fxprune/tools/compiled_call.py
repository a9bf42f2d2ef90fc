"""The function ``fxprune.backend`` hands back to dynamo: the pruned graph's call, guarded.

It drops the lifted parameter positions, refuses another module instance's parameters
(:class:`DifferentGraphError`) and refuses training through frozen pruned copies
(:class:`fxprune.TrainModeError`); see Note [Pruning inside torch.compile].
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils._pytree import tree_map

from ..errors import FxPruneError, TrainModeError

__all__ = ["drop_positions", "DifferentGraphError", "AHEAD"]

AHEAD = ("prune ahead of time instead: pruned = fxprune.prune(model, example_inputs, ...); "
         "torch.compile(pruned, backend=...)")


class DifferentGraphError(FxPruneError):
    """A backend instance was handed a second graph with other parameters."""


def drop_positions(compiled: Callable, lifted: dict) -> Callable:
    """Dynamo calls a backend's function with every graph input (unboxed, whatever a
    ``_boxed_call`` attribute copied by ``functools.wraps`` says); the pruned graph takes the rest.

    Dynamo's guards treat parameters as inputs: it reuses this function for another instance of
    the same module class (same code, other weights). The pruned graph has the first one's
    parameters frozen in, so a call with other parameter tensors is refused, never answered wrong.
    """
    if not lifted:
        return compiled

    def run(*args):
        for i, ref in lifted.items():
            if args[i] is not ref():
                raise DifferentGraphError(
                    "this torch.compile'd function was pruned by fxprune.backend with the parameters of "
                    "another module instance (dynamo reuses compiled code across instances of one class, "
                    "passing their parameters as inputs; the pruned graph has the first instance's frozen in). "
                    "Fix: torch._dynamo.reset() and create a new fxprune.backend(...) per model, or " + AHEAD)
        return compiled(*[a for i, a in enumerate(args) if i not in lifted])

    def run_checked(*args):
        out = run(*args)
        if not torch.is_grad_enabled():
            return out
        anchor = next((args[i] for i in lifted if isinstance(args[i], torch.Tensor) and args[i].requires_grad), None)
        if anchor is None:
            return out
        return tree_map(lambda t: _NoTraining.apply(t, anchor)
                        if isinstance(t, torch.Tensor) and t.is_floating_point() else t, out)

    run_checked.__wrapped__ = compiled
    return run_checked


class _NoTraining(torch.autograd.Function):
    """Identity whose backward refuses: training through frozen pruned copies updates nothing."""

    @staticmethod
    def forward(ctx, out, anchor):
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        raise TrainModeError(
            "training through a model compiled with fxprune.backend would update nothing: the compiled graph "
            "computes with pruned copies of the parameters frozen into it, not with the model's own parameters "
            "(which your optimizer holds). Fix: prune ahead of time and train the result: pruned = "
            "fxprune.prune(model, example_inputs, ...); torch.compile(pruned) (for input gradients only, freeze "
            "the model's parameters with requires_grad_(False))")
