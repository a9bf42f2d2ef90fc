"""Advanced indexing, index_put, top-k, grouped matmuls and ``x @ w.T`` (Note [Index tensors]).

Index values address coordinates, so the indexed dimension is pinned; the other
dims of the indexed tensor and the positions of the index pass through. Each
model through symbolic_trace and through torch.export (aten ops), both oracles.
"""
import os
import sys

import pytest
import torch
import torch.nn as nn

import fxprune

sys.path.insert(0, os.path.dirname(__file__))
from models_tiny import group_with, sizes  # noqa: E402


def verified(model, x, front_end: str, groups: int, removal_groups: int):
    """Both oracles through ``front_end`` ("trace": positional input; "export": keyword input)."""
    args, kwargs = ((x,), None) if front_end == "trace" else ((), {"x": x})
    dg = fxprune.analyze(model, args, kwargs)
    assert ("symbolic_trace" in dg.front_end) == (front_end == "trace"), dg.front_end
    rep = fxprune.verify(model, args, kwargs)
    assert rep.permutation_error < 1e-12 and rep.removal_error < 1e-12, str(rep)
    assert (rep.groups, rep.removal_groups) == (groups, removal_groups), f"{rep}\n{dg.report()}"
    return dg


class MoE(nn.Module):
    """in_proj -> top-k routed experts whose weights are gathered by expert id -> out_proj."""

    def __init__(self, d0=6, d=8, h=12, e=4, k=2):
        super().__init__()
        torch.manual_seed(0)
        self.k = k
        self.inp, self.out = nn.Linear(d0, d), nn.Linear(d, d0)
        self.router = nn.Linear(d, e)
        self.w1 = nn.Parameter(torch.randn(e, h, d) / 3)
        self.w2 = nn.Parameter(torch.randn(e, d, h) / 3)

    def forward(self, x):
        x = self.inp(x)
        weights, idx = self.router(x).softmax(-1).topk(self.k, dim=-1)
        hid = torch.einsum("td,tkhd->tkh", x, self.w1[idx]).relu()
        y = torch.einsum("tkh,tkdh->tkd", hid, self.w2[idx])
        return self.out((y * weights.unsqueeze(-1)).sum(1) + x)


@pytest.mark.parametrize("front_end", ["trace", "export"])
def test_moe_expert_gather_keeps_width_and_hidden_prunable(front_end):
    m = MoE().eval()
    dg = verified(m, torch.randn(5, 6), front_end, groups=2, removal_groups=2)
    hidden, width = group_with(dg, "w1", 2, 8), group_with(dg, "w1", 1, 12)
    assert {("w2", 1), ("inp.weight", 0), ("router.weight", 1), ("out.weight", 1)} <= set(hidden.members)
    assert ("w2", 2) in width.members
    pinned = dg.report()
    assert "coordinate-dependent op" in pinned and "dimension addressed by index values" in pinned
    assert not any(("w1", 0) in g.members or ("router.weight", 0) in g.members for g in dg.groups)  # experts
    pruned = fxprune.apply(dg, {hidden: [0, 3, 5], width: list(range(0, 12, 2))})
    assert pruned.get_parameter("w1").shape == (4, 6, 3) and pruned.get_parameter("w2").shape == (4, 3, 6)
    assert pruned(x=torch.randn(7, 6)).shape == (7, 6)


class RelBias(nn.Module):
    """Swin-style window attention: a bias table (relative positions x heads) indexed by a buffer."""

    def __init__(self, c=8, heads=2, win=3):
        super().__init__()
        torch.manual_seed(0)
        self.h = heads
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.table = nn.Parameter(torch.randn((2 * win - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(win), torch.arange(win), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (win - 1)
        self.register_buffer("rel_index", rel[..., 0] * (2 * win - 1) + rel[..., 1])
        self.fc1, self.fc2 = nn.Linear(c, 16), nn.Linear(16, c)

    def forward(self, x):  # (B, N, C)
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.h, C // self.h).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.table[self.rel_index.view(-1)].view(N, N, -1).permute(2, 0, 1)
        a = (q @ k.transpose(-2, -1) + bias).softmax(-1)
        x = x + self.proj((a @ v).transpose(1, 2).reshape(B, N, C))
        return self.fc2(self.fc1(x).relu()) + x


@pytest.mark.parametrize("front_end", ["trace", "export"])
def test_relative_position_bias_lookup_keeps_heads_prunable(front_end):
    m = RelBias().eval()
    dg = verified(m, torch.randn(2, 9, 8), front_end, groups=3, removal_groups=2)
    heads = group_with(dg, "table", 1, 2)
    assert ("qkv.weight", 0) in heads.members
    assert not any(t in ("table", "rel_index") and d == 0 for g in dg.groups for t, d in g.members)  # rows, positions
    pruned = fxprune.apply(dg, {heads: [1]})
    assert pruned.get_parameter("table").shape == (25, 1)
    assert pruned(x=torch.randn(3, 9, 8)).shape == (3, 9, 8)


class IndexChannels(nn.Module):
    """``y[:, idx]`` with a buffer index: the addressed channels are pinned, the picked positions prune."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 1)
        self.register_buffer("idx", torch.tensor([5, 0, 2, 2]))
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.out(self.a(x)[:, self.idx])


@pytest.mark.parametrize("front_end", ["trace", "export"])
def test_index_buffer_positions_prune_with_their_consumer(front_end):
    m = IndexChannels().eval()
    dg = verified(m, torch.randn(2, 3, 5, 5), front_end, groups=1, removal_groups=1)
    g = group_with(dg, "idx", 0, 4)
    assert set(g.members) == {("idx", 0), ("out.weight", 1)}  # never a.weight: its channels are addressed
    pruned = fxprune.apply(dg, {g: [3, 0]})
    assert pruned.get_buffer("idx").tolist() == [2, 5]


class MaskChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 6)
        self.register_buffer("mask", torch.tensor([True, False, True, True, False, True]))
        self.out = nn.Linear(4, 2)
        self.b = nn.Linear(3, 5)

    def forward(self, x):
        return self.out(self.a(x)[:, self.mask]), self.b(x).relu()


def test_boolean_mask_pins_the_masked_dim():
    m = MaskChannels().eval()
    dg = verified(m, torch.randn(2, 3), "trace", groups=0, removal_groups=0)
    assert "selected by a boolean mask" in dg.report()


class ScatterBack(nn.Module):
    """``z[idx] = y[idx]`` (aten.index_put_): rows addressed, the feature dim passes through."""

    def __init__(self):
        super().__init__()
        self.a, self.out = nn.Linear(3, 6), nn.Linear(6, 2)
        self.register_buffer("idx", torch.tensor([0, 2]))

    def forward(self, x):
        y = self.a(x)
        z = torch.zeros_like(y)
        z[self.idx] = y[self.idx].relu()
        return self.out(z + y)


def test_index_put_couples_values_with_the_written_region():
    m = ScatterBack().eval()
    dg = verified(m, torch.randn(4, 3), "export", groups=1, removal_groups=1)
    assert group_with(dg, "a.weight", 0, 6).members == [("a.weight", 0), ("a.bias", 0), ("out.weight", 1)]


class TransposedWeight(nn.Module):
    """``x @ w.T`` (aten.numpy_T, Falcon's linear): the weight stays a consumer for the removal oracle."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w1, self.w2 = nn.Parameter(torch.randn(10, 4)), nn.Parameter(torch.randn(3, 10))

    def forward(self, x):
        return (x @ self.w1.T).relu() @ self.w2.T


@pytest.mark.parametrize("front_end", ["trace", "export"])
def test_transposed_weight(front_end):
    dg = verified(TransposedWeight().eval(), torch.randn(5, 4), front_end, groups=1, removal_groups=1)
    assert set(dg.groups[0].members) == {("w1", 0), ("w2", 1)}


class TopK(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):  # top-2 rows of each channel: the rows are addressed, the channels pass through
        return self.b(self.a(x).topk(2, dim=0).values.relu())


@pytest.mark.parametrize("front_end", ["trace", "export"])
def test_topk_reads_dim_after_k(front_end):
    dg = verified(TopK().eval(), torch.randn(5, 4), front_end, groups=1, removal_groups=1)
    assert sizes(dg) == [6] and "out of range" not in dg.report()


class IndexAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.out = nn.Linear(3, 6), nn.Linear(6, 2)
        self.register_buffer("idx", torch.tensor([1, 1, 3]))

    def forward(self, x):  # (5, 3): rows 0, 1, 2 of a(x) added into rows 1, 1, 3
        y = self.a(x)
        return self.out(y.index_add(0, self.idx, y[:3].relu()))


@pytest.mark.parametrize("front_end", ["trace", "export"])
def test_index_add_pins_rows_and_positions(front_end):
    dg = verified(IndexAdd().eval(), torch.randn(5, 3), front_end, groups=1, removal_groups=1)
    assert sizes(dg) == [6] and not any(("idx", 0) in g.members for g in dg.groups)


class MultiQuery(nn.Module):
    """Falcon's multi-query split: q = heads[:-2], k = [..., [-2], :], v = [..., [-1], :] (constant indices)."""

    def __init__(self, c=8, heads=4, hd=2):
        super().__init__()
        torch.manual_seed(0)
        self.h, self.hd = heads, hd
        self.qkv, self.dense = nn.Linear(c, (heads + 2) * hd), nn.Linear(heads * hd, c)

    def forward(self, x):
        B, N, _ = x.shape
        fused = self.qkv(x).view(B, N, self.h + 2, self.hd)
        q, k, v = fused[..., :-2, :], fused[..., [-2], :], fused[..., [-1], :]
        a = (q.transpose(1, 2) @ k.permute(0, 2, 3, 1)).softmax(-1) @ v.transpose(1, 2)
        return self.dense(a.transpose(1, 2).reshape(B, N, self.h * self.hd))


@pytest.mark.parametrize("front_end", ["trace", "export"])
def test_constant_index_pins_only_what_it_addresses(front_end):
    dg = verified(MultiQuery().eval(), torch.randn(2, 5, 8), front_end, groups=2, removal_groups=1)
    heads = group_with(dg, "dense.weight", 1, 4)  # query heads; k, v (addressed from the end) stay pinned
    pruned = fxprune.apply(dg, {heads: [0, 3]})
    assert pruned.get_parameter("qkv.weight").shape == (8, 8)
