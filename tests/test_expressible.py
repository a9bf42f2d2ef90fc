"""Expressible in-place pruning (Note [Expressible pruning]): classes, trials, ties, the selection that follows.

Model-free checks of the selection with ties, and small torch models whose forward hard-codes a size:
the trials leave the model bit for bit as it was, refuse what the forward cannot follow and say why,
and ``fxprune.prune(..., inplace=True)`` prunes only the rest.
"""
import copy
import os
import sys

import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.policy.expressible import expressible, group_classes
from fxprune.policy.selection import select_global, select_local

sys.path.insert(0, os.path.dirname(__file__))
from test_inplace import assert_identical  # noqa: E402


class G:
    """A stand-in group: selection reads only ``size``."""

    def __init__(self, size):
        self.size = size

    def __repr__(self):
        return f"G({self.size})"


class Cfg:
    min_keep, max_ratio, round_to = 1, 1.0, 1


def test_global_selection_keeps_one_count_per_tie():
    a, b, c = G(8), G(8), G(8)
    scores = {a: torch.arange(8.0), b: torch.arange(8.0).flip(0) * 10, c: torch.ones(8) * 3}
    keep = select_global(scores, {a: 1.0, b: 1.0, c: 1.0}, 0.5, Cfg(), ties=[[a, b]])
    assert len(keep[a]) == len(keep[b])  # tied
    assert keep[a].tolist() == list(range(8 - len(keep[a]), 8))  # each keeps its own best coordinates
    assert keep[b].tolist() == list(range(len(keep[b])))
    assert sum(8 - len(k) for k in keep.values()) in (12, 13)  # half of 24, a tie removes two at a time


def test_local_selection_tie_takes_the_smallest_ratio_and_rounding():
    a, b = G(16), G(16)
    scores = {a: torch.rand(16), b: torch.rand(16)}
    keep = select_local(scores, {a: 0.5, b: 0.25}, Cfg(), ties=[[a, b]], round_to={a: 4, b: 4})
    assert len(keep[a]) == len(keep[b]) == 12
    keep = select_local(scores, {a: 0.5}, Cfg(), ties=[[a, b]])  # b is ignored: its tie is not pruned
    assert keep == {}


class HardCodedHeads(nn.Module):
    """Two branches: one follows its width (``-1`` in the reshape), one hard-codes it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a1, self.a2 = nn.Linear(4, 8), nn.Linear(8, 3)
        self.b1, self.b2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        a = self.a2(self.a1(x).relu().reshape(x.shape[0], -1))
        b = self.b2(self.b1(x).relu().reshape(x.shape[0], 6))  # hard-coded
        return a + b


def test_trials_refuse_what_the_forward_hard_codes_and_leave_the_model_alone():
    m = HardCodedHeads().eval()
    ref = copy.deepcopy(m)
    dg = fxprune.analyze(m, (torch.randn(2, 4),))
    ex = expressible(dg)
    assert_identical(m, ref)
    status = {r.cls.label: r for r in ex.classes}
    assert status["a1"].status == "uniform" and status["b1"].status == "left out"
    assert "6" in status["b1"].reason and ex.trials >= 2 and ex.seconds > 0
    assert {g.index for g in ex.left_out()} == {g.index for g in status["b1"].cls.groups}
    out = fxprune.prune(m, (torch.randn(2, 4),), ratio=0.5, inplace=True)
    assert out is m and m.a1.out_features == 4 and m.b1.out_features == 6
    assert "left out" in m.fxprune_expressible.report() and m.fxprune_certificate.passed
    with torch.no_grad():
        x = torch.randn(5, 4)
        assert m(x).shape == (5, 3)


class Blocks(nn.Module):
    """Three equal blocks in a ModuleList: one class of three groups."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 4)) for _ in range(3))

    def forward(self, x):
        for b in self.blocks:
            x = x + b(x)
        return x


def test_classes_abstract_the_layer_index_and_uniform_ties_the_class():
    m = Blocks().eval()
    dg = fxprune.analyze(m, (torch.randn(2, 4),))
    classes = {c.label: c for c in group_classes(dg)}
    assert len(classes["blocks.*.*"].groups) == 3
    fxprune.prune(m, (torch.randn(2, 4),), ratio=0.4, scope="global", importance="random", inplace=True,
                  uniform=True)
    widths = {b[0].out_features for b in m.blocks}
    assert len(widths) == 1 and widths.pop() < 12


def test_uniform_needs_inplace():
    with pytest.raises(ValueError, match="inplace=True"):
        fxprune.prune(Blocks().eval(), (torch.randn(2, 4),), uniform=True)
