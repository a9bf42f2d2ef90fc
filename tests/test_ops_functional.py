"""Functional graphs: the same computation with parameters as get_attr nodes (symbolic_trace)
and as graph placeholders fed nn.Parameter example inputs (as torch.compile hands them)."""
import os
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune

sys.path.insert(0, os.path.dirname(__file__))
from models_tiny import lift_params, runs_smaller, sizes, verified, verify_lifted  # noqa: E402

X = (torch.randn(2, 3, 6, 6),)


def P(*shape, scale=0.4):
    return nn.Parameter(torch.randn(*shape) * scale)


class ConvBnConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1, self.b1, self.w2 = P(6, 3, 3, 3), P(6), P(4, 6, 1, 1)
        self.g, self.b = P(6), P(6)
        self.register_buffer("rm", torch.randn(6))
        self.register_buffer("rv", torch.rand(6) + 0.5)

    def forward(self, x):
        y = F.conv2d(x, self.w1, self.b1, padding=1)
        y = F.relu(F.batch_norm(y, self.rm, self.rv, self.g, self.b, False))
        return F.conv2d(y, self.w2)


class ResidualLayerScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.w0, self.w1, self.w2 = P(6, 3, 1, 1), P(4, 6, 3, 3), P(6, 4, 1, 1)
        self.gamma = nn.Parameter(torch.rand(6, 1, 1) + 0.5)
        self.fw, self.fb = P(2, 6), P(2)

    def forward(self, x):
        x = F.conv2d(x, self.w0)
        x = x + self.gamma * F.conv2d(F.gelu(F.conv2d(x, self.w1, padding=1)), self.w2)
        return F.linear(x.mean((-1, -2)), self.fw, self.fb)


class GroupedCatSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.wa, self.wb = P(4, 3, 1, 1), P(4, 3, 1, 1)
        self.wg = P(12, 4, 3, 3)  # groups=2 over the 8 concatenated channels
        self.wp, self.wq = P(2, 5, 1, 1), P(2, 7, 1, 1)

    def forward(self, x):
        y = torch.cat([F.conv2d(x, self.wa), F.conv2d(x, self.wb)], 1)
        y = F.conv2d(y, self.wg, None, 1, 1, 1, 2)
        u, v = torch.split(y, [5, 7], 1)
        return F.conv2d(u, self.wp) + F.conv2d(v, self.wq)


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.w, self.fw = P(4, 3, 3, 3), P(5, 4 * 2 * 2)

    def forward(self, x):
        y = F.max_pool2d(F.relu(F.conv2d(x, self.w, stride=2)), 1)
        return F.linear(y.flatten(1), self.fw)


MODELS = {"conv_bn_conv": (ConvBnConv, [6]), "residual_layer_scale": (ResidualLayerScale, [4, 6]),
          "grouped_cat_split": (GroupedCatSplit, None), "flatten_linear": (FlattenLinear, [4])}


@pytest.mark.parametrize("name", list(MODELS))
def test_get_attr_and_placeholder_graphs_agree(name):
    cls, expected = MODELS[name]
    m = cls().eval()
    dg_attr = fxprune.analyze(m, X)
    if expected is not None:
        assert sizes(dg_attr) == expected, dg_attr.report()
    assert dg_attr.groups
    verified(m, X, groups=len(dg_attr.groups))
    runs_smaller(m, X, (torch.randn(3, 3, 8, 8),) if name != "flatten_linear" else None)

    gm, inputs = lift_params(m, X)
    assert sum(isinstance(t, nn.Parameter) for t in inputs) >= 2
    dg_ph = fxprune.analyze(gm, inputs)
    assert dg_ph.lifted and sizes(dg_ph) == sizes(dg_attr), dg_ph.report()
    verify_lifted(gm, inputs)
    pruned = fxprune.apply(dg_ph, {g: list(range(g.size // 2 or 1)) for g in dg_ph.groups})
    assert pruned(*X).shape == m(*X).shape


def test_verify_on_lifted_graph_checks_the_groups():
    gm, inputs = lift_params(ConvBnConv().eval(), X)
    assert len(fxprune.analyze(gm, inputs).groups) == 1
    rep = fxprune.verify(gm, inputs)
    assert rep.groups == 1 and rep.removal_groups == 1


class ModuleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.c2(F.relu(self.bn(self.c(x))))
        return self.fc(y.mean((2, 3)))


def test_torch_compile_backend_graph_matches_symbolic_trace():
    m = ModuleNet().eval()
    captured = {}

    def backend(gm, example_inputs):
        captured["gm"], captured["inputs"] = gm, tuple(example_inputs)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(m, backend=backend, fullgraph=True, dynamic=False)(*X)
    gm, inputs = captured["gm"], captured["inputs"]
    assert any(isinstance(t, nn.Parameter) for t in inputs)
    dg_ph = fxprune.analyze(gm, inputs)
    dg_mod = fxprune.analyze(m, X)
    assert sizes(dg_ph) == sizes(dg_mod) == [4, 6]
    verified(m, X, groups=2)
    verify_lifted(gm, inputs)
