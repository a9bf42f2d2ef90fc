"""Shared helpers for the per-rule tests: oracles plus structural checks on tiny models."""
from __future__ import annotations

import torch
import torch.nn as nn

import fxprune


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def verified(model: nn.Module, inputs: tuple, *, groups: int | None = None, removal_groups: int | None = None,
             leaf_modules=()):
    """Both oracles (float64) must pass; optionally the number of groups is exact."""
    rep = fxprune.verify(model, inputs, leaf_modules=leaf_modules)
    assert rep.passed, str(rep)
    assert rep.permutation_error < 1e-12 and rep.removal_error < 1e-12, str(rep)
    if groups is not None:
        assert rep.groups == groups, str(rep)
    if removal_groups is not None:
        assert rep.removal_groups == removal_groups, str(rep)
    return rep


def sizes(dg) -> list:
    return sorted(g.size for g in dg.groups)


def group_with(dg, target: str, dim: int, size: int | None = None):
    """The group (of ``size``, if given) whose members include ``(target, dim)``."""
    found = [g for g in dg.groups if (target, dim) in g.members and size in (None, g.size)]
    assert len(found) == 1, (target, dim, dg.report())
    return found[0]


def keep_first(g, n: int | None = None) -> list:
    n = max(1, g.size // 2) if n is None else n
    return list(range(n))


def prune_all(model: nn.Module, inputs: tuple, *, keep=None, leaf_modules=()):
    """Analyse, prune every group to its first half; return (dg, pruned)."""
    dg = fxprune.analyze(model, inputs, leaf_modules=leaf_modules)
    keep = keep or {g: keep_first(g) for g in dg.groups}
    pruned = fxprune.apply(dg, keep)
    return dg, pruned


def runs_smaller(model: nn.Module, inputs: tuple, other_inputs: tuple | None = None, *, leaf_modules=()):
    """Pruning every group halves it: fewer parameters, the model still runs with the
    same output shape, also on ``other_inputs`` (another batch size / resolution)."""
    model = model.eval()
    dg, pruned = prune_all(model, inputs, leaf_modules=leaf_modules)
    assert dg.groups, dg.report()
    assert n_params(pruned) < n_params(model)
    for x in (inputs,) + ((other_inputs,) if other_inputs is not None else ()):
        with torch.no_grad():
            ref, out = model(*x), pruned(*x)
        ref_t = ref if isinstance(ref, (tuple, list)) else (ref,)
        out_t = out if isinstance(out, (tuple, list)) else (out,)
        assert [r.shape for r in ref_t] == [o.shape for o in out_t]
    return dg, pruned
