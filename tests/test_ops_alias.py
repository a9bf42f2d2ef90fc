"""reshape_as/view_as/expand_as, nn.Unfold/Fold (im2col/col2im) and alias ops (torch.multiply)."""
import os
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune.passes.registry import lookup
from fxprune.passes.rules.aliases import alias_table, same_schema

sys.path.insert(0, os.path.dirname(__file__))
from models_tiny import group_with, runs_smaller, verified  # noqa: E402

X = (torch.randn(2, 5, 8),)


class ViTBN(nn.Module):
    """Linear + BatchNorm1d over tokens, as LeViT-style ViTs write it: ``bn(x.flatten(0, 1)).reshape_as(x)``."""

    def __init__(self, gate=torch.mul):
        super().__init__()
        self.fc, self.bn, self.fc2, self.gate = nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 8), gate

    def forward(self, x):
        h = self.fc(x)
        h = self.bn(h.flatten(0, 1)).reshape_as(h)
        return self.fc2(self.gate(h, h.sigmoid()))


class SpanConv(nn.Module):
    """A span-based convolution over tokens: unfold 3 neighbours of each token, then a Linear over them."""

    def __init__(self, functional=False):
        super().__init__()
        self.fc, self.span, self.fc2, self.functional = nn.Linear(8, 16), nn.Unfold((3, 1), padding=(1, 0)), \
            nn.Linear(48, 8), functional

    def forward(self, x):
        h = self.fc(x).transpose(1, 2).unsqueeze(-1)  # (B, C, N, 1)
        h = F.unfold(h, (3, 1), padding=(1, 0)) if self.functional else self.span(h)  # (B, C*3, N)
        return self.fc2(h.transpose(1, 2))


class FoldBack(nn.Module):
    """Unfold then Fold (col2im) back: a conv's channels pass through both."""

    def __init__(self):
        super().__init__()
        self.c, self.out = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 4, 1)
        self.un, self.fo = nn.Unfold(2, stride=2), nn.Fold((8, 8), 2, stride=2)

    def forward(self, x):
        return self.out(self.fo(self.un(self.c(x)) * 0.5))


def test_reshape_as_batchnorm_tokens_is_one_group_and_exact():
    rep = verified(ViTBN().eval(), X, groups=1)
    dg = fxprune.analyze(ViTBN(), X)
    g = group_with(dg, "bn.weight", 0, 16)
    assert ("fc2.weight", 1) in g.members and ("fc.weight", 0) in g.members
    assert rep.removal_groups == 1  # eval BatchNorm is per channel: the removal oracle covers the group
    runs_smaller(ViTBN(), X, (torch.randn(3, 7, 8),))


def test_torch_multiply_alias_gets_the_mul_rule():
    verified(ViTBN(torch.multiply).eval(), X, groups=1)
    verified(ViTBN(lambda a, b: a.multiply(b)).eval(), X, groups=1)


@pytest.mark.parametrize("functional", [False, True])
def test_unfold_span_conv_prunes_channels_with_their_kernel_columns(functional):
    verified(SpanConv(functional).eval(), X, groups=1)
    dg = fxprune.analyze(SpanConv(functional), X)
    g = group_with(dg, "fc.weight", 0, 16)
    assert ("fc2.weight", 1) in g.members
    small = fxprune.apply(dg, {g: [0, 5, 9]})
    assert small.get_submodule("fc2").in_features == 9  # 3 channels x 3 kernel positions
    assert "unfold kernel positions" in dg.report()


def test_fold_col2im_round_trip_is_exact():
    verified(FoldBack().eval(), (torch.randn(2, 3, 8, 8),), groups=1)


@pytest.mark.parametrize("model,inputs,ops", [
    (ViTBN(torch.multiply), X, {"aten.multiply.Tensor", "aten.reshape_as.default"}),
    (SpanConv(), X, {"aten.im2col.default"}),
    (FoldBack(), (torch.randn(2, 3, 8, 8),), {"aten.im2col.default", "aten.col2im.default"})])
def test_aten_graphs_prune_alike(model, inputs, ops):
    """Keywords send the model through torch.export: aten reshape_as/im2col/col2im/multiply graphs."""
    model = model.eval()
    kw = {"x": inputs[0]}
    rep = fxprune.verify(model, (), kw)
    assert rep.passed and rep.groups == 1, str(rep)
    dg = fxprune.analyze(model, (), kw)
    assert "export" in dg.front_end
    assert ops <= {str(n.target) for n in dg.gm.graph.nodes if n.op == "call_function"}


def test_alias_table_comes_from_torch_and_checks_schemas():
    table = dict(alias_table())
    assert table["torch.multiply"] == "torch.mul" and table["torch.subtract"] == "torch.sub"
    assert "torch.swapaxes" not in table  # documented alias, but its arguments are named axis0/axis1
    assert not same_schema("swapaxes", "transpose") and same_schema("multiply", "mul")


def test_alias_rules_are_the_aliased_rules_and_explicit_rules_win():
    g = torch.fx.Graph()
    x = g.placeholder("x")
    mul, multiply = (g.call_function(f, (x, x)) for f in (torch.ops.aten.mul.Tensor, torch.ops.aten.multiply.Tensor))
    assert lookup(multiply) is lookup(mul) is not None
    node = g.call_function(torch.ops.aten.swapaxes.default, (x, 0, 1))
    assert lookup(node) is None  # not in the table: pins (sound), no guessed argument names
