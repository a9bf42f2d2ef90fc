"""Importance criteria: one score per coordinate of a group.

Note [Scores of product and concat layouts]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
A member dimension's layout may be a product (heads x head_dim, C x H*W after a
flatten) or a concatenation (DenseNet). ``Layout.coordinate_map`` gives, for every
flat index of the dimension, the coordinate of the group atom it belongs to.
A criterion computes a statistic per element, sums it over the slice of each
flat index, then sums the flat indices of each coordinate. So a head's score
covers all its head_dim rows, a flattened channel its H*W block, and a channel
that a concatenation repeats in several segments adds up every occurrence.
Member scores are then aggregated (mean/sum/max/prod) and normalized per group.

Custom criteria: subclass :class:`Criterion` or :class:`Elementwise`, or pass a callable
``(dg, group, stats) -> Tensor | None``; :func:`register_importance` names it.
"""
from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Optional

import torch
import torch.nn as nn

from fxprune.passes import CONSUMES

from ..graph import DependencyGraph, Group, MemberLayout
from ..scoring import (Criterion, _FnCriterion, get_importance, importance_names,  # noqa: F401  (re-exported)
                       normalize, register_importance)

__all__ = [
    "magnitude", "keep_top", "Criterion", "Elementwise", "Magnitude", "BNScale",
    "Taylor", "Hessian", "FPGM", "Random", "normalize", "register_importance", "get_importance",
    "importance_names",
]


@torch.no_grad()
def magnitude(dg: DependencyGraph, group: Group, p: float = 2.0) -> torch.Tensor:
    """The L-p norm of every coordinate of ``group`` over all its member slices."""
    scores = torch.zeros(group.size, dtype=torch.float64)
    for m in group.layouts:
        t = attrgetter(m.param)(dg.gm)
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            continue
        scores.index_add_(0, *_to_coords(t.detach().double().abs().pow(p), m, group))
    return scores.pow(1.0 / p)


def keep_top(dg: DependencyGraph, ratio: float, p: float = 2.0) -> dict:
    """Keep the ``1 - ratio`` largest-magnitude coordinates of every group, in their original order."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}: it is the fraction of each group to remove")
    keep = {}
    for g in dg.groups:
        n = max(1, g.size - int(round(g.size * ratio)))
        keep[g] = torch.sort(torch.topk(magnitude(dg, g, p), n).indices).values
    return keep


def _to_coords(elem: torch.Tensor, m: MemberLayout, group: Group):
    """(coords, per-flat-index sums) of ``elem`` along the member's dim, for ``index_add_``."""
    coords = m.layout.coordinate_map(group.atom)
    flat = _flat_sums(elem, m.dim)
    mask = coords >= 0
    return coords[mask], flat[mask]


SLICE_ELEMENTS = 1 << 18  # Elementwise.member_scores works on float64 slices of about this many elements (cache sized)


def _flat_sums(elem: torch.Tensor, dim: int) -> torch.Tensor:
    """The sum of ``elem`` over every dim but ``dim``: one value per flat index of ``dim``."""
    others = [d for d in range(elem.dim()) if d != dim]
    return elem.sum(others) if others else elem.clone()


# -- normalization and aggregation ---------------------------------------------------
_REDUCTIONS: dict = {
    "mean": lambda m: m.mean(0),
    "sum": lambda m: m.sum(0),
    "max": lambda m: m.max(0).values,
    "prod": lambda m: m.prod(0),
}


# -- criteria --------------------------------------------------------------------------
@dataclass(frozen=True)
class Elementwise(Criterion):
    """Per-element statistic, summed per coordinate, aggregated over members, normalized.

    Args:
        reduction: how member scores combine: ``mean``, ``sum``, ``max`` or ``prod``.
        normalizer: see :func:`normalize`.
        bias: whether parameters named ``*.bias`` count (biases mostly add noise).
    """

    reduction: str = "mean"
    normalizer: Optional[str] = "mean"
    bias: bool = False

    def __post_init__(self):
        if self.reduction not in _REDUCTIONS:
            raise ValueError(f"unknown reduction {self.reduction!r}; choose one of {sorted(_REDUCTIONS)}")
        normalize(torch.ones(1), self.normalizer)

    def element(self, w: torch.Tensor, grad, fisher) -> torch.Tensor:
        raise NotImplementedError

    def counts(self, dg: DependencyGraph, target: str) -> bool:
        return self.bias or not target.endswith("bias")

    @torch.no_grad()
    def score(self, dg, group, stats, sums: Optional[dict] = None):
        """``sums``: ``{(param, dim): flat sums}`` computed already (:meth:`score_all`)."""
        per_member = []
        for w, m, grad, fisher in self._members(dg, group, stats):
            flat = sums.get((m.param, m.dim)) if sums is not None else None
            if flat is None:
                flat = self.dim_sums(w, (m.dim,), grad, fisher)[m.dim]
            per_member.append(_to_group(flat, m, group))
        return self.combine(per_member)

    def _members(self, dg, group, stats):
        """(tensor, member, grad, fisher) of every member the criterion counts."""
        params = dict(dg.gm.named_parameters())
        for m in group.layouts:
            w = params.get(m.param)
            if w is None or not w.is_floating_point() or not self.counts(dg, m.param):
                continue
            st = (stats or {}).get(m.param, {})
            grad, fisher = (st.get(k) for k in ("grad", "fisher"))
            if (self.needs_data and grad is None) or (self.needs_fisher and fisher is None):
                continue
            yield w, m, grad, fisher

    def score_all(self, dg, stats=None) -> dict:
        """Every group's scores, with each parameter's statistic computed once for all the dims that
        groups read it along (a conv weight: its out- and in-channels), not once per group. Bit for bit
        what :meth:`score` per group gives: the same slices, the same sums (Note [Member sums])."""
        if type(self).score is not Elementwise.score or type(self).member_scores is not Elementwise.member_scores:
            return super().score_all(dg, stats)
        if self.needs_data and stats is None:
            return super().score_all(dg, stats)  # raises the needs-gradients error
        wanted: dict = {}
        for g in dg.groups:
            for w, m, grad, fisher in self._members(dg, g, stats):
                wanted.setdefault(m.param, (w, grad, fisher, set()))[3].add(m.dim)
        sums = {}
        for name, (w, grad, fisher, dims) in wanted.items():
            for d, flat in self.dim_sums(w, tuple(sorted(dims)), grad, fisher).items():
                sums[(name, d)] = flat
        return {g: self.score(dg, g, stats, sums) for g in dg.groups}

    # Note [Member sums]
    # ~~~~~~~~~~~~~~~~~~
    # A member's statistic is computed on float64 slices of the tensor's first dim (about
    # SLICE_ELEMENTS elements each), so a large tensor never has a whole float64 copy (the
    # checkpoint streamer calls member_scores tensor by tensor). Each slice's statistic is summed
    # over every dim but d, for every dim d wanted: the slices and the order of every sum are the
    # same whether one dim or several are wanted, so scoring all groups at once (score_all) and
    # one member at a time (member_scores, the streamer) agree bit for bit.

    @torch.no_grad()
    def dim_sums(self, w: torch.Tensor, dims: tuple, grad=None, fisher=None) -> dict:
        """``{dim: the statistic of w summed over every other dim}`` (float64; Note [Member sums])."""
        rows = w.shape[0] if w.dim() else 1
        step = max(1, SLICE_ELEMENTS // max(1, w.numel() // max(1, rows)))
        flats = {d: torch.zeros(w.shape[d], dtype=torch.float64) for d in dims}
        for a in range(0, rows, step):
            n = min(step, rows - a)
            part = [None if t is None else t.detach().narrow(0, a, n).double() for t in (w, grad, fisher)]
            elem = self.element(*part)
            for d, flat in flats.items():
                sums = _flat_sums(elem, d)
                if d == 0:
                    flat[a:a + n] = sums
                else:
                    flat += sums
        return flats

    @torch.no_grad()
    def member_scores(self, w: torch.Tensor, m: MemberLayout, group: Group, grad=None, fisher=None) -> torch.Tensor:
        """One member's contribution: the statistic summed per coordinate of ``group`` (float64;
        Note [Member sums])."""
        return _to_group(self.dim_sums(w, (m.dim,), grad, fisher)[m.dim], m, group)

    def combine(self, per_member: list) -> Optional[torch.Tensor]:
        """The group's scores from its members' (:meth:`member_scores`, in ``group.layouts`` order)."""
        if not per_member:
            return None
        return normalize(_REDUCTIONS[self.reduction](torch.stack(per_member)), self.normalizer)


def _to_group(flat: torch.Tensor, m: MemberLayout, group: Group) -> torch.Tensor:
    """Per-flat-index sums of a member's dim -> per-coordinate sums of ``group``."""
    coords = m.layout.coordinate_map(group.atom)
    mask = coords >= 0
    return torch.zeros(group.size, dtype=torch.float64).index_add_(0, coords[mask], flat[mask])


def _d(t):  # noqa: E704
    return None if t is None else t.detach().double()


@dataclass(frozen=True)
class Magnitude(Elementwise):
    """Group magnitude: ``sum |w|^p`` per coordinate (p=1: L1, p=2: L2; LAMP: normalizer="lamp")."""

    p: float = 2.0

    def element(self, w, grad, fisher):
        return w.square() if self.p == 2 else w.abs().pow(self.p)  # the same bits, one pass fewer


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class BNScale(Elementwise):
    """``|gamma|`` of the normalization layers (BatchNorm, GroupNorm, LayerNorm) in the group.

    Groups without an affine normalization get no score and are left unpruned.
    """

    def counts(self, dg, target):
        prefix, _, leaf = target.rpartition(".")
        if leaf != "weight":
            return False
        try:
            return isinstance(dg.gm.get_submodule(prefix), _NORMS)
        except AttributeError:
            return False

    def element(self, w, grad, fisher):
        return w.abs()


@dataclass(frozen=True)
class Taylor(Elementwise):
    """First-order Taylor (Molchanov et al. 2019): the loss change of removing a coordinate.

    Per batch b, ``delta_b[k] = sum of w * dL_b/dw`` over the consumer slices of coordinate
    k (the weights that read it: zeroing them is removing it; all members if none);
    the score is ``mean_b delta_b[k] ** 2``. With ``elementwise=True``
    (or stats without per-batch gradients) it is Torch-Pruning's ``|w * mean_b grad_b|``,
    aggregated over members by ``reduction``. Averaging signed gradients first cancels
    most of the signal on a converged model, hence the per-batch default.
    """

    needs_data = True
    elementwise: bool = False

    def element(self, w, grad, fisher):
        return (w * grad).abs()

    @torch.no_grad()
    def score(self, dg, group, stats):
        params = dict(dg.gm.named_parameters())
        members = [m for m in group.layouts if m.param in params and self.counts(dg, m.param)
                   and "batch_grads" in stats.get(m.param, {})]
        members = [m for m in members if m.role == CONSUMES] or members
        if self.elementwise or not members:
            return super().score(dg, group, stats)
        n = len(stats[members[0].param]["batch_grads"])
        total = torch.zeros(group.size, dtype=torch.float64)
        for b in range(n):
            delta = torch.zeros(group.size, dtype=torch.float64)
            for m in members:
                prod = params[m.param].detach().double() * stats[m.param]["batch_grads"][b].double()
                delta.index_add_(0, *_to_coords(prod, m, group))
            total += delta.pow(2)
        return normalize(total / n, self.normalizer)


@dataclass(frozen=True)
class Hessian(Elementwise):
    """Second order (Optimal Brain Damage): ``0.5 * H_ii * w^2``, H_ii from the empirical Fisher."""

    needs_data = True
    needs_fisher = True

    def element(self, w, grad, fisher):
        return 0.5 * fisher * w.pow(2)


@dataclass(frozen=True)
class FPGM(Criterion):
    """Filter pruning via geometric median: a coordinate whose weights sit close to all others is redundant.

    Score = sum of L2 distances from the coordinate's weights (every weight member of
    rank >= 2, all its flat indices concatenated) to those of every other coordinate.
    """

    normalizer: Optional[str] = "mean"

    @torch.no_grad()
    def score(self, dg, group, stats):
        params = dict(dg.gm.named_parameters())
        feats = []
        for m in group.layouts:
            w = params.get(m.param)
            if w is None or w.dim() < 2 or not w.is_floating_point():
                continue
            feats.append(_coord_features(w.detach().double(), m, group))
        if not feats:
            return None
        x = torch.cat(feats, 1)
        return normalize(torch.cdist(x, x).sum(1), self.normalizer)


def _coord_features(w, m: MemberLayout, group) -> torch.Tensor:
    coords = m.layout.coordinate_map(group.atom)
    rows = w.transpose(0, m.dim).reshape(w.shape[m.dim], -1)
    mask = coords >= 0
    order = torch.argsort(coords[mask], stable=True)
    picked = rows[mask][order]
    return picked.reshape(group.size, -1)


@dataclass(frozen=True)
class Random(Criterion):
    """Uniform random scores (a baseline); ``seed`` makes them reproducible."""

    seed: int = 0

    def score(self, dg, group, stats):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + group.index)
        return torch.rand(group.size, generator=gen, dtype=torch.float64)


# -- the built-in names (the registry is fxprune/scoring.py) ----------------------------
for _name, _factory in {
    "l1": lambda: Magnitude(p=1.0), "l2": lambda: Magnitude(p=2.0), "magnitude": lambda: Magnitude(p=2.0),
    "bn_scale": BNScale, "taylor": Taylor, "hessian": Hessian, "obd": Hessian,
    "lamp": lambda: Magnitude(p=2.0, normalizer="lamp"), "fpgm": FPGM, "random": Random,
}.items():
    register_importance(_name, _factory)
