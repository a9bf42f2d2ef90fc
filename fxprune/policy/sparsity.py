"""Sparse training: the group-level sparsity regularizer of DepGraph (Fang et al., CVPR 2023).

Note [Group regularizer]
~~~~~~~~~~~~~~~~~~~~~~~~
For every group g and coordinate k, ``I[g, k]`` is the L2 norm of everything
coordinate k owns: the slices of all member parameters (every dimension of a
product/concat layout that maps to k, see ``Layout.coordinate_map``). The loss is

    strength * sum_g sum_k gamma[g, k] * I[g, k],
    gamma[g, k] = alpha ** ((max_k I - I[g, k]) / (max_k I - min_k I))

a group lasso whose weights (detached) push the already-weak coordinates of a
group harder, so whole coordinates go to zero together across coupled layers.
After training, prune by magnitude: the zeroed coordinates rank last.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

from ..api import analyze
from .selection import ignored_groups

__all__ = ["GroupSparsity"]


class GroupSparsity(nn.Module):
    """A loss term to add in your own training loop; it reads ``model``'s live parameters.

    Args:
        model: the model you train (an ``nn.Module``; its parameters are used, not copied).
        example_inputs: tuple of positional inputs, for the analysis.
        strength: the regularization coefficient (lambda).
        alpha: how much harder weak coordinates are pushed (1: plain group lasso).
        ignore: as in :class:`fxprune.PruneConfig`.

    Example::

        >>> import torch, fxprune
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> reg = fxprune.GroupSparsity(net, (torch.randn(1, 4),), strength=1e-3)
        >>> loss = reg()          # add to the task loss, then loss.backward()
        >>> loss.backward(); net[0].weight.grad.shape
        torch.Size([8, 4])
    """

    def __init__(self, model: nn.Module, example_inputs, *, strength: float = 1e-4, alpha: float = 4.0,
                 ignore: Iterable = (), leaf_modules: Iterable = ()):
        super().__init__()
        if strength < 0 or alpha < 1:
            raise ValueError(f"strength must be >= 0 and alpha >= 1, got {strength}, {alpha}")
        self.strength, self.alpha = strength, alpha
        self._model = [model]  # not a submodule: the regularizer owns no parameters
        dg = analyze(model, example_inputs, leaf_modules=leaf_modules)
        skip = ignored_groups(dg, ignore)
        params = dict(model.named_parameters())
        self._groups = []
        for g in dg.groups:
            if g.index in skip:
                continue
            members = [(m.param, m.dim, m.layout.coordinate_map(g.atom)) for m in g.layouts if m.param in params]
            if members:
                self._groups.append((g.size, members))
        if not self._groups:
            raise ValueError("no prunable group has a parameter of this model (all pinned or ignored)")

    def group_norms(self) -> list:
        """For every regularized group, the L2 norm of each coordinate (differentiable)."""
        params = dict(self._model[0].named_parameters())
        norms = []
        for size, members in self._groups:
            sq = None
            for target, d, coords in members:
                w = params[target]
                flat = w.transpose(0, d).reshape(w.shape[d], -1).pow(2).sum(1)
                mask = coords >= 0
                part = torch.zeros(size, dtype=w.dtype, device=w.device).index_add(
                    0, coords[mask].to(w.device), flat[mask])
                sq = part if sq is None else sq + part
            norms.append(sq.clamp_min(1e-12).sqrt())
        return norms

    def forward(self) -> torch.Tensor:
        total = 0.0
        for norm in self.group_norms():
            n = norm.detach()
            spread = (n.max() - n.min()).clamp_min(1e-12)
            gamma = self.alpha ** ((n.max() - n) / spread)
            total = total + (gamma * norm).sum()
        return self.strength * total
