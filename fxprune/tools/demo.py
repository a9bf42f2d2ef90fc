"""A built-in demo network that exercises every CNN coupling fxprune handles.

No download and no optional dependency: the CLI prunes it by default.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DemoNet", "demo_inputs"]


class _SE(nn.Module):
    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class _Residual(nn.Module):
    """conv-BN-ReLU, grouped conv, depthwise conv, SE, layer scale, then ``x + f(x)``."""

    def __init__(self, c: int):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU())
        self.grouped = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=4)
        self.depthwise = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.se = _SE(2 * c)
        self.project = nn.Conv2d(2 * c, c, 1)
        self.gamma = nn.Parameter(torch.full((c, 1, 1), 0.5))

    def forward(self, x):
        y = self.se(F.gelu(self.depthwise(self.grouped(self.expand(x)))))
        return x + self.gamma * self.project(y)


class _Dense(nn.Module):
    """DenseNet-style concatenation followed by a channel split."""

    def __init__(self, c: int, growth: int):
        super().__init__()
        self.a = nn.Conv2d(c, growth, 3, padding=1)
        self.b = nn.Conv2d(c + growth, growth, 3, padding=1)
        self.norm = nn.GroupNorm(4, c + 2 * growth)

    def forward(self, x):
        x = torch.cat([x, F.relu(self.a(x))], 1)
        x = torch.cat([x, F.relu(self.b(x))], 1)
        return self.norm(x)


class DemoNet(nn.Module):
    """Stem, residual blocks, a dense block, channel shuffle, flatten -> MLP head."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(_Residual(width), _Residual(width))
        self.dense = _Dense(width, 8)
        c = width + 16
        self.mix = nn.Conv2d(c, 32, 1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4, 64), nn.Hardswish(), nn.Dropout(0.1),
                                  nn.Linear(64, num_classes))

    def forward(self, x):
        x = self.dense(self.blocks(self.stem(x)))
        b, c, h, w = x.shape
        x = self.mix(x).view(b, 4, 8, h, w).transpose(1, 2).reshape(b, 32, h, w)  # channel shuffle
        return self.head(self.pool(F.relu(x)))


def demo_inputs(batch: int = 2, size: int = 32) -> tuple:
    return (torch.randn(batch, 3, size, size),)
