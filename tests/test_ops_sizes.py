"""Size literals are rewritten; sizes read at run time stay dynamic, or freeze where pruned."""
import os
import sys

import pytest
import torch
import torch.nn as nn

import fxprune

sys.path.insert(0, os.path.dirname(__file__))
from models_tiny import runs_smaller, sizes, verified  # noqa: E402

X = (torch.randn(2, 3, 4, 4),)
X2 = (torch.randn(5, 3, 6, 7),)


class ViewLiteral(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 16, 1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        b = x.shape[0]
        y = self.c(x).view(b, 16, -1)  # hard-coded channel literal
        return self.fc(y.amax(-1))


def test_view_with_hard_coded_channel_literal_is_rewritten():
    m = ViewLiteral().eval()
    dg = fxprune.analyze(m, X)
    assert sizes(dg) == [16]
    verified(m, X, groups=1)
    _, p = runs_smaller(m, X, X2)
    view = [n for n in p.graph.nodes if n.target == "view"][0]
    assert 8 in view.args and 16 not in view.args


class MeanBySize(nn.Module):
    """x.sum(1) / x.shape[1]: the read size must keep its original value where pruned."""

    def __init__(self, read):
        super().__init__()
        self.read = read
        self.c = nn.Conv2d(3, 6, 1)
        self.out = nn.Conv2d(1, 2, 1)
        self.fc = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = self.c(x)
        n = y.shape[1] if self.read == "shape" else y.size(1) if self.read == "size" else y.size()[1]
        avg = y.sum(1, keepdim=True) / n  # channel mean written by hand
        hw = y.shape[2] * y.shape[3]  # spatial sizes: must stay dynamic
        return self.out(avg) * (hw / 16.0) + self.fc(y)


@pytest.mark.parametrize("read", ["shape", "size", "size_tuple"])
def test_size_read_in_arithmetic_is_frozen_where_pruned(read):
    m = MeanBySize(read).eval()
    dg = fxprune.analyze(m, X)
    assert sizes(dg) == [6]
    g = dg.groups[0]
    verified(m, X, groups=1)
    p = fxprune.apply(dg, {g: [0, 1, 2, 3, 4, 5]})  # no removal: nothing frozen
    assert torch.allclose(p(*X2), m(*X2))
    _, p = runs_smaller(m, X, X2)
    # zero the removed channels: a frozen divisor keeps the channel mean of the original
    keep = [1, 4, 5]
    with torch.no_grad():
        z = type(m)(read).eval()
        z.load_state_dict(m.state_dict())
        removed = [i for i in range(6) if i not in keep]
        z.c.weight[removed] = 0
        z.c.bias[removed] = 0
        z.fc.weight[:, removed] = 0
    dz = fxprune.analyze(z, X)
    pz = fxprune.apply(dz, {dz.groups[0]: keep})
    for x in (X, X2):
        assert torch.allclose(pz(*x), z(*x), atol=1e-6), "size read was not frozen (or spatial one was)"


class DynamicBatch(nn.Module):
    """Sizes of unpruned dims flow into reshape and arithmetic; they must stay dynamic."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        y = self.c(x)
        b, c, h, w = y.shape
        t = y.reshape(b, c, h * w).transpose(1, 2)  # c from the run-time shape
        return self.fc(t).sum(1) / (h * w)


def test_run_time_sizes_of_unpruned_dims_stay_dynamic():
    m = DynamicBatch().eval()
    dg = fxprune.analyze(m, X)
    assert sizes(dg) == [6]
    verified(m, X, groups=1)
    runs_smaller(m, X, X2)


class ExpandRepeat(nn.Module):
    """Size literals in expand/repeat/narrow on a channel axis."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 1)
        self.bias = nn.Parameter(torch.randn(6))
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = self.c(x)
        b = y.shape[0]
        y = y + self.bias.view(1, 6, 1, 1).expand(b, 6, y.shape[2], y.shape[3])
        return self.out(y.narrow(1, 0, 6))


def test_literals_in_view_expand_narrow_of_a_parameter():
    m = ExpandRepeat().eval()
    dg = fxprune.analyze(m, X)
    assert sizes(dg) == [6] and ("bias", 0) in dg.groups[0].members
    verified(m, X, groups=1)
    _, p = runs_smaller(m, X, X2)
    assert p.bias.shape == (3,)
