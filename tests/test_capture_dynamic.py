"""Dynamic dims of the export capture (Note [Dynamic dims] in fxprune/capture/frontends.py).

A batch of one must not freeze the pruned graph to batch 1; the report says which
dims stayed dynamic, or plainly that the capture is static; a size computed at run
time from the batch (``expand(x, [heads * b, n, n])``) must never be frozen into a
literal by the rewrite.
"""
import math

import pytest
import torch
import torch.nn as nn

import fxprune


def exact_at(model, dg, kwargs_or_args, gen_seed=0):
    """Every group permuted: the pruned graph computes what ``model`` computes on these inputs."""
    gen = torch.Generator().manual_seed(gen_seed)
    permuted = fxprune.apply(dg, {g: torch.randperm(g.size, generator=gen) for g in dg.groups})
    with torch.no_grad():
        if isinstance(kwargs_or_args, dict):
            ref, out = model(**kwargs_or_args), permuted(**kwargs_or_args)
        else:
            ref, out = model(*kwargs_or_args), permuted(*kwargs_or_args)
    torch.testing.assert_close(out, ref)


class Convs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.fc = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 6, 3), nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(self.b(self.a(x).relu()).mean((2, 3)))


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.fc, self.out = nn.Embedding(20, 8), nn.Linear(8, 12), nn.Linear(12, 20)

    def forward(self, ids):
        return self.out(self.fc(self.emb(ids)).relu())


def test_batch_of_one_image_stays_dynamic():
    m = Convs().eval()
    dg = fxprune.analyze(m, (), {"x": torch.randn(1, 3, 8, 8)})
    assert "dynamic shapes: x[0]; other dims static" in dg.front_end, dg.front_end
    exact_at(m, dg, {"x": torch.randn(3, 3, 8, 8)})


def test_single_token_stays_dynamic():
    m = Tokens().eval()
    dg = fxprune.analyze(m, (), {"ids": torch.tensor([[4]])})
    assert "ids[0, 1]" in dg.front_end, dg.front_end
    exact_at(m, dg, {"ids": torch.randint(0, 20, (3, 5))})


class FixedBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 5)
        self.register_buffer("offset", torch.randn(4, 3))

    def forward(self, x):
        return self.fc(x + self.offset)  # the batch must be 4: export specializes it


def test_static_capture_is_said_plainly():
    dg = fxprune.analyze(FixedBatch().eval(), (), {"x": torch.randn(4, 3)})
    assert "static shapes: the pruned model keeps the example's sizes" in dg.front_end, dg.front_end


class BatchTimesHeads(nn.Module):
    """DeBERTa's pattern: a size computed at run time as heads x batch describes a dim of batch x heads."""

    def __init__(self, h=2, d=4):
        super().__init__()
        torch.manual_seed(0)
        self.h, self.d = h, d
        self.q, self.k, self.o = nn.Linear(8, h * d), nn.Linear(8, h * d), nn.Linear(h * d, 8)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.h, self.d).transpose(1, 2).reshape(-1, n, self.d)
        k = self.k(x).view(b, n, self.h, self.d).transpose(1, 2).reshape(-1, n, self.d)
        bias = torch.zeros(1, n, n).expand(self.h * b, n, n)
        a = (q @ k.transpose(1, 2) + bias).softmax(-1) @ k
        return self.o(a.view(b, self.h, n, self.d).transpose(1, 2).reshape(b, n, self.h * self.d))


@pytest.mark.parametrize("front_end", ["trace", "export"])
def test_size_computed_from_the_batch_is_rescaled_not_frozen(front_end):
    """heads x batch stays an expression of the batch with the heads rewritten (Note [Run-time
    sizes] in passes/rules/common.py): the heads are prunable and the result runs at batch 3."""
    m = BatchTimesHeads().eval()
    x = torch.randn(2, 5, 8)
    args, kwargs = ((x,), None) if front_end == "trace" else ((), {"x": x})
    dg = fxprune.analyze(m, args, kwargs)
    assert any(("q.weight", 0) in g.members and g.size == 2 for g in dg.groups), dg.report()  # heads
    pruned = fxprune.apply(dg, {g: list(range(math.ceil(g.size / 2))) for g in dg.groups})
    x3 = torch.randn(3, 6, 8)
    with torch.no_grad():
        assert (pruned(x3) if front_end == "trace" else pruned(x=x3)).shape == (3, 6, 8)
    exact_at(m, dg, (x3,) if front_end == "trace" else {"x": x3})


class BatchBranch(nn.Module):
    """A forward that branches on the batch size (issue 21, item 6); ``pairs`` makes the other
    branch fail outright at batch 1, like export's batch != 1 guards."""

    def __init__(self, pairs=False):
        super().__init__()
        torch.manual_seed(0)
        self.pairs = pairs
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.fc1(x)
        if x.shape[0] == 1:
            return self.fc2(h * 1.5)
        if self.pairs:
            h = h.unflatten(0, (-1, 2)).flatten(0, 1)
        return self.fc2(h)


@pytest.mark.parametrize("pairs", [False, True])
def test_widened_capture_is_checked_on_the_callers_example(pairs):
    m = BatchBranch(pairs).eval()
    x = torch.randn(1, 4)
    small = fxprune.prune(m, (x,), ratio=0.0)
    assert small.fxprune_certificate.passed
    with torch.no_grad():
        assert fxprune.relative_error(m(x), small(x)) < 1e-6  # was 0.05 off, certified exact
    dg = fxprune.analyze(m, (x,))
    assert "static shapes" in dg.front_end and "does not reproduce the model" in dg.front_end, dg.front_end
    assert fxprune.verify(m, (x,)).passed
