"""Normalization layers: batch/instance/group/layer norm, module and functional forms, 1d/2d/3d."""
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
NORMS = {
    "batch": {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d},
    "instance_affine": {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d},
}


def x_of(nd, b=2, s=4):
    return (torch.randn(b, 3, *[s] * nd),)


class ConvNorm(nn.Module):
    def __init__(self, nd, norm):
        super().__init__()
        self.c = CONV[nd](3, 6, 1)
        self.n = norm
        self.out = CONV[nd](6, 2, 1)

    def forward(self, x):
        return self.out(F.relu(self.n(self.c(x))))


def _randomize(m):
    with torch.no_grad():
        for name, t in m.named_buffers():
            if "running_var" in name:
                t.uniform_(0.5, 2.0)
            elif "running_mean" in name:
                t.normal_()
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.normal_()
    return m


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kind", ["batch", "instance_affine", "instance_plain", "group", "group_1"])
def test_norm_modules(kind, nd):
    if kind == "instance_plain":
        norm = NORMS["instance_affine"][nd](6)
    elif kind == "instance_affine":
        norm = NORMS["instance_affine"][nd](6, affine=True, track_running_stats=True)
    elif kind == "group":
        norm = nn.GroupNorm(3, 6)
    elif kind == "group_1":
        norm = nn.GroupNorm(1, 6)
    else:
        norm = NORMS[kind][nd](6)
    m = _randomize(ConvNorm(nd, norm))
    x = x_of(nd)
    dg = fxprune.analyze(m, x)
    expected = {"group": [2, 3], "group_1": [6]}.get(kind, [6])
    assert sizes(dg) == expected, dg.report()
    rep = verified(m, x, groups=len(expected))
    if kind.startswith("group"):
        per_group = group_with(dg, "c.weight", 0, 2 if kind == "group" else 6)
        assert per_group.mixing is not None and rep.removal_groups == len(expected) - 1
    _, p = runs_smaller(m, x, x_of(nd, b=3, s=5))
    if kind.startswith("group"):
        assert p.n.num_channels == p.c.out_channels and p.n.weight.shape == (p.c.out_channels,)
    elif kind != "instance_plain":
        assert p.n.num_features == p.c.out_channels == 3


class FunctionalNorms(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 1)
        self.bw, self.bb = nn.Parameter(torch.randn(8)), nn.Parameter(torch.randn(8))
        self.register_buffer("rm", torch.randn(8))
        self.register_buffer("rv", torch.rand(8) + 0.5)
        self.gw, self.gb = nn.Parameter(torch.randn(8)), nn.Parameter(torch.randn(8))
        self.fc = nn.Linear(8, 5)
        self.lw, self.lb = nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(5))
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        y = F.batch_norm(self.c(x), self.rm, self.rv, self.bw, self.bb, False)
        y = F.group_norm(y, 4, self.gw, self.gb)
        y = F.instance_norm(y)
        t = self.fc(y.mean((2, 3)))
        t = F.layer_norm(t, (5,), self.lw, self.lb)
        return self.out(t)


def test_functional_norms():
    m = FunctionalNorms()
    x = (torch.randn(2, 3, 5, 5),)
    dg = fxprune.analyze(m, x)
    # 8 = G(4) x 2 (group norm), 5 normalized by layer_norm
    assert sizes(dg) == [2, 4, 5]
    g = group_with(dg, "gw", 0, 4)
    assert {("rm", 0), ("bw", 0), ("c.weight", 0), ("fc.weight", 1)} <= set(g.members)
    assert ("lw", 0) in group_with(dg, "fc.weight", 0).members
    verified(m, x, groups=3)
    _, p = runs_smaller(m, x, (torch.randn(3, 3, 7, 6),))
    assert p.gw.shape == (2,) and p.rm.shape == (2,) and p.lw.shape == (2,)
    gn = [n for n in p.graph.nodes if n.target is F.group_norm][0]
    assert gn.args[1] == 2


class LayerNormTokens(nn.Module):
    def __init__(self, rms):
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.ln = nn.RMSNorm(6) if rms else nn.LayerNorm(6)
        self.ln2 = nn.LayerNorm([3, 6])
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        return self.out(self.ln2(self.ln(self.fc(x))))


@pytest.mark.parametrize("rms", [False, True], ids=["layernorm", "rmsnorm"])
def test_layer_norm_over_last_dims(rms):
    m = LayerNormTokens(rms)
    x = (torch.randn(2, 3, 4),)
    dg = fxprune.analyze(m, x)
    assert sizes(dg) == [6]
    g = dg.groups[0]
    assert {("ln.weight", 0), ("ln2.weight", 1), ("out.weight", 1)} <= set(g.members)
    assert g.mixing is not None
    verified(m, x, groups=1, removal_groups=0)
    _, p = runs_smaller(m, x, (torch.randn(5, 3, 4),))
    assert p.ln.normalized_shape == (3,) and tuple(p.ln2.normalized_shape) == (3, 3)
