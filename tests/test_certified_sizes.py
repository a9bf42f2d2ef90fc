"""A size that mixes a run-time dim (batch, spatial) with a pruned one (heads, channels) stays an
expression of the run-time dim with the pruned factor rewritten (issue 26; Note [Run-time sizes]
in passes/rules/common.py): the pruned model runs at every batch size the original runs at, and
the oracles are exact there, not only at the example's size."""
import copy
import os
import sys

import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.checks.oracles import _zero_removed_consumers
from fxprune.passes import rewrite_graph

sys.path.insert(0, os.path.dirname(__file__))


class HeadsFold(nn.Module):
    """Self-attention with batch x heads folded into one dim (``reshape(B * h, N, d)``)."""

    def __init__(self, dim=24, heads=4, how="reshape", read="shape"):
        super().__init__()
        self.heads, self.how, self.read = heads, how, read
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B = x.shape[0] if self.read == "shape" else x.size(0)
        N = x.shape[1]
        fold = (lambda t: t.reshape(B, N, self.heads, -1).transpose(1, 2).reshape(B * self.heads, N, -1)) \
            if self.how == "reshape" else \
            (lambda t: t.view(B, N, self.heads, -1).transpose(1, 2).contiguous().view(B * self.heads, N, -1))
        q, k, v = fold(self.q(x)), fold(self.k(x)), fold(self.v(x))
        attn = torch.softmax(q @ k.transpose(1, 2), -1)
        out = (attn @ v).view(B, self.heads, N, -1).transpose(1, 2).reshape(B, N, -1)
        return self.proj(out)


class SpatialFold(nn.Module):
    """Channels x spatial folded into one dim: ``reshape(B * C, H * W)`` and ``reshape(B, C * H, W)``."""

    def __init__(self, read="shape"):
        super().__init__()
        self.read = read
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        B, C, H, W = y.shape if self.read == "shape" else (y.size(0), y.size(1), y.size(2), y.size(3))
        z = y.reshape(B * C, H * W).softmax(-1).reshape(B, C, H, W)  # softmax over the pixels
        w = y.reshape(B, C * H, W).softmax(-1).view(B, C, H, W)  # over each row
        return self.b(z + w)


def _at(x: torch.Tensor, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(batch)
    return torch.randn((batch, *x.shape[1:]), generator=g, dtype=x.dtype)


def oracles_at(model: nn.Module, example: torch.Tensor, batches) -> tuple:
    """Analyse at ``example``; both oracles (float64) at every batch size in ``batches``:
    (largest permutation error, largest removal error, share of parameters removed)."""
    model = copy.deepcopy(model).double().eval()
    dg = fxprune.analyze(model, (example.double(),))
    assert dg.groups, dg.report()
    gen = torch.Generator().manual_seed(0)
    perm = {g.atom: torch.randperm(g.size, generator=gen) for g in dg.groups}
    keep = {g.atom: torch.randperm(g.size, generator=gen)[: max(1, 2 * g.size // 3)]
            for g in dg.groups if g.mixing is None}
    permuted = rewrite_graph(dg.gm, perm)
    zeroed = copy.deepcopy(dg.gm)
    _zero_removed_consumers(zeroed, keep)
    removed = rewrite_graph(zeroed, keep)
    perm_err = rem_err = 0.0
    with torch.no_grad():
        for b in batches:
            x = _at(example, b).double()
            perm_err = max(perm_err, fxprune.relative_error(model(x), permuted(x)))
            rem_err = max(rem_err, fxprune.relative_error(zeroed(x), removed(x)))
    share = 1 - sum(p.numel() for p in removed.parameters()) / sum(p.numel() for p in zeroed.parameters())
    return perm_err, rem_err, share, dg


def heads_group(dg, size=4):
    return [g for g in dg.groups if g.size == size and any(t == "q.weight" for t, _ in g.members)]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("how,read", [("reshape", "shape"), ("view", "size"), ("reshape", "size"), ("view", "shape")])
def test_batch_times_heads_fold_stays_dynamic(how, read, batch):
    m = HeadsFold(how=how, read=read).eval()
    x = torch.randn(batch, 5, 24)
    perm_err, rem_err, share, dg = oracles_at(m, x, [batch, 3, 7])
    assert heads_group(dg), f"heads are pinned, not rewritten:\n{dg.report()}"
    assert perm_err < 1e-12 and rem_err < 1e-12
    assert share > 0.2


def test_batch_times_heads_pruned_model_keeps_the_runtime_factor():
    """The rewritten size is B*new_heads, not the example's product: runs at batch 1, 2, 5."""
    m = HeadsFold().eval()
    small = fxprune.prune(m, (torch.randn(1, 5, 24),), ratio=0.5)
    folds = [n for n in small.graph.nodes if n.target == "reshape" and len(n.args) == 4]
    assert folds and all(not isinstance(n.args[1], int) for n in folds), small.code
    for b in (1, 2, 5):
        assert small(torch.randn(b, 5, 24)).shape == (b, 5, 24)


@pytest.mark.parametrize("read", ["shape", "size"])
@pytest.mark.parametrize("batch", [1, 2])
def test_spatial_times_channels_fold_stays_dynamic(read, batch):
    m = SpatialFold(read).eval()
    x = torch.randn(batch, 3, 5, 6)
    perm_err, rem_err, share, dg = oracles_at(m, x, [batch, 3, 4])
    assert [g.size for g in dg.groups] == [8], dg.report()
    assert perm_err < 1e-12 and rem_err < 1e-12
    assert share > 0.2


class Concat(nn.Module):
    """A dim that concatenates channels with an input dim: its size at run time is 6 + x.shape[1],
    which no scaling of the pruned factor reproduces."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.a(x)  # (B, 6)
        n = torch.cat([h, x], 1).shape[1]  # channels ++ an input dim
        return self.b(h) * n


def test_undecomposable_runtime_size_pins_and_says_so():
    m = Concat().eval()
    dg = fxprune.analyze(m, (torch.randn(2, 4),))
    assert not dg.groups
    assert "run-time size of a concatenation" in dg.report()


@pytest.fixture(scope="module")
def timm():
    from zoo import import_torchvision

    import_torchvision()
    return pytest.importorskip("timm")


class BotBlock(nn.Module):
    """timm's BottleneckAttn (relative position logits) between two convs, as in BotNet."""

    def __init__(self, timm):
        super().__init__()
        from timm.layers.bottleneck_attn import BottleneckAttn

        self.inp = nn.Conv2d(3, 32, 1)
        self.attn = BottleneckAttn(32, 32, feat_size=(6, 6), num_heads=4, dim_head=8)
        self.out = nn.Conv2d(32, 5, 1)

    def forward(self, x):
        return self.out(self.attn(self.inp(x)))


def test_timm_bottleneck_attention_runs_at_other_batch_sizes_after_pruning(timm):
    torch.manual_seed(0)
    m = BotBlock(timm).eval()
    with torch.no_grad():  # timm zero-inits the relative position tables: make them matter
        for p in m.attn.pos_embed.parameters():
            p.normal_(std=0.5)
    x = torch.randn(1, 3, 6, 6)
    small = fxprune.prune(m, (x,), ratio=0.3)
    assert small.fxprune_certificate.passed
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in m.parameters())
    for b in (2, 3):
        assert small(torch.randn(b, 3, 6, 6)).shape == (b, 5, 6, 6)
    perm_err, rem_err, _, dg = oracles_at(m, x, [1, 2, 3])
    assert perm_err < 1e-12 and rem_err < 1e-12


@pytest.fixture
def literal_sizes(monkeypatch):
    """The rewrite as it was before issue 26: a run-time size becomes the example's literal."""
    import fxprune.passes.rewrite as rewrite

    monkeypatch.setattr(rewrite, "_scaled", lambda before, size, old, new: new)


def test_certificate_checks_a_second_batch_size():
    small = fxprune.prune(HeadsFold().eval(), (torch.randn(1, 5, 24),), ratio=0.5)
    cert = small.fxprune_certificate
    assert cert.passed and "also at batch 2" in str(cert), str(cert)


def test_a_size_right_only_at_the_examples_batch_is_a_mismatch(literal_sizes):
    m, x = HeadsFold().eval(), torch.randn(1, 5, 24)
    with pytest.raises(fxprune.OracleMismatchError, match=r"MISMATCH.*at batch 2 \(rel. error [1-9]"):
        fxprune.prune(m, (x,), ratio=0.5)
    cert = fxprune.checks.certify(fxprune.analyze(m, (x,)), raise_on_mismatch=False)
    assert not cert.passed and "MISMATCH" in str(cert)
    rep = fxprune.verify(m, (x,), raise_on_mismatch=False)
    assert not rep.passed and rep.permutation_error > 0.1 and "batch 2" in str(rep), str(rep)
