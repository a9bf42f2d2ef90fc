"""Convolutions (1d/2d/3d, grouped, depthwise, transposed) and linear layers."""
import os
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune

sys.path.insert(0, os.path.dirname(__file__))
from models_tiny import group_with, runs_smaller, sizes, verified  # noqa: E402

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
SP = {1: 6, 2: 5, 3: 4}


def x_of(nd: int, b: int = 2, c: int = 3, s: int | None = None):
    return (torch.randn(b, c, *[s or SP[nd]] * nd),)


class Sandwich(nn.Module):
    """pre (1x1) -> mid (the conv under test) -> BN -> ReLU -> post (1x1)."""

    def __init__(self, nd, mid_in, mid_out, groups, transposed):
        super().__init__()
        conv = CONV_T[nd] if transposed else CONV[nd]
        kw = dict(stride=2, output_padding=1) if transposed else dict(padding=1)
        self.pre = CONV[nd](3, mid_in, 1)
        self.mid = conv(mid_in, mid_out, 3, groups=groups, **kw)
        self.bn = BN[nd](mid_out)
        self.post = CONV[nd](mid_out, 2, 1)

    def forward(self, x):
        return self.post(F.relu(self.bn(self.mid(self.pre(x)))))


# (mid_in, mid_out, groups) -> sorted group sizes
CASES = {
    "plain": (4, 6, 1, [4, 6]),
    "grouped": (4, 6, 2, [2, 2, 3]),  # G(2) x 2 in, G(2) x 3 out
    "depthwise": (4, 4, 4, [4]),
    "depthwise_multiplier": (3, 6, 3, [2, 3]),  # in = G(3), out = G(3) x 2
}


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "transposed"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_family(nd, case, transposed):
    mid_in, mid_out, groups, expected = CASES[case]
    m = Sandwich(nd, mid_in, mid_out, groups, transposed)
    x = x_of(nd)
    dg = fxprune.analyze(m, x)
    assert sizes(dg) == expected, dg.report()
    verified(m, x, groups=len(expected))
    dg, pruned = runs_smaller(m, x, x_of(nd, b=3, s=SP[nd] + 2))
    mid = pruned.mid
    assert mid.weight.shape[0] == (mid.in_channels if transposed else mid.out_channels)
    assert mid.weight.shape[1] * mid.groups == (mid.out_channels if transposed else mid.in_channels)
    assert mid.in_channels == pruned.pre.out_channels and mid.out_channels == pruned.post.in_channels
    assert pruned.bn.num_features == mid.out_channels


def test_grouped_transposed_whole_groups_and_per_group():
    m = Sandwich(2, 4, 6, 2, True)
    x = x_of(2)
    dg = fxprune.analyze(m, x)
    G = group_with(dg, "post.weight", 1, 2)  # out = G(2) x 3
    assert ("mid.bias", 0) in G.members and ("mid.weight", 0) in G.members
    in_per = [g for g in dg.groups if g.size == 2 and g is not G][0]
    assert ("pre.weight", 0) in in_per.members and ("post.weight", 1) not in in_per.members
    p = fxprune.apply(dg, {G: [1]})
    assert p.mid.groups == 1 and p.mid.weight.shape == (2, 3, 3, 3) and p.post.weight.shape[1] == 3
    assert p(*x_of(2, b=1, s=7)).shape == m(*x_of(2, b=1, s=7)).shape


class LinearStack(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(5, 8), nn.Linear(8, 6, bias=False), nn.Linear(6, 3)

    def forward(self, x):
        return self.c(F.gelu(self.b(torch.tanh(self.a(x)))))


@pytest.mark.parametrize("shape", [(2, 5), (2, 4, 5)], ids=["2d", "3d_tokens"])
def test_linear(shape):
    m = LinearStack()
    x = (torch.randn(*shape),)
    dg = fxprune.analyze(m, x)
    assert sizes(dg) == [6, 8]
    verified(m, x, groups=2)
    _, p = runs_smaller(m, x, (torch.randn(7, *shape[1:]),))
    assert p.a.out_features == 4 and p.b.in_features == 4 and p.b.out_features == 3 and p.c.in_features == 3


class FunctionalParams(nn.Module):
    """F.conv2d / F.linear with explicit nn.Parameters: get_attr nodes."""

    def __init__(self, groups=1):
        super().__init__()
        self.groups = groups
        self.w1 = nn.Parameter(torch.randn(6, 3, 3, 3) * 0.3)
        self.b1 = nn.Parameter(torch.randn(6))
        self.w2 = nn.Parameter(torch.randn(8, 6 // groups, 1, 1) * 0.3)
        self.fw = nn.Parameter(torch.randn(4, 8) * 0.3)
        self.fb = nn.Parameter(torch.randn(4))

    def forward(self, x):
        x = F.relu(F.conv2d(x, self.w1, self.b1, padding=1))
        x = F.conv2d(x, self.w2, None, 1, 0, 1, self.groups)
        return F.linear(x.mean((2, 3)), self.fw, self.fb)


@pytest.mark.parametrize("groups", [1, 2])
def test_functional_conv_linear_with_get_attr_weights(groups):
    m = FunctionalParams(groups)
    x = x_of(2)
    gm = torch.fx.symbolic_trace(m)
    assert any(n.op == "get_attr" for n in gm.graph.nodes)
    dg = fxprune.analyze(m, x)
    assert sizes(dg) == ([6, 8] if groups == 1 else [2, 3, 4])
    w1 = group_with(dg, "w1", 0, 6 if groups == 1 else 3)
    assert ("b1", 0) in w1.members
    verified(m, x, groups=len(dg.groups))
    _, p = runs_smaller(m, x, x_of(2, b=4, s=9))
    assert p.w2.shape[1] * (groups if groups == 1 else 1) <= 3
