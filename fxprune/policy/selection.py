"""From scores to keep-indices: ratios, overrides, limits, rounding, ignore rules, global ranking.

Note [Ignore semantics]
~~~~~~~~~~~~~~~~~~~~~~~
``ignore`` entries are module qualified names (``"layer4"`` also covers
``"layer4.0.conv1"``; ``*``/``?`` globs allowed), exact parameter names
(``"fc.weight"``), module types (``nn.Linear``), module instances or
``nn.Parameter`` objects. A group is ignored when *any* of its members'
parameters matches: a group couples every tensor that carries it, so leaving
one module untouched means leaving the whole group untouched (ignoring ``fc``
also keeps its input features, i.e. the channels that feed it). Every entry
must match at least one parameter of the analysed graph, or it is an error.

Note [Product factors]
~~~~~~~~~~~~~~~~~~~~~~
Groups are atoms. Where a dimension is a product of two groups (attention:
``heads x head_dim``; GroupNorm: ``groups x channels_per_group``), the group
on the left is the *outer* factor. ``factors="outer"`` prunes only outer
factors of such products (whole heads), ``"inner"`` only inner ones (head
dims, the same count in every head); groups that never appear in a product of
groups, or appear on both sides, are pruned either way. With ``"all"`` both are
pruned, and one ratio is split among the factors of a product so that it
removes about that share of the product, not that share of every factor
(Note [Factored ratios] in ``fxprune/policy/factored.py``).
"""
from __future__ import annotations

import fnmatch
import math
from operator import attrgetter
from typing import Iterable, Optional

import torch
import torch.nn as nn

from ..graph import DependencyGraph, Group
from ..scoring import top_indices as _top
from .factored import components, innermost, split_counts

__all__ = ["ignored_groups", "factor_roles", "group_ratios", "n_keep", "select_local", "select_global",
           "factored_counts"]


def _owner(dg: DependencyGraph, target: str):
    prefix = target.rpartition(".")[0]
    try:
        return prefix, dg.gm.get_submodule(prefix)
    except AttributeError:
        return prefix, None


def _tensor(dg: DependencyGraph, target: str):
    try:
        return attrgetter(target)(dg.gm)
    except AttributeError:
        return None


def _name_matches(pattern: str, target: str) -> bool:
    prefix = target.rpartition(".")[0]
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(target, pattern) or fnmatch.fnmatchcase(prefix, pattern)
    return target == pattern or target.startswith(pattern + ".")


def _matcher(dg: DependencyGraph, entry, params: dict):
    if isinstance(entry, str):
        return lambda t: _name_matches(entry, t)
    if isinstance(entry, type) and issubclass(entry, nn.Module):
        return lambda t: isinstance(_owner(dg, t)[1], entry)
    if isinstance(entry, nn.Parameter):
        return lambda t: params.get(t) is entry
    if isinstance(entry, nn.Module):  # the graph holds an eval-mode copy of it: match by its own tensors
        own = {id(x) for x in (*entry.parameters(recurse=False), *entry.buffers(recurse=False))}
        return lambda t: _owner(dg, t)[1] is entry or id(params.get(t, _tensor(dg, t))) in own
    raise TypeError(f"ignore entries are module names, parameter names, module types, modules or "
                    f"parameters; got {type(entry).__name__}")


def ignored_groups(dg: DependencyGraph, ignore: Iterable) -> set:
    """Indices of the groups an ``ignore`` list excludes (see Note [Ignore semantics])."""
    params = dict(dg.gm.named_parameters())
    targets = set(dg.param_names) | set(params)
    out = set()
    for entry in ignore:
        match = _matcher(dg, entry, params)
        if not any(match(t) for t in targets):
            raise ValueError(f"ignore entry {entry!r} matches no parameter of {dg.source_name}; "
                             "use a name from model.named_modules()/named_parameters(), a module type, "
                             "or a module/parameter of this model")
        out |= {g.index for g in dg.groups if any(match(t) for t, _ in g.members)}
    return out


def factor_roles(dg: DependencyGraph, group: Group) -> set:
    """``{"outer", "inner"}`` subset: where ``group`` sits in products of groups among its members."""
    roles = set()
    for m in group.layouts:
        for product in m.layout.products():
            ids = [a.id for a in product if dg.group_of(a.id) is not None]
            if len(ids) > 1 and group.atom in ids:
                roles.add("outer" if ids[0] == group.atom else "inner")
    return roles


def _factor_ok(roles: set, factors: str) -> bool:
    if factors == "all" or len(roles) != 1:
        return True
    return factors in roles


def group_ratios(dg: DependencyGraph, cfg, ratio: float, allowed=None) -> dict:
    """``{group: ratio}`` for every prunable group: overrides, ignore and factor rules applied; only the
    group indices in ``allowed`` when given (in-place pruning, Note [Expressible pruning])."""
    skip = ignored_groups(dg, cfg.ignore)
    overrides = sorted(cfg.ratios.items(), key=lambda kv: -len(kv[0]))
    for name, _ in overrides:
        if not any(_name_matches(name, t) for t in dg.param_names):
            raise ValueError(f"ratios key {name!r} matches no parameter of {dg.source_name}; "
                             "use a module name from model.named_modules()")
    out = {}
    for g in dg.groups:
        if g.index in skip or not _factor_ok(factor_roles(dg, g), cfg.factors) or \
                (allowed is not None and g.index not in allowed):
            continue
        r = next((v for k, v in overrides if any(_name_matches(k, t) for t in _producers(dg, g))), ratio)
        out[g] = min(r, cfg.max_ratio)
    return out


def _producers(dg: DependencyGraph, g: Group) -> list:
    """Parameters that carry ``g`` in a dim not contracted against it (its producers), else all."""
    return [m.param for m in g.producers] or [t for t, _ in g.members]


def n_keep(size: int, ratio: float, cfg) -> int:
    """Coordinates kept from a group of ``size``: at least ``min_keep`` (and ``1 - max_ratio``),
    rounded up to a multiple of ``round_to``, never more than ``size``."""
    n = size - int(round(size * ratio))
    n = max(n, cfg.min_keep, math.ceil(size * (1 - cfg.max_ratio) - 1e-9), 1)
    if cfg.round_to > 1:
        n = math.ceil(n / cfg.round_to) * cfg.round_to
    return min(n, size)


def _tied(scores: dict, ratios: dict, ties) -> tuple:
    """``(ratios, units)``: a tie's groups get its smallest ratio (none if one is ignored or unscored);
    units are lists of groups that keep one count, untied groups alone."""
    ratios, units, seen = dict(ratios), [], set()
    for tie in ties:
        tie = [g for g in tie if g not in seen]
        if not tie:
            continue
        seen.update(tie)
        if all(g in ratios and scores.get(g) is not None for g in tie) and len({g.size for g in tie}) == 1:
            r = min(ratios[g] for g in tie)
            ratios.update({g: r for g in tie})
            units.append(tie)
        else:
            for g in tie:
                ratios.pop(g, None)
    units += [[g] for g in ratios if g not in seen]
    return ratios, units


def select_local(scores: dict, ratios: dict, cfg, ties=(), round_to=None, dg=None, mode: str = "nearest") -> dict:
    """Each group keeps its own top ``n_keep`` coordinates; ``ties`` (lists of groups of one size) keep
    one count each; ``round_to``: ``{group: multiple}`` on top of ``cfg.round_to``. With ``dg``, the
    factors of a product (heads x head dims) share the ratio: about ``ratio`` of the product's
    coordinates go, not ``ratio`` of every factor (Note [Factored ratios] in ``factored.py``); ``mode``:
    ``"nearest"``, ``"heads"`` (head dims kept) or ``"dims"`` (whole heads kept)."""
    ratios, _ = _tied(scores, ratios, ties)
    counts = factored_counts(dg, scores, ratios, cfg, round_to, mode) if dg is not None else {}
    keep = {}
    for g, r in ratios.items():
        s = scores.get(g)
        n = counts.get(g, n_keep(g.size, r, _rounding(cfg, round_to, g)))
        if s is not None and n < g.size:
            keep[g] = _top(s, n)
    return keep


def factored_counts(dg, scores: dict, ratios: dict, cfg, round_to=None, mode: str = "nearest") -> dict:
    """``{group: kept count}`` for the groups that are factors of products with other prunable groups:
    the component's ratio split among its factors (Note [Factored ratios] in ``factored.py``); ``mode``
    ``"heads"`` prunes only the outer factors, ``"dims"`` only the innermost."""
    out = {}
    for groups, products in components(dg, [g for g in ratios if scores.get(g) is not None]):
        r = min(ratios[g] for g in groups)
        inner = innermost(groups, products)

        def choices(g):
            if (mode == "heads" and g in inner) or (mode == "dims" and g not in inner):
                return [g.size]
            rc = _rounding(cfg, round_to, g)
            return sorted({n_keep(g.size, 1 - n / g.size, rc) for n in range(1, g.size + 1)})
        out.update(split_counts(groups, products, 1.0 - r, choices))
    return out


def select_global(scores: dict, ratios: dict, ratio: float, cfg, costs: Optional[dict] = None, ties=(),
                  round_to=None) -> dict:
    """Rank the coordinates of all groups together; remove the lowest ``ratio`` of them.

    Per-group limits (``max_ratio``, ``min_keep``, per-module ``ratios`` as caps) hold;
    ``round_to`` then rounds each group's kept count up. The groups of a tie (``ties``: lists of
    groups of one size) keep one count: their ``j``-th lowest scores are ranked as one entry, their
    mean, that removes one coordinate from each. ``round_to``: ``{group: multiple}`` on top of ``cfg.round_to``.
    With ``costs`` (``{group: weight of one coordinate}``, e.g. the parameters it removes) ``ratio`` is a
    share of the total weight instead of the coordinate count.
    """
    ratios, units = _tied(scores, ratios, ties)
    units = [u for u in units if scores.get(u[0]) is not None]
    if not units:
        return {}
    weight = [float(len(u)) if costs is None else float(sum(costs[g] for g in u)) for u in units]
    total = sum(u[0].size * w for u, w in zip(units, weight))
    budget = float(round(ratio * total)) if costs is None else ratio * total
    flat = torch.cat([torch.stack([torch.sort(scores[g].double()).values for g in u]).mean(0) for u in units])
    owner = torch.cat([torch.full((u[0].size,), i) for i, u in enumerate(units)])
    cap = [u[0].size - n_keep(u[0].size, ratios[u[0]], _no_round(cfg)) for u in units]
    removed = [0] * len(units)
    for j in torch.argsort(flat, stable=True).tolist():
        i = int(owner[j])
        if budget < weight[i] / 2:  # nearest count: remove while at least half a coordinate is left
            continue
        if removed[i] < cap[i]:
            removed[i] += 1
            budget -= weight[i]
    keep = {}
    for u, r in zip(units, removed):
        n = n_keep(u[0].size, r / u[0].size, _rounding(cfg, round_to, u[0])) if r else u[0].size
        if n < u[0].size:
            keep.update({g: _top(scores[g], n) for g in u})
    return keep


class _NoRound:
    def __init__(self, cfg, round_to: int = 1):
        self.min_keep, self.max_ratio, self.round_to = cfg.min_keep, cfg.max_ratio, round_to


def _no_round(cfg):
    return _NoRound(cfg)


def _rounding(cfg, round_to, g):
    """``cfg``, or its limits with ``round_to`` the lcm of ``cfg.round_to`` and the group's own multiple."""
    m = (round_to or {}).get(g, 1)
    return cfg if m == 1 else _NoRound(cfg, math.lcm(cfg.round_to, m))
