"""Calibrated criteria: score a coordinate by the consumer output it carries.

Note [Calibrated scores]
~~~~~~~~~~~~~~~~~~~~~~~~
For every consumer site of a group (Note [Consumer sites]) the weight is seen
as a matrix ``M`` (rows: every output feature and kernel offset; columns: the
contracted coordinates) and the site's statistics give ``x``:

* ``wanda``: column ``j`` scores ``sum_i |M_ij| * ||x_j||`` (``||x_j|| = sqrt(E[x_j^2])``);
* ``fluctuation`` (FLAP): ``Var(x_j) * ||M_:j||^2``, the output variance column ``j`` carries;
* ``obs``: the output error ``E||M x - M' x||^2`` once the coordinate is removed and every
  other column refit, removing the consumer's coordinates greedily, least damage first, so
  shared redundancy is not counted twice (Note [Greedy OBS] in ``obs.py``). The refit is the
  damped least squares of ``repair="lstsq"``; the error is measured with ``G = E[x x^T]``.

A coordinate owns every flat column its layout maps to it (a head: all its
``head_dim`` columns), so wanda and fluctuation sum them and obs removes them as
one block.

A group with several consumers (a residual stream read by many layers) averages
their scores *normalised per consumer* (divided by the consumer's mean score), so
a wide layer does not drown a narrow one. ``normalizer`` then scales the group:
``"mean"`` (the default) divides it by its mean, so a global ranking compares the
shapes of the layers' score distributions, as FLAP's per-layer standardisation
does; ``None`` keeps output units (the consumers' mean scale restored), so a global
ranking compares layers by the output error they would suffer. On the benchmark's
small LLaMA the two allocate differently and neither wins everywhere
(``benchmarks/QUALITY.md``); ``"mean"`` never removed a whole kv group too early.
A group without a calibrated consumer gets no score (None: it is left unpruned).
Every criterion takes the batches as ``data=``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..scoring import Criterion, normalize, register_importance
from . import adapter
from .collect import Calibration, ConsumerStats
from .obs import greedy_obs
from .sites import as_matrix

__all__ = ["Calibrated", "Wanda", "Fluctuation", "OBS", "DAMPING", "ridge"]

DAMPING = 0.01  # lambda = DAMPING * mean(diag(E[x x^T])), as SparseGPT's percdamp


def ridge(g: torch.Tensor, damping: float) -> float:
    """``lambda = damping * mean(diag(g))`` (a floor keeps a zero ``g`` invertible)."""
    return damping * max(float(g.diagonal().mean()), 1e-12) if damping > 0 else 0.0


@dataclass(frozen=True)
class Calibrated(Criterion):
    """Base of criteria that read calibration statistics (:func:`fxprune.calib.calibrate`).

    Args:
        normalizer: applied to each group's combined scores (see
            :func:`fxprune.policy.importance.normalize`); None keeps output units.
    """

    normalizer: Optional[str] = "mean"
    needs_calibration = True
    needs_gram = False

    def __post_init__(self):
        normalize(torch.ones(1), self.normalizer)

    def __call__(self, dg, group, stats=None):
        if not isinstance(stats, Calibration):
            raise ValueError(f"{type(self).__name__} scores from activations: pass data=[batch, ...] (model "
                             "inputs) to fxprune.prune / score_groups, or stats=fxprune.calib.calibrate(dg, data)")
        if self.needs_gram and not stats.gram:
            raise ValueError(f"{type(self).__name__} needs Gram matrices: calibrate(dg, data, gram=True)")
        return self.score(dg, group, stats)

    def consumer(self, m: torch.Tensor, st: ConsumerStats, coords: torch.Tensor, size: int) -> torch.Tensor:
        """Scores of the ``size`` coordinates at one site (``m``: rows x contracted columns)."""
        raise NotImplementedError

    @torch.no_grad()
    def score(self, dg, group, cal: Calibration) -> Optional[torch.Tensor]:
        per = []
        for site, st in cal.consumers(group):
            m3, _ = as_matrix(cal.weight(site), site)
            coords = adapter.coords(dg, site.weight, site.dim, group)
            per.append(self.consumer(m3.reshape(-1, m3.shape[-1]), st, coords, group.size))
        if not per:
            return None
        return normalize(_combine(per), self.normalizer)


def _combine(per: list) -> torch.Tensor:
    """Consumers' scores averaged with each normalised by its mean, at their mean scale."""
    if len(per) == 1:
        return per[0]
    scales = torch.stack([s.mean() for s in per])
    shapes = torch.stack([s / m if m > 0 else s for s, m in zip(per, scales)])
    return shapes.mean(0) * scales.mean()


def _per_coordinate(columns: torch.Tensor, coords: torch.Tensor, size: int) -> torch.Tensor:
    mask = coords >= 0
    return torch.zeros(size, dtype=torch.float64).index_add_(0, coords[mask], columns[mask])


@dataclass(frozen=True)
class Wanda(Calibrated):
    """Wanda, structured: ``sum_i |W_ij| * ||x_j||`` per coordinate (Sun et al. 2023; Wanda-sp)."""

    def consumer(self, m, st, coords, size):
        return _per_coordinate(m.abs().sum(0) * st.second.sqrt(), coords, size)


@dataclass(frozen=True)
class Fluctuation(Calibrated):
    """FLAP's fluctuation metric: ``Var(x_j) * ||W_:j||^2`` per coordinate (An et al. 2024)."""

    def consumer(self, m, st, coords, size):
        return _per_coordinate(st.var * m.pow(2).sum(0), coords, size)


@dataclass(frozen=True)
class OBS(Calibrated):
    """Optimal brain surgeon, structured and greedy: the output error once a coordinate and
    every coordinate removed before it are gone and the rest refit (Note [Greedy OBS]).

    Args:
        damping: ``lambda`` of the refit relative to the mean of ``diag(E[x x^T])`` (:data:`DAMPING`).
    """

    damping: float = DAMPING
    needs_gram = True

    def consumer(self, m, st, coords, size):
        g = st.moment
        return greedy_obs(m, g, coords, size, ridge(g, self.damping))


for _name, _cls in {"wanda": Wanda, "fluctuation": Fluctuation, "obs": OBS}.items():
    register_importance(_name, _cls)
