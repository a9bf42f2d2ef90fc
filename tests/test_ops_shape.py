"""Shape ops: flatten/view/reshape/permute/transpose/(un)squeeze, pooling, resampling, pixel/channel shuffle."""
import os
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune

sys.path.insert(0, os.path.dirname(__file__))
from models_tiny import group_with, runs_smaller, sizes, verified  # noqa: E402

X = (torch.randn(2, 3, 8, 8),)
X2 = (torch.randn(3, 3, 12, 12),)


class Through(nn.Module):
    """conv(3->6) -> body -> consumer; ``body`` must keep (or restore) the channel dim."""

    def __init__(self, body, out_c=6, consumer=None):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 3, padding=1)
        self.body = body
        self.out = consumer or nn.Conv2d(out_c, 4, 1)

    def forward(self, x):
        return self.out(self.body(self.c(x)))


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


PASS_BODIES = {
    "relu": nn.ReLU(), "gelu": nn.GELU(), "silu": nn.SiLU(), "hardswish": nn.Hardswish(),
    "leaky": nn.LeakyReLU(0.1), "sigmoid_mod": nn.Sigmoid(), "identity": nn.Identity(),
    "dropout": nn.Dropout(0.5), "dropout2d": nn.Dropout2d(0.3),
    "maxpool": nn.MaxPool2d(2), "avgpool": nn.AvgPool2d(3, stride=2, padding=1),
    "adaptive_avg": nn.AdaptiveAvgPool2d((3, 2)), "adaptive_max": nn.AdaptiveMaxPool2d(2),
    "global_avg": nn.AdaptiveAvgPool2d(1),
    "upsample": nn.Upsample(scale_factor=2, mode="nearest"),
    "upsample_bilinear": nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
    "f_interpolate": Fn(lambda x: F.interpolate(x, size=(5, 7), mode="bilinear", align_corners=True)),
    "f_maxpool": Fn(lambda x: F.max_pool2d(x, 2, 2)),
    "f_dropout": Fn(lambda x: F.dropout(x, 0.2, training=False)),
    "torch_tanh": Fn(torch.tanh), "method_sigmoid": Fn(lambda x: x.sigmoid().contiguous()),
    "permute_roundtrip": Fn(lambda x: x.permute(0, 2, 3, 1).permute(0, 3, 1, 2)),
    "transpose_roundtrip": Fn(lambda x: x.transpose(1, 3).transpose(3, 1)),
    "unsqueeze_squeeze": Fn(lambda x: torch.squeeze(x.unsqueeze(2), 2)),
    "flatten_unflatten": Fn(lambda x: x.flatten(2).unflatten(2, (8, 8))),
    "reshape_literal": Fn(lambda x: x.reshape(x.shape[0], 6, -1).reshape(x.shape)),
    "f_pad": Fn(lambda x: F.pad(x, (1, 1, 2, 0))),
}


@pytest.mark.parametrize("name", list(PASS_BODIES))
def test_channel_preserving_ops(name):
    m = Through(PASS_BODIES[name])
    dg = fxprune.analyze(m, X)
    assert sizes(dg) == [6], dg.report()
    assert ("out.weight", 1) in dg.groups[0].members
    verified(m, X, groups=1)
    if name not in ("f_interpolate", "reshape_literal", "flatten_unflatten"):  # fixed spatial sizes
        _, p = runs_smaller(m, X, X2)
    else:
        _, p = runs_smaller(m, X)
    assert p.c.out_channels == 3 and p.out.in_channels == 3


class ChannelsLast(nn.Module):
    """permute to channels-last, Linear over C, LayerNorm, permute back."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 1)
        self.fc = nn.Linear(6, 5)
        self.ln = nn.LayerNorm(5)
        self.out = nn.Conv2d(5, 2, 1)

    def forward(self, x):
        y = self.c(x).permute(0, 2, 3, 1)
        y = self.ln(self.fc(y))
        return self.out(y.permute(0, 3, 1, 2))


def test_permute_to_channels_last_linear():
    m = ChannelsLast()
    dg = fxprune.analyze(m, X)
    assert sizes(dg) == [5, 6]
    assert ("fc.weight", 1) in group_with(dg, "c.weight", 0).members
    verified(m, X, groups=2)
    runs_smaller(m, X, X2)


class Tokens(nn.Module):
    """(B, C, H, W) -> flatten(2).transpose(1, 2) -> Linear -> back with view from x.shape."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 1)
        self.fc = nn.Linear(6, 4)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.c(x)
        b, _, h, w = y.shape
        t = self.fc(y.flatten(2).transpose(1, 2))
        return self.out(t.transpose(1, 2).reshape(b, -1, h, w))


def test_tokens_flatten_transpose_reshape():
    m = Tokens()
    dg = fxprune.analyze(m, X)
    assert sizes(dg) == [4, 6]
    verified(m, X, groups=2)
    runs_smaller(m, X, X2)


class SqueezeLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 1)
        self.fc = nn.Linear(6, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        y = F.adaptive_avg_pool2d(self.c(x), 1).squeeze(-1).squeeze(-1)
        y = self.fc(y).unsqueeze(1)  # (B, 1, 4)
        return self.fc2(torch.flatten(y, 1))


def test_global_pool_squeeze_linear():
    m = SqueezeLinear()
    dg = fxprune.analyze(m, X)
    assert sizes(dg) == [4, 6]
    verified(m, X, groups=2)
    runs_smaller(m, X, X2)


class PixelShuffle(nn.Module):
    def __init__(self, functional):
        super().__init__()
        self.functional = functional
        self.c = nn.Conv2d(3, 8, 1)  # 8 = 2 x (2*2)
        self.ps = nn.PixelShuffle(2)
        self.mid = nn.Conv2d(2, 3, 1)
        self.pu = nn.PixelUnshuffle(2)
        self.out = nn.Conv2d(12, 2, 1)

    def forward(self, x):
        y = self.c(x)
        y = F.pixel_shuffle(y, 2) if self.functional else self.ps(y)
        y = self.mid(y)
        y = F.pixel_unshuffle(y, 2) if self.functional else self.pu(y)
        return self.out(y)


@pytest.mark.parametrize("functional", [False, True], ids=["module", "functional"])
def test_pixel_shuffle_unshuffle(functional):
    m = PixelShuffle(functional)
    dg = fxprune.analyze(m, X)
    # shuffle: in = C(2) x r*r(pinned); unshuffle: out = C(3) x r*r(pinned)
    assert sizes(dg) == [2, 3]
    g = group_with(dg, "c.weight", 0)
    assert ("mid.weight", 1) in g.members
    verified(m, X, groups=2)
    _, p = runs_smaller(m, X, X2)
    assert p.c.weight.shape[0] == 4 and p.out.weight.shape[1] == 4


class ChannelShuffle(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.c = nn.Conv2d(3, 6, 1)
        self.sh = nn.ChannelShuffle(2)
        self.out = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = self.c(x)
        if self.kind == "module":
            y = self.sh(y)
        elif self.kind == "functional":
            y = F.channel_shuffle(y, 2)
        else:  # hand-written, sizes read from x.size()
            b, c, h, w = y.size()
            y = y.view(b, 2, c // 2, h, w)
            y = torch.transpose(y, 1, 2).contiguous()
            y = y.view(b, -1, h, w)
        return self.out(y)


@pytest.mark.parametrize("kind", ["module", "functional", "handwritten"])
def test_channel_shuffle(kind):
    m = ChannelShuffle(kind)
    dg = fxprune.analyze(m, X)
    # 6 = G(2) x 3: whole shuffle groups and the same count inside every group
    assert sizes(dg) == [2, 3], dg.report()
    verified(m, X, groups=2)
    g2, g3 = group_with(dg, "c.weight", 0, 2), group_with(dg, "c.weight", 0, 3)
    p = fxprune.apply(dg, {g2: [1], g3: [0, 2]})
    assert p.c.weight.shape[0] == 2 and p.out.weight.shape[1] == 2
    assert p(*X2).shape == m(*X2).shape
    p = fxprune.apply(dg, {g3: [2]})
    assert p.c.weight.shape[0] == 2 and p(*X2).shape == m(*X2).shape


class Conv1dTokens(nn.Module):
    """Conv1d features, mean over time, Linear; also a stack over two branches."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(3, 6, 3, padding=1)
        self.d = nn.Conv1d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        s = torch.stack([self.c(x), self.d(x)], dim=1)  # (B, 2, 6, T)
        return self.fc(s.amax(dim=(1, 3)))


def test_stack_then_reduce():
    m = Conv1dTokens()
    x = (torch.randn(2, 3, 7),)
    dg = fxprune.analyze(m, x)
    assert sizes(dg) == [6]
    assert {("c.weight", 0), ("d.weight", 0), ("fc.weight", 1)} <= set(dg.groups[0].members)
    verified(m, x, groups=1)
    runs_smaller(m, x, (torch.randn(4, 3, 11),))
