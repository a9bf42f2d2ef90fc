"""Element-wise ops with broadcasting, raw parameters, reductions, SE gating."""
import operator
import os
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune

sys.path.insert(0, os.path.dirname(__file__))
from models_tiny import group_with, runs_smaller, sizes, verified  # noqa: E402

X = (torch.randn(2, 3, 5, 5),)
X2 = (torch.randn(4, 3, 7, 6),)


class Binary(nn.Module):
    """Two conv branches combined by ``op`` (both full, or one broadcast from a pooled gate)."""

    def __init__(self, op, gate=False):
        super().__init__()
        self.op, self.gate = op, gate
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 6, 1)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        if self.gate:
            b = b.mean((2, 3), keepdim=True)
        return self.out(self.op(a, b))


OPS = {
    "operator.add": operator.add, "operator.sub": operator.sub, "operator.mul": operator.mul,
    "operator.truediv": lambda a, b: a / (b.abs() + 1),
    "torch.add_alpha": lambda a, b: torch.add(a, b, alpha=0.5), "torch.mul": torch.mul,
    "torch.maximum": torch.maximum, "torch.where": lambda a, b: torch.where(a > b, a, b),
    "method.add": lambda a, b: a.add(b), "method.mul": lambda a, b: a.mul(b).sub(b),
    "method.div": lambda a, b: a.div(b.exp()), "iadd": lambda a, b: operator.iadd(a, b),
    "inplace_add_": lambda a, b: a.clone().add_(b), "torch.lerp": lambda a, b: torch.lerp(a, b, 0.3),
    "addcmul": lambda a, b: torch.addcmul(a, a, b, value=0.5), "pow_scalar": lambda a, b: a + b.pow(2),
    "scalar_rsub": lambda a, b: 1 - a * b, "clamp": lambda a, b: torch.clamp(a + b, min=-0.5, max=0.5),
    "max_binary": lambda a, b: torch.max(a, b), "sigmoid_gate": lambda a, b: a * torch.sigmoid(b),
}


@pytest.mark.parametrize("gate", [False, True], ids=["full", "broadcast"])
@pytest.mark.parametrize("name", list(OPS))
def test_binary_elementwise_equates_operand_channels(name, gate):
    m = Binary(OPS[name], gate)
    dg = fxprune.analyze(m, X)
    assert sizes(dg) == [6], dg.report()
    assert {("a.weight", 0), ("b.weight", 0), ("out.weight", 1)} <= set(dg.groups[0].members)
    verified(m, X, groups=1)
    runs_smaller(m, X, X2)


class RawParams(nn.Module):
    """Layer scale gamma (C, 1, 1), a raw bias (C, 1, 1) and a per-channel (1, C, 1, 1) scale."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 1, bias=False)
        self.gamma = nn.Parameter(torch.rand(6, 1, 1) + 0.5)
        self.bias = nn.Parameter(torch.randn(6, 1, 1))
        self.scale = nn.Parameter(torch.randn(1, 6, 1, 1))
        self.register_buffer("shift", torch.randn(6, 1, 1))
        self.tok = nn.Parameter(torch.randn(6))  # broadcast over the last dim after a permute
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = self.gamma * self.c(x) + self.bias
        y = y * self.scale - self.shift
        y = (y.permute(0, 2, 3, 1) + self.tok).permute(0, 3, 1, 2)
        return self.out(y)


def test_parameters_used_directly_join_the_channel_group():
    m = RawParams()
    dg = fxprune.analyze(m, X)
    assert sizes(dg) == [6]
    members = set(dg.groups[0].members)
    assert {("gamma", 0), ("bias", 0), ("scale", 1), ("shift", 0), ("tok", 0), ("out.weight", 1)} <= members
    verified(m, X, groups=1)
    _, p = runs_smaller(m, X, X2)
    assert p.gamma.shape == (3, 1, 1) and p.scale.shape == (1, 3, 1, 1) and p.shift.shape == (3, 1, 1)
    assert p.tok.shape == (3,)


class Reduce(nn.Module):
    """Reductions over spatial dims keep channels; over channels they mix them."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.c = nn.Conv2d(3, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fn(self.c(x), self.fc)


REDUCTIONS = {
    "mean_hw": (lambda y, fc: fc(y.mean((2, 3))), False),
    "sum_kw": (lambda y, fc: fc(torch.sum(y, dim=[-1, -2])), False),
    "amax": (lambda y, fc: fc(y.amax(dim=(2, 3))), False),
    "amin_keepdim": (lambda y, fc: fc(torch.amin(y, (2, 3), keepdim=True).flatten(1)), False),
    "max_values": (lambda y, fc: fc(y.flatten(2).max(dim=2)[0]), False),
    "max_values_attr": (lambda y, fc: fc(torch.max(y.flatten(2), 2).values), False),
    "std_var": (lambda y, fc: fc(y.std((2, 3)) + y.var((2, 3))), False),
    "mean_channels": (lambda y, fc: fc(y.mean(1, keepdim=True).expand(-1, 6, -1, -1).mean((2, 3))), True),
    "sum_channels": (lambda y, fc: y.sum(1).flatten(1).sum(1, keepdim=True) + fc(y.mean((2, 3))), True),
    "logsumexp": (lambda y, fc: fc(torch.logsumexp(y, dim=(2, 3))), False),
}


@pytest.mark.parametrize("name", list(REDUCTIONS))
def test_reductions(name):
    fn, mixes = REDUCTIONS[name]
    m = Reduce(fn)
    dg = fxprune.analyze(m, X)
    if name == "mean_channels":  # the 6 channels after expand are fresh and feed fc
        assert sizes(dg) == [6, 6]
        g = group_with(dg, "c.weight", 0)
        assert g.mixing is not None and ("fc.weight", 1) not in g.members
        verified(m, X, groups=2, removal_groups=1)
        return
    assert sizes(dg) == [6], dg.report()
    assert (dg.groups[0].mixing is not None) == mixes
    verified(m, X, groups=1, removal_groups=0 if mixes else 1)
    runs_smaller(m, X, X2)


class SEInline(nn.Module):
    """SE with Linear layers on a flattened pooled vector, reshaped back with view(b, c, 1, 1)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(8, 2), nn.Linear(2, 8)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        x = self.c(x)
        b, c, _, _ = x.size()
        s = F.adaptive_avg_pool2d(x, 1).view(b, c)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s)))).view(b, c, 1, 1)
        return self.out(x * s.expand_as(x))


def test_se_with_linear_and_view():
    m = SEInline()
    dg = fxprune.analyze(m, X)
    assert sizes(dg) == [2, 8]
    g = group_with(dg, "c.weight", 0)
    assert {("fc1.weight", 1), ("fc2.weight", 0), ("fc2.bias", 0), ("out.weight", 1)} <= set(g.members)
    verified(m, X, groups=2)
    runs_smaller(m, X, X2)


class Softmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 1)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = self.c(x)
        return self.out(y * F.softmax(y, dim=1))


def test_softmax_over_channels_is_mixing():
    m = Softmax()
    dg = fxprune.analyze(m, X)
    assert sizes(dg) == [6] and dg.groups[0].mixing is not None
    verified(m, X, groups=1, removal_groups=0)
    runs_smaller(m, X, X2)


class ArgmaxFeature(nn.Module):
    """argmax over time keeps the channel axis: its consumer must be pruned with it."""

    def __init__(self):
        super().__init__()
        self.fc, self.out, self.out2 = nn.Linear(4, 6), nn.Linear(6, 2), nn.Linear(6, 2)

    def forward(self, x):
        y = self.fc(x)  # (B, T, 6)
        return self.out(y.mean(1)) + self.out2(y.argmax(1).to(y.dtype))


def test_arg_reduction_without_keepdim_keeps_other_axes():
    m = ArgmaxFeature()
    x = (torch.randn(2, 5, 4),)
    dg = fxprune.analyze(m, x)
    assert sizes(dg) == [6]
    assert {("out.weight", 1), ("out2.weight", 1)} <= set(dg.groups[0].members)
    verified(m, x, groups=1)
    runs_smaller(m, x, (torch.randn(3, 7, 4),))
