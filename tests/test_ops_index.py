"""cat/stack, split/chunk/unbind/getitem/narrow/slicing along channels."""
import os
import sys

import pytest
import torch
import torch.nn as nn

import fxprune

sys.path.insert(0, os.path.dirname(__file__))
from models_tiny import group_with, runs_smaller, sizes, verified  # noqa: E402

X = (torch.randn(2, 3, 6, 6),)
X2 = (torch.randn(3, 3, 9, 7),)


class Piece(nn.Module):
    """conv(3->9) -> take a piece along channels (a, b) -> convs over each piece."""

    def __init__(self, take, na, nb):
        super().__init__()
        self.take = take
        self.c = nn.Conv2d(3, 9, 1)
        self.pa, self.pb = nn.Conv2d(na, 2, 1), nn.Conv2d(nb, 2, 1)

    def forward(self, x):
        a, b = self.take(self.c(x))
        return self.pa(a) + self.pb(b)


PIECES = {
    # name: (take, len(a), len(b), sorted group sizes)
    "split_int": (lambda y: y.split(5, 1), 5, 4, [4, 5]),
    "split_list": (lambda y: torch.split(y, [2, 7], dim=1), 2, 7, [2, 7]),
    "split_kw": (lambda y: y.split_with_sizes([3, 6], dim=1), 3, 6, [3, 6]),
    "chunk_uneven": (lambda y: torch.chunk(y, 2, 1), 5, 4, [4, 5]),
    "slices": (lambda y: (y[:, :4], y[:, 4:]), 4, 5, [4, 5]),
    "slices_overlap": (lambda y: (y[:, 1:6], y[:, 4:8]), 5, 4, [2, 2, 3]),
    "slice_ellipsis": (lambda y: (y[:, :2, ...], y[..., 2:, :, :]), 2, 7, [2, 7]),
    "narrow": (lambda y: (y.narrow(1, 0, 3), torch.narrow(y, 1, 3, 6)), 3, 6, [3, 6]),
    "negative_slice": (lambda y: (y[:, :-6], y[:, -6:]), 3, 6, [3, 6]),
}


@pytest.mark.parametrize("name", list(PIECES))
def test_pieces_along_channels(name):
    take, na, nb, expected = PIECES[name]
    m = Piece(take, na, nb)
    dg = fxprune.analyze(m, X)
    assert sizes(dg) == expected, dg.report()
    verified(m, X, groups=len(expected))
    _, p = runs_smaller(m, X, X2)
    assert p.pa.in_channels < na and p.pb.in_channels < nb


def test_overlapping_slices_share_the_middle():
    m = Piece(PIECES["slices_overlap"][0], 5, 4)
    dg = fxprune.analyze(m, X)
    # 9 = [0:1] ++ [1:4] ++ [4:6] ++ [6:8] ++ [8:9]; 1:6 and 4:8 share [4:6]
    shared = [g for g in dg.groups if ("pa.weight", 1) in g.members and ("pb.weight", 1) in g.members]
    assert len(shared) == 1 and shared[0].size == 2
    p = fxprune.apply(dg, {shared[0]: [1]})
    assert p.c.weight.shape[0] == 8 and p.pa.weight.shape[1] == 4 and p.pb.weight.shape[1] == 3
    assert p(*X2).shape == m(*X2).shape


class Unbind(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 1)
        self.out = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        y = self.c(x)
        b, _, h, w = y.shape
        a, c = y.view(b, 2, 3, h, w).unbind(1)  # q/k-style: the 2 is pinned, the 3 is shared
        return self.out(a * c)


def test_unbind_pins_the_selected_factor_and_shares_the_rest():
    m = Unbind()
    dg = fxprune.analyze(m, X)
    assert sizes(dg) == [3]
    verified(m, X, groups=1)
    _, p = runs_smaller(m, X, X2)
    assert p.c.weight.shape[0] == 2 and p.out.weight.shape[1] == 1


class IntIndex(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 1)
        self.d = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.c(x)
        return y[:, 0] + y.select(1, 2) + self.d(x)[:, 1:3].sum(1)


def test_integer_index_pins_its_axis():
    m = IntIndex()
    dg = fxprune.analyze(m, X)
    # c's channels are read by coordinate: pinned. d: [0:1] ++ [1:3] ++ [3:4], the middle mixed by sum
    assert sizes(dg) == [2]
    assert ("c.weight", 0) not in dg.groups[0].members
    assert dg.groups[0].mixing is not None
    verified(m, X, groups=1, removal_groups=0)


class CatBranches(nn.Module):
    def __init__(self, dim_kw):
        super().__init__()
        self.dim_kw = dim_kw
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 5, 1)
        self.out = nn.Conv2d(9 + 3, 2, 1)

    def forward(self, x):
        parts = [self.a(x), x, self.b(x)]
        y = torch.cat(parts, dim=self.dim_kw) if self.dim_kw == 1 else torch.cat(parts, -3)
        return self.out(y)


@pytest.mark.parametrize("dim", [1, -3])
def test_cat_with_unprunable_input_in_the_middle(dim):
    m = CatBranches(dim)
    dg = fxprune.analyze(m, X)
    assert sizes(dg) == [4, 5]
    verified(m, X, groups=2)
    ga, gb = group_with(dg, "a.weight", 0), group_with(dg, "b.weight", 0)
    p = fxprune.apply(dg, {ga: [2], gb: [4, 0]})
    w = m.out.weight.detach()
    assert torch.equal(p.out.weight, w[:, [2, 4, 5, 6, 7 + 4, 7 + 0]])
    assert p(*X2).shape == m(*X2).shape


class CatSplit(nn.Module):
    """cat then split at boundaries that do not match the cat segments."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.p, self.q = nn.Conv2d(2, 2, 1), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        u, v = y.split([2, 6], 1)
        return self.p(u) + self.q(v)


def test_cat_then_split_at_other_boundaries():
    m = CatSplit()
    dg = fxprune.analyze(m, X)
    assert sizes(dg) == [2, 2, 4]
    verified(m, X, groups=3)
    runs_smaller(m, X, X2)


@pytest.mark.parametrize("form", ["torch_kw", "method_kw"])
def test_chunk_with_keyword_chunks(form):
    take = (lambda y: torch.chunk(y, chunks=2, dim=1)) if form == "torch_kw" else \
        (lambda y: y.chunk(chunks=2, dim=1))
    m = Piece(take, 5, 4)
    dg = fxprune.analyze(m, X)
    if form == "method_kw":  # Tensor.split has no chunks= keyword: pinned, never broken
        assert dg.groups == [] and "chunks= keyword" in dg.report()
        verified(m, X, groups=0)
        return
    assert sizes(dg) == [4, 5]
    verified(m, X, groups=2)
    p = fxprune.apply(dg, {group_with(dg, "pa.weight", 1): [0]})
    assert p.c.weight.shape[0] == 5 and p(*X2).shape == m(*X2).shape
