"""Scoring contracts shared by policy and calib: the ``Criterion`` base, per-group
normalisation, and the registry of named criteria.

Lives below both rooms: ``fxprune.policy.importance`` registers the weight criteria,
``fxprune.calib.criteria`` the calibrated ones; both import from here and neither from
the other. ``fxprune.policy.importance`` re-exports every name for compatibility.

Example::

    >>> import torch
    >>> from fxprune.scoring import normalize
    >>> normalize(torch.tensor([1.0, 3.0]), "mean")
    tensor([0.5000, 1.5000])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

from .graph import DependencyGraph, Group

__all__ = ["Criterion", "normalize", "register_importance", "get_importance", "importance_names"]


# -- normalization ---------------------------------------------------------------------
def _lamp(s: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(s)
    tail = torch.flip(torch.cumsum(torch.flip(s[order], [0]), 0), [0])
    out = torch.empty_like(s)
    out[order] = s[order] / tail.clamp_min(1e-300)
    return out


_NORMALIZERS: dict = {
    None: lambda s: s,
    "mean": lambda s: s / s.mean().clamp_min(1e-300),
    "max": lambda s: s / s.max().clamp_min(1e-300),
    "sum": lambda s: s / s.sum().clamp_min(1e-300),
    "standardize": lambda s: (s - s.mean()) / s.std().clamp_min(1e-300) if s.numel() > 1 else s * 0,
    "lamp": _lamp,
}


def top_indices(scores: torch.Tensor, n: int) -> torch.Tensor:
    """The indices of the ``n`` largest ``scores``, in increasing order (a keep)."""
    return torch.sort(torch.topk(scores, n).indices).values


def normalize(scores: torch.Tensor, how: Optional[str]) -> torch.Tensor:
    """Normalize one group's scores: ``mean``, ``max``, ``sum``, ``standardize``, ``lamp`` or None."""
    if how not in _NORMALIZERS:
        raise ValueError(f"unknown normalizer {how!r}; choose one of {sorted(map(str, _NORMALIZERS))}")
    return _NORMALIZERS[how](scores)


# -- criteria --------------------------------------------------------------------------
class Criterion:
    """A way to score the coordinates of a group.

    ``score(dg, group, stats)`` returns a 1-D tensor of ``group.size`` scores
    (higher = more important), or None to leave the group unpruned. ``stats``
    maps parameter names to ``{"grad": ..., "fisher": ...}`` when
    ``needs_data`` is true (see :func:`fxprune.collect_stats`).
    """

    needs_data: bool = False
    needs_fisher: bool = False

    def score(self, dg: DependencyGraph, group: Group, stats: Optional[dict]) -> Optional[torch.Tensor]:
        raise NotImplementedError

    def __call__(self, dg: DependencyGraph, group: Group, stats: Optional[dict] = None):
        if self.needs_data and stats is None:
            raise ValueError(f"{type(self).__name__} needs gradients: pass data=[batch, ...] (and loss_fn) "
                             "to fxprune.prune, or stats=fxprune.collect_stats(...)")
        return self.score(dg, group, stats)

    def score_all(self, dg, stats: Optional[dict] = None) -> dict:
        """``{group: scores}`` for every group of ``dg``: what calling it per group returns."""
        return {g: self(dg, g, stats) for g in dg.groups}


@dataclass(frozen=True)
class _FnCriterion(Criterion):
    fn: Callable
    needs_data: bool = False

    def score(self, dg, group, stats):
        return self.fn(dg, group, stats)


# -- registry --------------------------------------------------------------------------
_REGISTRY: dict = {}


def register_importance(name: str, factory: Optional[Callable] = None):
    """Give a criterion a name usable as ``fxprune.prune(..., importance=name)``.

    ``factory()`` returns a :class:`Criterion` (a class works). Usable as a decorator.

    Example::

        >>> import torch, fxprune
        >>> @fxprune.register_importance("first_coordinate_wins")
        ... class FirstWins(fxprune.Criterion):
        ...     def score(self, dg, group, stats):
        ...         return -torch.arange(group.size, dtype=torch.float64)
        >>> fxprune.get_importance("first_coordinate_wins")  # doctest: +ELLIPSIS
        <...FirstWins object at ...>
    """
    def add(f):
        if name in _REGISTRY:
            raise ValueError(f"importance {name!r} is already registered; pick another name")
        _REGISTRY[name] = f
        return f
    return add if factory is None else add(factory)


def importance_names() -> list:  # the registered criterion names
    return sorted(_REGISTRY)


def get_importance(spec: Union[str, Criterion, Callable]) -> Criterion:
    """A :class:`Criterion` from a registered name, an instance, or a callable ``(dg, group, stats)``."""
    if isinstance(spec, Criterion):
        return spec
    if isinstance(spec, str):
        if spec not in _REGISTRY:
            raise ValueError(f"unknown importance {spec!r}; registered: {', '.join(importance_names())} "
                             "(add one with fxprune.register_importance)")
        return _REGISTRY[spec]()
    if callable(spec):
        return _FnCriterion(spec)
    raise TypeError(f"importance must be a name, a Criterion or a callable, got {type(spec).__name__}")
