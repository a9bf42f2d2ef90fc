"""Whole blocks removed in place: layers leave their ``ModuleList``, indices and the config follow.

Note [Layers in place]
~~~~~~~~~~~~~~~~~~~~~~
A block removed in place must be an element of a ``ModuleList`` (``model.layers.3``).
After the width transaction (Note [In place] in ``fxprune/checks/inplace.py``), a
second one:

1. the kept elements become the new list, in order;
2. every module inside a kept layer whose ``layer_idx`` is the layer's old index
   gets its new one, so the KV cache (indexed by ``layer_idx``) stays dense;
3. on an HF model, ``config.num_hidden_layers`` takes the new count where it counted
   that list, every config list with one entry per layer (``layer_types``,
   sliding-window patterns, per-layer widths) keeps the kept layers' entries, and the
   per-layer shapes of the ``fxprune`` section are renamed to the new indices;
4. the eager forward must compute the pruned graph (branches removed), and so must
   the model a checkpoint loads (rebuilt from the config read back from JSON).

Steps 3 and the checkpoint check of 4 belong to the HF room, which registers them
(``register_layer_step``, called by ``fxprune/hf/inplace.py``).

Whatever fails, both transactions are undone: the model comes back as it was.
"""
from __future__ import annotations

import re
from typing import Optional

import torch.nn as nn

from .inplace import InPlaceMismatchError, _check, _Transaction, _transaction, undone_on_failure
from ..errors import FxPruneError

__all__ = ["apply_inplace_depth", "removal_plan", "register_layer_step"]


def removal_plan(model: nn.Module, blocks) -> dict:
    """``{ModuleList path: sorted removed indices}``; raises where a block is not a list element."""
    plan: dict = {}
    for b in blocks:
        parent, _, idx = b.name.rpartition(".")
        holder = model.get_submodule(parent) if parent else None
        if not idx.isdigit() or not isinstance(holder, nn.ModuleList):
            raise FxPruneError(f"block {b.name!r} is not an element of an nn.ModuleList, so it cannot be removed "
                               "in place; use inplace=False (the returned GraphModule drops it)")
        plan.setdefault(parent, set()).add(int(idx))
    return {k: sorted(v) for k, v in plan.items()}


def _renumber(layer: nn.Module, old: int, new: int) -> None:
    for m in layer.modules():
        if m.__dict__.get("layer_idx") == old:
            m.layer_idx = new


def _drop(model: nn.Module, path: str, removed: list) -> list:
    """Remove the elements of the ModuleList at ``path``; returns the kept old indices."""
    holder = model.get_submodule(path)
    kept = [i for i in range(len(holder)) if i not in set(removed)]
    layers = [holder[i] for i in kept]
    holder._modules.clear()
    for new, (old, layer) in enumerate(zip(kept, layers)):
        holder._modules[str(new)] = layer
        _renumber(layer, old, new)
    return kept


def _rename(name: str, path: str, index: dict) -> Optional[str]:
    m = re.match(rf"^{re.escape(path)}\.(\d+)(\..*)?$", name)
    if m is None:
        return name
    new = index.get(int(m.group(1)))
    return None if new is None else f"{path}.{new}{m.group(2) or ''}"


# Note [Layer steps]: what a model's own room must do when its layers go away (an HF model's config
# follows, and the model its checkpoint loads must compute the same). fxprune.hf.inplace registers
# its steps here, as it does for widths (Note [In-place steps] in checks/inplace.py).
_LAYER_STEPS: list = []  # (predicate, follow(model, tx, path, kept, n_old), rebuilt_check(model) -> step)


def register_layer_step(predicate, follow, rebuilt_check) -> None:
    """On a model ``predicate`` accepts, removing layers in place calls ``follow`` for each list and runs
    ``rebuilt_check(model)``'s step in the final check."""
    _LAYER_STEPS.append((predicate, follow, rebuilt_check))


def _depth_transaction(model: nn.Module, dg, graph, blocks) -> Optional[str]:
    mine = [(follow, rebuilt) for predicate, follow, rebuilt in _LAYER_STEPS if predicate(model)]
    tx = _Transaction(model)
    try:
        for path, removed in removal_plan(model, blocks).items():
            n_old = len(model.get_submodule(path))
            kept = _drop(model, path, removed)
            for follow, _ in mine:
                follow(model, tx, path, kept, n_old)
        steps = tuple(rebuilt(model) for _, rebuilt in mine)
        problem = _check(model, dg, graph, None, steps)
    except Exception:
        tx.restore()
        raise
    if problem:
        tx.restore()
    return problem


def apply_inplace_depth(dg, width_graph, depth_graph, blocks, edit=None) -> nn.Module:
    """Width in place (``width_graph``, as :func:`fxprune.checks.inplace.apply_inplace`), then the ``blocks``
    removed (Note [Layers in place]); the eager model must compute ``depth_graph``. One transaction for both."""
    model = dg.model
    removal_plan(model, blocks)  # refuse before anything changes
    tx, _, problem = _transaction(model, dg, width_graph, None, None, edit)
    if problem:
        tx.restore()
        raise InPlaceMismatchError(f"in-place pruning of {type(model).__name__} was undone: {problem}")
    with undone_on_failure(tx, f"removing blocks of {type(model).__name__} in place"):
        problem = _depth_transaction(model, dg, depth_graph, blocks)
    if problem:
        tx.restore()
        raise InPlaceMismatchError(f"removing blocks of {type(model).__name__} in place was undone: {problem}. "
                                   "The pruned graph is right; use inplace=False")
    for p in tx.resized:
        if p.grad is not None and p.grad.shape != p.shape:
            p.grad = None
    return model
