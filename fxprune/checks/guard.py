"""What the public verbs check about a model and its example before any forward runs.

Note [Models fxprune refuses]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
fxprune runs the model several times (capture, MAC counts, the certificate), on
eval-mode structural copies that share the user's tensors. That keeps flags and
BatchNorm statistics unchanged, but not state a forward writes in any mode, and it
cannot prune what it cannot see. So, before the first forward:

* ``torch.compile(model)`` is unwrapped: its ``_orig_mod`` is what gets analysed
  (the compiled wrapper would otherwise be one opaque call: nothing pruned);
* quantization-aware models (``prepare_qat``: observers and fake-quantize modules
  update ``min_val``/``max_val``/``scale`` on every forward, eval mode included)
  and quantized ones (``quantize_dynamic``: packed int8 weights) are refused;
* parametrized modules (``torch.nn.utils.parametrize``, ``parametrizations.weight_norm``,
  ``spectral_norm``, ``orthogonal``) cannot be deep-copied, so a pruned *copy* of such a
  model is refused with the fix named (``explain_copy_failure``: torch's raw
  "Serialization of parametrized modules" error becomes an ``UnsupportedModelError``).
  Where no copy is needed (in-place pruning, an exported graph) the computed weight is
  analysed like any computation: the rules pin what it mixes (a weight norm's reduction
  over channels), so slicing the stored tensors never changes the weight wrongly;
* the example inputs are cloned (a GraphModule's are not: they may be the
  model's own parameters and buffers, lifted by torch.compile), so a forward that writes its input (``x.mul_(2)``)
  never changes the caller's tensors; if the model wrote them during capture, the
  run stops with :class:`InputMutationError` naming the input, instead of an
  oracle mismatch blamed on a rule.
"""
from __future__ import annotations

import contextlib

from typing import Optional

import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten, tree_map

from ..errors import CaptureError

__all__ = ["UnsupportedModelError", "InputMutationError", "unwrap_compiled", "refuse_unsupported", "explain_copy_failure", "own_inputs",
           "written_inputs"]


class UnsupportedModelError(CaptureError, ValueError):
    """A model fxprune cannot prune soundly (quantization-aware, quantized or parametrized modules)."""


class InputMutationError(UnsupportedModelError):
    """The model's forward writes its example inputs in place."""


def unwrap_compiled(model):
    """``model._orig_mod`` for ``torch.compile(model)`` (an ``OptimizedModule``), else ``model``."""
    from torch._dynamo.eval_frame import OptimizedModule

    while isinstance(model, OptimizedModule):
        model = model._orig_mod
    return model


def _quantization(m: nn.Module) -> Optional[str]:
    from torch.ao.quantization import FakeQuantizeBase, ObserverBase

    if isinstance(m, (ObserverBase, FakeQuantizeBase)):
        return ("it is quantization-aware (torch.ao.quantization.prepare_qat/prepare): its observers update "
                "min_val/max_val/scale on every forward, in eval mode too, and fxprune runs the model several "
                "times. Fix: prune the float model, then prepare_qat the pruned one")
    if type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized")):
        return ("it is quantized (torch.ao.quantization.quantize_dynamic/convert: packed integer weights fxprune "
                "cannot slice or check in float64). Fix: prune the float model, then quantize the pruned one")
    return None


def _parametrized(m: nn.Module) -> Optional[str]:
    from torch.nn.utils import parametrize

    if not parametrize.is_parametrized(m):
        return None
    names = ", ".join(f"{k} ({', '.join(type(p).__name__ for p in v)})" for k, v in m.parametrizations.items())
    return (f"its weights are parametrized ({names}: weight_norm, spectral_norm, orthogonal or "
            "torch.nn.utils.parametrize): the forward computes them, so slicing the stored tensors is not "
            "slicing the weight. Fix: torch.nn.utils.parametrize.remove_parametrizations(module, name) "
            "before pruning (it keeps the current weight), and parametrize the pruned model again if needed")


def refuse_unsupported(model) -> None:
    """Raise :class:`UnsupportedModelError` for a model of Note [Models fxprune refuses], before any forward."""
    if not isinstance(model, nn.Module):
        return
    for name, m in model.named_modules():
        why = _quantization(m)
        if why:
            raise UnsupportedModelError(f"{type(model).__name__} cannot be pruned: {_where(name, m)}: {why}")


def _where(name: str, m: nn.Module) -> str:
    return f"module {name!r} ({type(m).__name__})" if name else type(m).__name__


@contextlib.contextmanager
def explain_copy_failure(model):
    """Parametrized modules (weight_norm, spectral_norm, orthogonal, parametrize) cannot be deep-copied, and
    a pruned copy needs one: torch's ``RuntimeError`` becomes an :class:`UnsupportedModelError` naming the
    module and the fix. Where no copy is made (in-place pruning, a captured export graph) they are analysed
    like any other computation: the rules pin what the parametrization mixes (a weight norm's reduction)."""
    try:
        yield
    except RuntimeError as e:
        if "parametrized modules" not in str(e) or not isinstance(model, nn.Module):
            raise
        for name, m in model.named_modules():
            why = _parametrized(m)
            if why:
                raise UnsupportedModelError(f"{type(model).__name__} cannot be pruned into a copy: "
                                            f"{_where(name, m)}: {why}") from e
        raise


def _own(t):
    if isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter):
        return t.detach().clone().requires_grad_(t.requires_grad) if t.is_leaf else t.clone()
    return t


def own_inputs(model, args: tuple, kwargs: Optional[dict]) -> tuple:
    """Copies of the example tensors (parameters fed as inputs stay themselves), so no forward of
    fxprune's changes the caller's; with their version counters, to tell later whether one was written.
    A GraphModule's inputs are not copied: torch.compile's graphs take the model's parameters and
    buffers as inputs, and fxprune.backend matches them by identity."""
    if not isinstance(model, torch.fx.GraphModule):
        args, kwargs = tree_map(_own, tuple(args)), (tree_map(_own, dict(kwargs)) if kwargs else kwargs)
    leaves = [t for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, torch.Tensor)]
    return args, kwargs, [(t, t._version) for t in leaves]


def written_inputs(model, versions: list, args: tuple, kwargs: Optional[dict]) -> None:
    """Raise :class:`InputMutationError` if a forward wrote one of the (copied) example tensors."""
    written = [i for i, (t, v) in enumerate(versions) if t._version != v]
    if not written:
        return
    names = [f"positional input {i}" for i in range(len(args))] + [f"keyword input {k!r}" for k in (kwargs or {})]
    which = names[written[0]] if len(names) == len(versions) else f"example tensor {written[0]}"
    raise InputMutationError(
        f"{type(model).__name__}'s forward writes its {which} in place (an in-place op such as x.mul_(2), "
        "x += ..., or a hook that does): fxprune runs the model several times on the example, so every run "
        "would see other inputs and no check could hold. Your tensors were not changed (fxprune ran on "
        "copies). Fix: make the forward out of place (x = x * 2)")
