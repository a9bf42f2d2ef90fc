"""The worked cases of DESIGN.md, one tiny model each: both oracles plus structure."""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune

sys.path.insert(0, os.path.dirname(__file__))
from models_tiny import group_with, n_params, runs_smaller, sizes, verified  # noqa: E402

X = (torch.randn(2, 3, 8, 8),)
X2 = (torch.randn(3, 3, 12, 10),)


class ConvBnReluConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn, self.c2 = nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.Conv2d(6, 4, 3)

    def forward(self, x):
        return self.c2(F.relu(self.bn(self.c1(x))))


def test_conv_bn_relu_conv_one_group_with_listed_members():
    m = ConvBnReluConv()
    dg = fxprune.analyze(m, X)
    assert len(dg.groups) == 1
    g = dg.groups[0]
    assert g.size == 6
    assert set(g.members) == {("c1.weight", 0), ("c1.bias", 0), ("bn.weight", 0), ("bn.bias", 0),
                              ("bn.running_mean", 0), ("bn.running_var", 0), ("c2.weight", 1)}
    assert "c2.weight" in g.details()
    verified(m, X, groups=1)
    _, pruned = runs_smaller(m, X, X2)
    assert pruned.c1.weight.shape == (3, 3, 3, 3) and pruned.c2.weight.shape == (4, 3, 3, 3)
    assert pruned.bn.running_mean.shape == (3,) and pruned.bn.num_features == 3
    assert pruned.c1.out_channels == 3 and pruned.c2.in_channels == 3


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.f1, self.f2 = nn.Conv2d(8, 4, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.f2(F.relu(self.f1(x)))
        x = self.g(x).add(x)
        return self.head(x)


def test_residual_stream_is_one_group():
    m = Residual()
    dg = fxprune.analyze(m, X)
    assert sizes(dg) == [4, 8]
    stream = group_with(dg, "stem.weight", 0)
    for member in [("f2.weight", 0), ("g.weight", 0), ("g.weight", 1), ("head.weight", 1), ("f1.weight", 1)]:
        assert member in stream.members
    verified(m, X, groups=2)
    _, pruned = runs_smaller(m, X, X2)
    assert pruned.g.weight.shape == (4, 4, 1, 1)


class Dense(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 6, 3, padding=1)
        self.c = nn.Conv2d(4, 5, 1)
        self.consumer = nn.Conv2d(15, 7, 1)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        c = self.c(a)
        y = torch.cat([a, b], 1)
        y = torch.cat((y, c), dim=1)
        return self.consumer(F.relu(y))


def test_densenet_cat_consumer_carries_every_group_at_its_offset():
    m = Dense()
    dg = fxprune.analyze(m, X)
    assert sizes(dg) == [4, 5, 6]
    for g in dg.groups:
        assert ("consumer.weight", 1) in g.members
    verified(m, X, groups=3)
    ga, gb = group_with(dg, "a.weight", 0), group_with(dg, "b.weight", 0)
    pruned = fxprune.apply(dg, {ga: [3, 0], gb: [5]})
    w = m.consumer.weight.detach()
    assert torch.equal(pruned.consumer.weight, w[:, [3, 0, 4 + 5] + list(range(10, 15))])
    assert pruned(*X2).shape == m(*X2).shape


class SplitChunk(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 1)
        self.p, self.q = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)
        self.s = nn.Conv2d(3, 9, 1)
        self.r1, self.r2 = nn.Conv2d(2, 2, 1), nn.Conv2d(7, 2, 1)

    def forward(self, x):
        a, b = self.c(x).chunk(2, dim=1)
        y = self.s(x)
        u, v = torch.split(y, [2, 7], 1)
        w = y[:, 2:]
        return self.p(a) + self.q(b) + self.r1(u) + self.r2(v) + self.r2(w)


def test_split_chunk_slicing_refine_the_input_layout():
    m = SplitChunk()
    dg = fxprune.analyze(m, X)
    # chunk halves -> two groups of 4; split [2, 7] and slice 2: -> groups of 2 and 7
    assert sizes(dg) == [2, 4, 4, 7]
    verified(m, X, groups=4)


def test_chunk_with_unequal_pieces_after_pruning_becomes_split():
    m = SplitChunk().eval()
    dg = fxprune.analyze(m, X)
    first_half = group_with(dg, "p.weight", 1)
    pruned = fxprune.apply(dg, {first_half: [0]})  # chunk pieces are now 1 and 4
    assert pruned.c.weight.shape[0] == 5
    assert any(n.target in ("split", torch.split) for n in pruned.graph.nodes)
    assert not any(n.target in ("chunk", torch.chunk) for n in pruned.graph.nodes)
    assert pruned(*X2).shape == m(*X2).shape


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre = nn.Conv2d(3, 8, 1)
        self.gc = nn.Conv2d(8, 12, 3, padding=1, groups=4)
        self.post = nn.Conv2d(12, 3, 1)

    def forward(self, x):
        return self.post(F.relu(self.gc(F.relu(self.pre(x)))))


def test_grouped_conv_whole_groups_and_within_group_are_separate_groups():
    m = Grouped()
    dg = fxprune.analyze(m, X)
    # in = G(4) x 2, out = G(4) x 3 with a shared G
    assert sizes(dg) == [2, 3, 4]
    verified(m, X, groups=3)
    g_groups = [g for g in dg.groups if g.size == 4][0]
    in_per, out_per = group_with(dg, "pre.weight", 0, 2), group_with(dg, "post.weight", 1, 3)
    assert g_groups is not in_per and g_groups is not out_per
    # prune whole groups: 4 -> 2 conv groups
    p1 = fxprune.apply(dg, {g_groups: [0, 3]})
    assert p1.gc.groups == 2 and p1.gc.weight.shape == (6, 2, 3, 3) and p1.pre.weight.shape[0] == 4
    # prune inside every group: 2 -> 1 in, 3 -> 2 out per group; still 4 groups
    p2 = fxprune.apply(dg, {in_per: [1], out_per: [0, 2]})
    assert p2.gc.groups == 4 and p2.gc.weight.shape == (8, 1, 3, 3) and p2.post.weight.shape[1] == 8
    for p in (p1, p2):
        assert p(*X2).shape == m(*X2).shape and n_params(p) < n_params(m)


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre = nn.Conv2d(3, 6, 1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.bn = nn.BatchNorm2d(6)
        self.post = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        return self.post(self.bn(self.dw(self.pre(x))))


def test_depthwise_conv_ties_in_to_out():
    m = Depthwise()
    dg = fxprune.analyze(m, X)
    assert sizes(dg) == [6]
    g = dg.groups[0]
    assert {("pre.weight", 0), ("dw.weight", 0), ("bn.weight", 0), ("post.weight", 1)} <= set(g.members)
    verified(m, X, groups=1)
    _, pruned = runs_smaller(m, X, X2)
    assert pruned.dw.groups == 3 and pruned.dw.in_channels == 3 and pruned.dw.weight.shape == (3, 1, 3, 3)


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.c(x)), 1))


def test_flatten_linear_prunes_blocks_of_hw_features():
    m = FlattenLinear()
    dg = fxprune.analyze(m, X)
    assert sizes(dg) == [4]
    assert ("fc.weight", 1) in dg.groups[0].members
    verified(m, X, groups=1)
    pruned = fxprune.apply(dg, {dg.groups[0]: [2]})
    assert pruned.fc.weight.shape == (5, 9) and pruned.fc.in_features == 9
    assert torch.equal(pruned.fc.weight, m.fc.weight.detach()[:, 18:27])
    assert pruned(torch.randn(5, 3, 8, 8)).shape == (5, 5)


class Shuffle(nn.Module):
    def __init__(self, g=2):
        super().__init__()
        self.g = g
        self.c1 = nn.Conv2d(3, 6, 1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1, groups=2)
        self.c3 = nn.Conv2d(6, 4, 1, groups=2)

    def forward(self, x):
        x = self.c2(self.c1(x))
        b, c, h, w = x.size()
        x = x.view(b, self.g, c // self.g, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)
        return self.c3(x)


def test_handwritten_channel_shuffle_needs_no_special_case():
    m = Shuffle()
    dg = fxprune.analyze(m, X)
    # c1 out = G(2) x 3 (c2 groups); after the shuffle 3 x G(2) feeds c3 (groups 2 over 3 x G)
    assert dg.groups
    verified(m, X)
    runs_smaller(m, X, X2)


class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.gn = nn.GroupNorm(4, 8)
        self.c2 = nn.Conv2d(8, 6, 1)
        self.ln = nn.LayerNorm(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        y = self.c2(F.relu(self.gn(self.c1(x))))
        y = y.mean((2, 3))
        return self.fc(self.ln(y))


def test_layernorm_and_groupnorm_axes():
    m = Norms()
    dg = fxprune.analyze(m, X)
    # GroupNorm: 8 = groups(4) x per-group(2); LayerNorm normalizes the 6 channels of c2
    assert sizes(dg) == [2, 4, 6]
    gn_groups = [g for g in dg.groups if g.size == 4][0]
    per = [g for g in dg.groups if g.size == 2][0]
    ln = group_with(dg, "ln.weight", 0)
    assert ("c2.weight", 0) in ln.members and ("fc.weight", 1) in ln.members
    assert ln.mixing is not None and per.mixing is not None
    verified(m, X, groups=3)
    p1 = fxprune.apply(dg, {gn_groups: [1, 2]})
    assert p1.gn.num_groups == 2 and p1.gn.num_channels == 4 and p1.c1.weight.shape[0] == 4
    p2 = fxprune.apply(dg, {per: [1], ln: [0, 5, 2]})
    assert p2.gn.num_groups == 4 and p2.gn.num_channels == 4
    assert p2.ln.normalized_shape == (3,) and p2.fc.in_features == 3
    for p in (p1, p2):
        assert p(*X2).shape == (3, 3)


class SE(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 1)
        self.fc1, self.fc2 = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.c(x)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.out(x * s)


def test_se_block_ties_fc2_out_to_channels():
    m = SE()
    dg = fxprune.analyze(m, X)
    assert sizes(dg) == [2, 8]
    ch = group_with(dg, "c.weight", 0)
    assert {("fc2.weight", 0), ("fc2.bias", 0), ("fc1.weight", 1), ("out.weight", 1)} <= set(ch.members)
    verified(m, X, groups=2)
    runs_smaller(m, X, X2)
