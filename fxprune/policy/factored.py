"""A ratio on a factored group: how it is split among the factors.

Note [Factored ratios]
~~~~~~~~~~~~~~~~~~~~~~
Attention dims are products of groups (``heads x head_dim``; GQA's
``kv_groups x queries_per_group x head_dim``; Note [Product factors]). Applying
a local ``ratio`` to every factor and rounding each multiplies the reductions:
``ratio=0.3`` on a GQA model with 2 kv groups of 2 queries turns 4 heads into 1.

Instead, the groups that appear together in products form one *component*,
whose size is the parameter elements its members' dims carry: over the
distinct member dims, the product of the factor sizes times the elements
per coordinate (``q_proj``'s output rows times its inputs, plus ``k_proj``'s,
...). A ratio ``r`` removes about ``r`` of those elements: the
kept counts are those whose coordinate share is nearest to ``1 - r``, every
count within the group's limits (``min_keep``, ``max_ratio``, ``round_to``).
Among equally near splits the one removing more from *outer* factors wins:
whole kv groups first, then queries per group, then head dims (outer factors
are whole units a kernel skips; inner ones keep every head but thinner).
All splits are enumerated (vectorised) when there are at most ``2**21``;
beyond that the outer factors are chosen first, each keeping the fewest units
that still leave the inner ones room to reach the share. A component's ratio
is the smallest of its groups' ratios; an unscored group keeps everything.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..calib.sites import getattr_path

__all__ = ["components", "innermost", "split_counts"]

MAX_GRID = 2 ** 21


def _products(dg, group) -> dict:
    """``{(param, dim, product): elements per coordinate}`` of ``group``'s member dims."""
    out = {}
    for m in group.layouts:
        t = getattr_path(dg.gm, m.param)
        per = t.numel() // max(t.shape[m.dim], 1)
        for product in m.layout.products():
            out[(m.param, m.dim, tuple((a.id, a.size) for a in product))] = per
    return out


def components(dg, groups) -> list:
    """``[(groups outer first, products)]`` for the groups of ``groups`` that share products with
    another; a product is ``(((atom id, size), ...), parameter elements per coordinate)``, one per
    distinct member dim."""
    by_atom = {g.atom: g for g in groups}
    parent = {g.atom: g.atom for g in groups}

    def find(a):
        while parent[a] != a:
            a = parent[a]
        return a
    prods = {}
    for g in groups:
        for key, per in _products(dg, g).items():
            prods[key] = (key[2], per)
            ids = [a for a, _ in key[2] if a in by_atom]
            for a in ids[1:]:
                parent[find(a)] = find(ids[0])
    comps: dict = {}
    for a in by_atom:
        comps.setdefault(find(a), []).append(a)
    out = []
    for atoms in comps.values():
        if len(atoms) < 2:
            continue
        mine = [p for p in prods.values() if any(a in atoms for a, _ in p[0])]
        depth = {a: max(i for p, _ in mine for i, (b, _) in enumerate(p) if b == a) for a in atoms}
        out.append(([by_atom[a] for a in sorted(atoms, key=lambda a: (depth[a], a))], mine))
    return out


def innermost(groups: list, products: list) -> set:
    """The groups that are the last factor of every product they appear in (head dims)."""
    out = set()
    for g in groups:
        places = [(i, len(p)) for p, _ in products for i, (a, _) in enumerate(p) if a == g.atom]
        if places and all(i == n - 1 for i, n in places):
            out.add(g)
    return out


def _coordinates(products: list, index: dict, counts: torch.Tensor) -> torch.Tensor:
    """Parameter elements kept for each row of ``counts`` (one column per group of ``index``)."""
    total = torch.zeros(counts.shape[0], dtype=torch.float64)
    for p, per in products:
        term = torch.full((counts.shape[0],), float(per), dtype=torch.float64)
        for a, size in p:
            term = term * (counts[:, index[a]].double() if a in index else float(size))
        total += term
    return total


def split_counts(groups: list, products: list, keep_share: float, choices: Callable) -> dict:
    """``{group: kept count}`` whose coordinate share is nearest ``keep_share`` (Note [Factored ratios]).

    ``choices(group)``: the allowed kept counts of a group, ascending.
    """
    index = {g.atom: i for i, g in enumerate(groups)}
    options = [torch.as_tensor(choices(g), dtype=torch.long) for g in groups]
    full = _coordinates(products, index, torch.tensor([[g.size for g in groups]]))[0]
    if math.prod(len(o) for o in options) > MAX_GRID:
        return _greedy(groups, products, index, options, keep_share, full)
    grid = torch.cartesian_prod(*options) if len(options) > 1 else options[0][:, None]
    err = (_coordinates(products, index, grid) / full - keep_share).abs()
    near = torch.nonzero(err <= err.min() + 1e-12).flatten()
    best = min(near.tolist(), key=lambda i: grid[i].tolist())  # fewest outer units kept
    return {g: int(grid[best, i]) for i, g in enumerate(groups)}


def _greedy(groups, products, index, options, keep_share, full) -> dict:
    """Outer factors first: each keeps the fewest units that leave the share reachable; the last is nearest."""
    counts = torch.tensor([[g.size for g in groups]])
    for i in range(len(groups)):
        rows = counts.repeat(len(options[i]), 1)
        rows[:, i] = options[i]
        share = _coordinates(products, index, rows) / full
        if i == len(groups) - 1:
            pick = int((share - keep_share).abs().argmin())
        else:
            ok = torch.nonzero(share >= keep_share - 1e-12).flatten()
            pick = int(ok[0]) if len(ok) else len(options[i]) - 1
        counts[0, i] = options[i][pick]
    return {g: int(counts[0, i]) for i, g in enumerate(groups)}
