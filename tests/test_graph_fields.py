"""DependencyGraph declares every field the verbs read: nothing is bolted on after construction."""
import torch
import torch.fx as fx

import fxprune
from fxprune.graph import DependencyGraph
from fxprune.passes import analyze_graph

_FIELDS = ("example_args", "example_kwargs", "model", "train_refused", "training_flags", "lifted", "_certificate")


def _net():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))


def test_direct_construction_declares_every_field_with_a_default():
    result = analyze_graph(fx.symbolic_trace(_net().eval()), (torch.randn(2, 4),))
    dg = DependencyGraph(result, "test", "Sequential")
    assert {f: getattr(dg, f) for f in _FIELDS} == {
        "example_args": (), "example_kwargs": {}, "model": None, "train_refused": None, "training_flags": {},
        "lifted": (), "_certificate": None}


def test_analyze_fills_the_declared_fields_and_apply_caches_the_certificate():
    net, x = _net().train(), torch.randn(3, 4)
    dg = fxprune.analyze(net, (x,), {})
    assert dg.model is net and torch.equal(dg.example_args[0], x) and dg.example_kwargs == {}
    assert dg.training_flags[""] is True and dg._certificate is None
    small = fxprune.apply(dg, {dg.groups[0]: [1, 2]})
    assert small.fxprune_certificate is dg._certificate and small.training
    assert set(vars(dg)) >= set(_FIELDS)
