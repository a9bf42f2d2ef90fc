"""Training mode: capture in eval mode, never touch the user's model, and refuse what a graph froze.

Note [Training mode]
~~~~~~~~~~~~~~~~~~~~
A captured graph is a snapshot of one mode. fxprune always captures, counts,
scores and checks an *eval-mode structural copy* (:func:`eval_copy`): every
module is copied shallowly with ``training=False`` and its own containers,
while the parameters and buffers are the model's own tensors. So no flag of
the user's model is flipped, even for a moment, and no forward pass updates
its BatchNorm statistics, in whatever mode the model is. (A forward that
writes into its own buffers in eval mode, such as a hand-made KV cache, still
writes into the shared tensors; fxprune's own passes run no such write.)

What the pruned model can do in ``train()`` depends on the front end:

* ``symbolic_trace`` keeps module calls (``call_module``): BatchNorm and
  Dropout modules follow the pruned model's own ``train()``/``eval()``, as in
  the original. Python that *reads* ``self.training`` (``F.dropout(x, p,
  self.training)``, stochastic depth, ``if self.training:``) is frozen at trace
  time. The trace records every read of ``training`` by a module it traces
  through (:func:`reads_training`; leaf modules such as BatchNorm and Dropout
  are not traced through). Only where one happened, we trace a second copy
  with ``training=True`` and compare the code (:func:`mode_difference`);
  where they differ, the pruned model refuses ``train()`` with
  :class:`~fxprune.errors.TrainModeError` naming the line.
* ``torch.export`` graphs are aten graphs in which every mode-dependent op
  (``batch_norm``'s training flag, dropout) is frozen: the pruned model refuses
  ``train()``.

``eval()`` is always allowed. A pruned model that can train is returned with
the original's per-module training flags; one that cannot is returned in eval
mode. The refusal survives ``copy.deepcopy``, pickling and re-analysis
(iterative pruning); :func:`fxprune.save`/:func:`fxprune.load` restore it.
"""
from __future__ import annotations

import contextlib
import difflib
from collections import OrderedDict
from typing import Callable, Iterator, Optional

import torch
import torch.fx as fx
import torch.nn as nn

from fxprune.passes import keys

from ..errors import TrainModeError

__all__ = ["on_meta", "eval_copy", "reads_training", "mode_difference", "EvalOnlyGraphModule", "refuse_train", "train_refusal",
           "training_flags", "restore_flags", "EXPORT_FROZEN"]

REFUSAL_KEY = keys.TRAIN_REFUSED
EXPORT_FROZEN = ("it was captured by torch.export, whose aten graph freezes every mode-dependent op in eval mode "
                 "(BatchNorm uses its running statistics, dropout is off)")
_FIX = ("Fix: to fine-tune, prune the model itself in place (fxprune.apply(dg, keep, inplace=True)), or make "
        "the forward traceable by torch.fx.symbolic_trace without reading self.training (use nn.Dropout modules instead of F.dropout(x, p, self.training)).")


def on_meta(model: nn.Module, inputs=()) -> bool:
    """Whether a parameter or buffer of ``model``, or a tensor anywhere in ``inputs``, is on the meta
    device: there are no values to run, score, check or save."""
    from torch.utils._pytree import tree_flatten

    tensors = [*model.parameters(), *model.buffers(), *tree_flatten(inputs)[0]]
    return any(isinstance(t, torch.Tensor) and t.is_meta for t in tensors)


def eval_copy(model: nn.Module, training: bool = False, own_buffers: bool = False) -> nn.Module:
    """A structural copy of ``model`` whose every module has ``training`` set as given.

    Modules are copied shallowly (own ``_modules``, ``_parameters``, ``_buffers`` and hook
    dicts); tensors are shared, so the copy costs no tensor memory. Shared submodules stay
    shared. Flipping the copy's flags, or registering hooks on it, never touches ``model``.
    ``own_buffers`` clones the buffers too, for a copy whose forward may run in training mode:
    a traced forward executes in-place updates of plain tensor attributes (timm's
    ``BatchNormAct2d`` counts ``num_batches_tracked`` in Python), which must not reach ``model``.
    """
    memo: dict = {}

    def clone(m: nn.Module) -> nn.Module:
        if id(m) in memo:
            return memo[id(m)]
        new = object.__new__(type(m))  # not GraphModule.__new__: keep the class that holds forward
        memo[id(m)] = new
        state = dict(m.__dict__)
        for k, v in state.items():
            if k.startswith("_") and type(v) in (dict, OrderedDict, set, list):
                state[k] = type(v)(v)
        state["_modules"] = {k: None if c is None else clone(c) for k, c in m._modules.items()}
        if own_buffers:
            state["_buffers"] = {k: None if b is None else b.clone() for k, b in m._buffers.items()}
        state["training"] = training
        state.pop("train", None), state.pop("eval", None)  # torch.export's refusing overrides
        new.__dict__ = state
        return new

    return clone(model)


_WATCHED: dict = {}  # class -> its subclass whose ``training`` is a property that logs reads


def _watched_class(cls: type) -> type:
    if cls not in _WATCHED:
        def get(self):
            self.__dict__.get(keys.TRAINING_LOG_ATTR, []).append(type(self).__mro__[1])
            return self.__dict__["training"]

        def put(self, value):
            self.__dict__["training"] = value
        _WATCHED[cls] = type(cls.__name__, (cls,), {"training": property(get, put), "__module__": cls.__module__,
                                                   "__qualname__": cls.__qualname__})
    return _WATCHED[cls]


@contextlib.contextmanager
def reads_training(copy_: nn.Module) -> Iterator[Optional[list]]:
    """While active, reads of ``training`` on the modules of ``copy_`` (an :func:`eval_copy`,
    whose classes are swapped for the time being) are appended to the yielded list. Yields
    None where a class cannot be swapped (then every read must be assumed)."""
    log: list = []
    swapped = []
    try:
        for m in copy_.modules():
            cls = type(m)
            m.__class__ = _watched_class(cls)
            m.__dict__[keys.TRAINING_LOG_ATTR] = log
            swapped.append((m, cls))
    except Exception:  # a class whose layout or metaclass does not allow it
        log = None
    try:
        yield log
    finally:
        for m, cls in swapped:
            m.__class__ = cls
            m.__dict__.pop(keys.TRAINING_LOG_ATTR, None)


def _code(gm: fx.GraphModule) -> list:
    return [line.rstrip() for line in gm.code.splitlines() if line.strip()]


def mode_difference(eval_gm: fx.GraphModule, trace_train: Callable[[], fx.GraphModule]) -> Optional[str]:
    """Why a graph traced in eval mode does not also hold in train mode, or None if it does.

    ``trace_train`` traces a copy of the model with every ``training`` flag True.
    """
    try:
        train_gm = trace_train()
    except Exception as e:
        return f"its forward in train mode cannot be traced ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    a, b = _code(eval_gm), _code(train_gm)
    if a == b:
        return None
    for line in difflib.unified_diff(a, b, lineterm="", n=0):
        if line.startswith("-") and not line.startswith("---"):
            return (f"its forward reads self.training (e.g. F.dropout(x, p, self.training), stochastic depth, "
                    f"`if self.training:`), which tracing froze in eval mode: `{line[1:].strip()[:160]}`")
    return "its forward reads self.training, which tracing froze in eval mode"


class EvalOnlyGraphModule(fx.GraphModule):
    """A pruned graph frozen in eval mode: ``eval()`` works, ``train()`` raises :class:`TrainModeError`."""

    def train(self, mode: bool = True):
        if mode:
            why = self.meta.get(REFUSAL_KEY, "its graph froze a mode-dependent branch in eval mode")
            raise TrainModeError(f"this pruned model cannot run in train mode: {why}. It computes the "
                                 f"original's eval-mode function; eval() is fine. {_FIX}")
        return super().train(False)

    def __copy__(self):
        return refuse_train(super().__copy__(), self.meta.get(REFUSAL_KEY, ""))

    def __reduce__(self):
        fn, args = super().__reduce__()
        return (_rebuild, (fn, args, self.meta.get(REFUSAL_KEY, "")))


def _rebuild(fn, args, reason: str) -> fx.GraphModule:
    return refuse_train(fn(*args), reason)


def refuse_train(gm: fx.GraphModule, reason: str) -> fx.GraphModule:
    """Turn ``gm`` (in place) into an :class:`EvalOnlyGraphModule` in eval mode; returns it."""
    gm.meta[REFUSAL_KEY] = reason
    if not isinstance(gm, EvalOnlyGraphModule):
        gm.__dict__.pop("train", None), gm.__dict__.pop("eval", None)
        gm.__class__ = type("GraphModuleImpl", (EvalOnlyGraphModule,), {})
        gm.recompile()  # forward lives on the per-instance class
    for m in gm.modules():
        m.training = False
    return gm


def train_refusal(model: nn.Module) -> Optional[str]:
    """Why ``model`` (a graph fxprune returned) refuses ``train()``, or None."""
    meta = getattr(model, "meta", None)
    return meta.get(REFUSAL_KEY) if isinstance(meta, dict) else None


def training_flags(model: nn.Module) -> dict:
    """``{module name: training}`` of every module."""
    return {name: m.training for name, m in model.named_modules()}


def restore_flags(model: nn.Module, flags: dict) -> None:
    """Give the modules of ``model`` the training flags recorded for the same names."""
    for name, m in model.named_modules():
        if name in flags:
            m.training = flags[name]
