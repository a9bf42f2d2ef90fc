"""Ops without a rule pin the axes they touch, show in the report, and never break the oracles."""
import os
import sys

import pytest
import torch
import torch.fx
import torch.nn as nn

import fxprune

sys.path.insert(0, os.path.dirname(__file__))
from models_tiny import group_with, runs_smaller, sizes, verified  # noqa: E402

X = (torch.randn(2, 3, 5, 5),)


def mystery(x):
    """A custom op: the analysis cannot know it keeps channels apart."""
    return x * x.flip(1)


torch.fx.wrap("mystery")


class Squish(nn.Module):
    def forward(self, x):
        return x - x.mean(1, keepdim=True)


class WithUnknown(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.a = nn.Conv2d(3, 6, 1)  # feeds the unknown op: pinned
        self.b = nn.Conv2d(6, 4, 1)
        self.d = nn.Conv2d(3, 5, 1)  # elsewhere: still prunable
        self.sq = Squish()
        self.out = nn.Conv2d(4, 2, 1)
        self.out2 = nn.Conv2d(5, 2, 1)

    def forward(self, x):
        y = self.a(x)
        y = mystery(y) if self.kind == "wrapped" else self.sq(y)
        return self.out(self.b(y)) + self.out2(torch.relu(self.d(x)))


@pytest.mark.parametrize("kind", ["wrapped", "leaf_module"])
def test_unknown_op_pins_what_it_touches(kind):
    m = WithUnknown(kind)
    leaves = [Squish] if kind == "leaf_module" else []
    dg = fxprune.analyze(m, X, leaf_modules=leaves)
    assert sizes(dg) == [4, 5], dg.report()
    for g in dg.groups:
        assert ("a.weight", 0) not in g.members and ("b.weight", 1) not in g.members
    assert group_with(dg, "d.weight", 0).size == 5
    report = dg.report()
    assert "without a rule" in report and ("mystery" in report or "Squish" in report)
    assert any(name in ("mystery", "sq") for name, _ in dg.result.unknown)
    verified(m, X, groups=2, leaf_modules=leaves)
    _, p = runs_smaller(m, X, (torch.randn(3, 3, 7, 7),), leaf_modules=leaves)
    assert p.a.weight.shape == (6, 3, 1, 1) and p.b.weight.shape == (2, 6, 1, 1)


def test_leaf_module_by_name_pins_what_it_touches():
    m = nn.Sequential(nn.Conv2d(3, 6, 1), Squish(), nn.ReLU(), nn.Conv2d(6, 4, 1), nn.Conv2d(4, 2, 1))
    traced = fxprune.analyze(m, X)  # traced through: x - mean over channels is understood
    assert sizes(traced) == [4, 6]
    dg = fxprune.analyze(m, X, leaf_modules=["1"])
    assert sizes(dg) == [4]  # opaque: the 6 channels are pinned, the 4 are not
    assert "no rule for Squish" in dg.report()
    verified(m, X, groups=1, leaf_modules=["1"])


class BadIndex(nn.Module):
    """A rule that meets an argument form it does not handle pins instead of crashing."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 1)
        self.register_buffer("keep", torch.tensor([True, False, True, False, False, True]))
        self.out = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.out(self.a(x)[:, self.keep])  # boolean-mask indexing along channels


def test_rule_that_cannot_handle_a_call_pins():
    m = BadIndex()
    dg = fxprune.analyze(m, X)
    assert dg.groups == []
    assert "advanced" in dg.report()
    rep = verified(m, X, groups=0)
    assert rep.removal_groups == 0
