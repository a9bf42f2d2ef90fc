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


def lift_params(model: nn.Module, inputs: tuple):
    """``model`` traced with its parameters/buffers as graph placeholders (as torch.compile
    hands graphs to a backend), and the example inputs for it: ``inputs`` then each tensor
    as an ``nn.Parameter`` (buffers as frozen ones)."""
    gm = torch.fx.symbolic_trace(model)
    graph = gm.graph
    attrs = [n for n in graph.nodes if n.op == "get_attr"]
    assert attrs and not any(n.op == "call_module" for n in graph.nodes)
    last_ph = [n for n in graph.nodes if n.op == "placeholder"][-1]
    tensors = []
    with graph.inserting_after(last_ph):
        for n in reversed(attrs):
            ph = graph.placeholder(n.target.replace(".", "_") + "_param")
            n.replace_all_uses_with(ph)
            graph.erase_node(n)
            t = gm.get_parameter(n.target) if n.target in dict(gm.named_parameters()) else gm.get_buffer(n.target)
            # a hand-built graph has no dynamo source names: buffers are marked by being Parameters
            tensors.insert(0, t if isinstance(t, nn.Parameter) else nn.Parameter(t, requires_grad=False))
    graph.lint()
    gm.recompile()
    return gm, tuple(inputs) + tuple(tensors)


def verify_lifted(gm, inputs: tuple, *, seed: int = 0):
    """fxprune.verify for graphs with parameters as placeholders.

    Needed because ``fxprune.verify`` does not handle lifted parameters
    (see test_ops_functional.py::test_verify_on_lifted_graph_checks_the_groups).
    Same two oracles, same float64 arithmetic.
    """
    import copy

    from fxprune.checks.oracles import _zero_removed_consumers
    from fxprune.checks import relative_error
    from fxprune.passes import rewrite_graph

    def dbl(t):
        if not t.is_floating_point():
            return t
        return nn.Parameter(t.detach().double()) if isinstance(t, nn.Parameter) else t.double()

    gm64 = copy.deepcopy(gm).double().eval()
    inputs = tuple(dbl(t) for t in inputs)
    dg = fxprune.analyze(gm64, inputs)
    assert dg.lifted, dg.front_end
    rest = tuple(x for i, x in enumerate(inputs) if i not in set(dg.lifted))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ref = dg.gm(*rest)
        perm = {g.atom: torch.randperm(g.size, generator=gen) for g in dg.groups}
        perm_err = relative_error(ref, rewrite_graph(dg.gm, perm)(*rest))
        keep = {g.atom: torch.randperm(g.size, generator=gen)[:max(1, g.size - g.size // 3)]
                for g in dg.groups if g.mixing is None}
        zeroed = copy.deepcopy(dg.gm)
        _zero_removed_consumers(zeroed, keep)
        rem_err = relative_error(zeroed(*rest), rewrite_graph(zeroed, keep)(*rest))
    assert perm_err < 1e-12 and rem_err < 1e-12, (perm_err, rem_err)
    return dg
