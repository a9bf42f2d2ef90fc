"""Note [Replayed leaves]: the checked trace's graph run reuses the eager run's layers, and still
catches a graph that computes something else."""
from __future__ import annotations

import operator

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune.capture.frontends import _trace_mismatch
from fxprune.capture.replay import replayed_leaves


class Two(nn.Module):
    def __init__(self, edit_between: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)
        self.edit_between = edit_between

    def forward(self, x):
        h = self.a(x)
        if self.edit_between:
            h.add_(1.0)  # an in-place edit of a recorded output, after the call
        return self.b(h)


X = (torch.randn(4, 6),)


def _graph(model: nn.Module, body) -> fx.GraphModule:
    """A hand-written graph over ``model``'s own layers: ``body(graph, x) -> output node``."""
    g = fx.Graph()
    x = g.placeholder("x")
    g.output(body(g, x))
    return fx.GraphModule(model, g)


def test_the_graph_run_computes_no_layer_it_can_replay(monkeypatch):
    model = Two().eval()
    gm = fx.symbolic_trace(model)
    calls = []
    with replayed_leaves(model) as (record, replay):
        with record():
            ref = model(*X)
        real_linear = F.linear
        monkeypatch.setattr(F, "linear", lambda *a, **k: calls.append(1) or real_linear(*a, **k))
        with replay() as recorded:
            recorded.forget_aliases_of([ref])
            out = gm(*X)
    assert calls == [1]  # `a` replayed; `b` computes: its recorded output is the reference itself
    assert torch.equal(out, ref)
    assert "forward" not in model.a.__dict__  # the instance overrides are gone


def test_a_graph_that_edits_a_replayed_output_is_caught():
    model = Two().eval()

    def wrong(g, x):  # b(a(x) + 1): what the model does not compute
        h = g.call_module("a", (x,))
        h2 = g.call_method("add_", (h, 1.0))
        return g.call_module("b", (h2,))

    problem = _trace_mismatch(model, _graph(model, wrong), X)
    assert problem is not None and "outputs differ" in problem


def test_an_edit_after_the_call_in_the_model_is_not_replayed_stale():
    model = Two(edit_between=True).eval()

    def same(g, x):
        h = g.call_module("a", (x,))
        h2 = g.call_method("add_", (h, 1.0))
        return g.call_module("b", (h2,))

    assert _trace_mismatch(model, _graph(model, same), X) is None

    def without_edit(g, x):  # the recorded output of `a` was edited later: it must not stand in for a(x)
        return g.call_module("b", (g.call_module("a", (x,)),))

    assert _trace_mismatch(model, _graph(model, without_edit), X) is not None


def test_a_graph_that_edits_the_models_own_output_is_caught():
    model = nn.Sequential(nn.Linear(6, 3)).eval()

    def doubled(g, x):  # the layer's output is the model's output: never replayed into the reference
        h = g.call_module("0", (x,))
        return g.call_function(operator.imul, (h, 2.0))

    assert _trace_mismatch(model, _graph(model, doubled), X) is not None


def test_models_still_analyse_and_certify():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.Conv2d(8, 4, 3),
                          nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    x = (torch.randn(2, 3, 10, 10),)
    out = fxprune.prune(model, x, ratio=0.5)
    assert out.fxprune_certificate.passed
    assert out(*x).shape == (2, 5)
    assert "forward" not in model[0].__dict__ and "forward" not in model[3].__dict__
