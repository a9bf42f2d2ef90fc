"""Calibrated criteria: score a coordinate by the consumer output it carries.

Note [Calibrated scores]
~~~~~~~~~~~~~~~~~~~~~~~~
For every consumer site of a group (Note [Consumer sites]) the weight is seen
as a matrix ``M`` (rows: every output feature and kernel offset; columns: the
contracted coordinates) and the site's statistics give ``x``:

* ``wanda``: column ``j`` scores ``sum_i |M_ij| * ||x_j||`` (``||x_j|| = sqrt(E[x_j^2])``);
* ``fluctuation`` (FLAP): ``Var(x_j) * ||M_:j||^2``, the output variance column ``j`` carries;
* ``obs``: the output error ``E||M x - M' x||^2`` left after removing the coordinate and
  refitting every other column (the optimal brain surgeon update with ``H = E[x x^T] + lambda I``,
  which is the damped least squares of ``repair="lstsq"``): with ``S`` the coordinate's columns,
  ``A = [H^-1]_SS`` and ``B = [H^-1 G H^-1]_SS``, the error is ``tr(M_S A^-1 B A^-1 M_S^T)``
  (``tr(M_S A^-1 M_S^T)`` when ``lambda = 0``). Measured with ``G``, not ``H``, so an input that
  is always zero scores 0 whatever its weights.

A coordinate owns every flat column its layout maps to it (a head: all its
``head_dim`` columns), so wanda and fluctuation sum them and obs removes them as
one block. Each consumer's scores are normalised (``normalizer``, default: divide
by their mean) before the consumers of a group are averaged, so a wide layer does
not drown a narrow one. A group without a calibrated consumer gets no score (None:
it is left unpruned). Every criterion takes the batches as ``data=``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..policy.importance import Criterion, normalize, register_importance
from . import adapter
from .collect import Calibration, ConsumerStats
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
        normalizer: per-consumer normalisation (see :func:`fxprune.policy.importance.normalize`).
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
            s = self.consumer(m3.reshape(-1, m3.shape[-1]), st, coords, group.size)
            per.append(normalize(s, self.normalizer))
        return torch.stack(per).mean(0) if per else None


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
    """Optimal brain surgeon, structured: the output error left after the optimal repair.

    Args:
        damping: ``lambda`` relative to the mean of ``diag(E[x x^T])`` (see :data:`DAMPING`).
    """

    damping: float = DAMPING
    needs_gram = True

    def consumer(self, m, st, coords, size):
        g = st.moment
        h = g + ridge(g, self.damping) * torch.eye(g.shape[0], dtype=g.dtype)
        hinv = torch.linalg.pinv(h, hermitian=True)
        p = hinv @ g @ hinv
        mask = coords >= 0
        out = torch.zeros(size, dtype=torch.float64)
        if bool((torch.bincount(coords[mask], minlength=size) <= 1).all()):  # one column each: closed form
            cols = torch.nonzero(mask).flatten()
            a = hinv.diagonal()[cols]
            err = m[:, cols].pow(2).sum(0) * p.diagonal()[cols] / a.pow(2).clamp_min(1e-300)
            return out.index_put_((coords[cols],), err)
        for c in range(size):
            s = torch.nonzero(coords == c).flatten()
            if s.numel():
                x = torch.linalg.lstsq(hinv[s][:, s], m[:, s].T).solution
                out[c] = ((p[s][:, s] @ x) * x).sum()
        return out


for _name, _cls in {"wanda": Wanda, "fluctuation": Fluctuation, "obs": OBS}.items():
    register_importance(_name, _cls)
