"""Greedy structured optimal brain surgeon on one consumer (ZipLM-style).

Note [Greedy OBS]
~~~~~~~~~~~~~~~~~
Scoring each coordinate by the error of removing it *alone* (then refitting the
rest) misleads once many coordinates go: redundancy is shared, so every one of
a set of mutually redundant inputs looks free, but removing all of them is not.
So ``importance="obs"`` removes the coordinates of a consumer one at a time,
always the one whose removal (with the optimal refit of what is left) raises
the output error least, and scores each coordinate by the total output error
``E||M x - M' x||^2 = tr(D G D^T)`` (``D = M - M'``) at the moment it goes. The
scores are increasing in removal order; a global threshold removes, in every
consumer, the prefix whose error stays under it.

The refit is the optimal brain surgeon update with the damped ``H = G + lambda I``
(the ``repair="lstsq"`` solution); the error is measured with ``G``, so an input
that is always zero costs nothing whatever its weights. Removing a block ``S``
(a head owns several columns) with ``A = [H^-1]_SS``, ``U = M_S A^-1``::

    M' = M - U [H^-1]_S:          H^-1' = H^-1 - [H^-1]_:S A^-1 [H^-1]_S:
    error increase = 2 tr(U^T R_:S) + tr(U^T U T_SS),   R = D G H^-1,  T = H^-1 G H^-1

``R`` and ``T`` follow by rank-``|S|`` updates, so a step costs
``O(rows * in + in^2)``: the whole greedy order of a 384-column layer is cheap.
"""
from __future__ import annotations

import torch

__all__ = ["greedy_obs"]


class _State:
    def __init__(self, m: torch.Tensor, g: torch.Tensor, lam: float):
        h = g + lam * torch.eye(g.shape[0], dtype=g.dtype)
        self.hinv = torch.linalg.pinv(h, hermitian=True)
        self.m = m.clone()
        self.r = torch.zeros_like(m)  # D G H^-1, D = 0 at the start
        self.t = self.hinv @ g @ self.hinv

    def increase(self, s: torch.Tensor) -> float:
        a = self.hinv[s][:, s]
        u = torch.linalg.lstsq(a, self.m[:, s].T).solution.T
        return float(2 * (u * self.r[:, s]).sum() + ((u.T @ u) * self.t[s][:, s]).sum())

    def increases(self, cols: torch.Tensor) -> torch.Tensor:
        """Single columns, vectorised."""
        a = self.hinv.diagonal()[cols].clamp_min(1e-300)
        u = self.m[:, cols] / a
        return 2 * (u * self.r[:, cols]).sum(0) + u.pow(2).sum(0) * self.t.diagonal()[cols]

    def remove(self, s: torch.Tensor) -> None:
        a = self.hinv[s][:, s]
        ainv = torch.linalg.pinv(a)
        hs, ts = self.hinv[:, s], self.t[:, s]
        u = self.m[:, s] @ ainv
        self.m -= u @ hs.T
        self.r += -self.r[:, s] @ ainv @ hs.T + u @ ts.T - u @ self.t[s][:, s] @ ainv @ hs.T
        left = hs @ ainv
        self.t += -left @ ts.T - ts @ left.T + left @ self.t[s][:, s] @ left.T
        self.hinv -= left @ hs.T


def greedy_obs(m: torch.Tensor, g: torch.Tensor, coords: torch.Tensor, size: int, lam: float) -> torch.Tensor:
    """Scores of the ``size`` coordinates: the output error once each is removed, in greedy order.

    Args:
        m: the weight as ``rows x columns`` (float64).
        g: ``E[x x^T]`` over the columns.
        coords: the coordinate of every column (-1: not this group's; such columns stay).
        size: the number of coordinates.
        lam: the damping of the refit.
    """
    cols = [torch.nonzero(coords == c).flatten() for c in range(size)]
    alive = [c for c in range(size) if cols[c].numel()]
    out = torch.zeros(size, dtype=torch.float64)
    st, total = _State(m, g, lam), 0.0
    singles = all(cols[c].numel() == 1 for c in alive)
    while alive:
        if singles:
            inc = st.increases(torch.cat([cols[c] for c in alive]))
        else:
            inc = torch.tensor([st.increase(cols[c]) for c in alive], dtype=torch.float64)
        i = int(torch.argmin(inc))
        c = alive.pop(i)
        total += max(float(inc[i]), 0.0)
        out[c] = total
        st.remove(cols[c])
    return out
