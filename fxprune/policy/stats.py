"""Gradient statistics for data-driven criteria (Taylor, Hessian/OBD)."""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._pytree import tree_map

__all__ = ["collect_stats", "default_loss"]


def default_loss(model: nn.Module, batch) -> torch.Tensor:
    """Cross-entropy of ``model(x)`` against ``y`` for a batch ``(x, y)``."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError("the default loss needs batches (inputs, labels); pass loss_fn=lambda model, batch: ... "
                         "for other batch shapes")
    x, y = batch
    return F.cross_entropy(model(x), y)


def _grads(model: nn.Module, params: dict, loss: torch.Tensor) -> list:
    names = list(params)
    grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
    return list(zip(names, grads))


def _samples(batch, limit: int):
    first = next(t for t in torch.utils._pytree.tree_leaves(batch) if isinstance(t, torch.Tensor))
    for i in range(min(limit, first.shape[0])):
        yield tree_map(lambda t: t[i:i + 1] if isinstance(t, torch.Tensor) else t, batch)


def collect_stats(model: nn.Module, data: Iterable, loss_fn: Optional[Callable] = None, *,
                  fisher: bool = False, fisher_samples: int = 64, per_batch: bool = False) -> dict:
    """Average gradient (and empirical-Fisher diagonal) of every parameter over ``data``.

    Runs in eval mode (no BatchNorm statistic is updated; the training flags are
    restored) and leaves every ``.grad`` untouched.

    Args:
        model: the model whose parameters are scored (e.g. ``dg.gm``).
        data: an iterable of batches, read once (``loss_fn(model, batch)`` must accept each).
        loss_fn: ``(model, batch) -> scalar``; default: cross-entropy of ``model(x)`` vs ``y``.
        fisher: also estimate ``E[g^2]`` from per-sample gradients (for the OBD criterion).
        fisher_samples: per-sample gradients taken from each batch for the Fisher estimate.
        per_batch: also keep every batch's gradient (``"batch_grads"``, a list; for Taylor).

    Returns:
        ``{parameter name: {"grad": tensor, "fisher": tensor (if requested)}}``.

    Example::

        >>> import torch, fxprune
        >>> net = torch.nn.Linear(3, 2)
        >>> st = fxprune.collect_stats(net, [(torch.randn(4, 3), torch.tensor([0, 1, 1, 0]))])
        >>> st["weight"]["grad"].shape
        torch.Size([2, 3])
    """
    loss_fn = loss_fn or default_loss
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    flags = {m: m.training for m in model.modules()}
    for m in flags:  # not model.eval(): graphs from torch.export refuse it
        m.training = False
    out = {n: {"grad": torch.zeros_like(p)} for n, p in params.items()}
    if per_batch:
        for st in out.values():
            st["batch_grads"] = []
    if fisher:
        for n, p in params.items():
            out[n]["fisher"] = torch.zeros_like(p)
    batches = samples = 0
    try:
        for batch in data:
            batches += 1
            for n, g in _grads(model, params, loss_fn(model, batch)):
                if g is not None:
                    out[n]["grad"] += g.detach()
                if per_batch:
                    out[n]["batch_grads"].append(torch.zeros_like(params[n]) if g is None else g.detach())
            if fisher:
                for one in _samples(batch, fisher_samples):
                    samples += 1
                    for n, g in _grads(model, params, loss_fn(model, one)):
                        if g is not None:
                            out[n]["fisher"] += g.detach().pow(2)
    finally:
        for m, t in flags.items():
            m.training = t
    if batches == 0:
        raise ValueError("data yielded no batch: pass a non-empty iterable of batches")
    for st in out.values():
        st["grad"] /= batches
        if fisher:
            st["fisher"] /= max(samples, 1)
    return out
