"""Importance criteria: exact per-coordinate scores on product/concat layouts, every criterion, the registry."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune.policy.importance import Magnitude, normalize
from fxprune.tools.demo import DemoNet, demo_inputs


class FlattenNet(nn.Module):
    """conv (4 channels) -> flatten (C x 2 x 2) -> linear: the channel group is a product with space."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


class CatTwice(nn.Module):
    """``cat([y, y])``: every channel of ``a`` appears twice in ``b``'s input."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = F.relu(self.a(x))
        return self.b(torch.cat([y, y], 1))


def _l1_sum(dg, g):
    return Magnitude(p=1.0, reduction="sum", normalizer=None)(dg, g)


def test_flatten_product_reduces_blocks_per_channel():
    torch.manual_seed(0)
    m = FlattenNet()
    dg = fxprune.analyze(m, (torch.randn(1, 3, 4, 4),))
    (g,) = dg.groups
    want = m.conv.weight.abs().sum((1, 2, 3)) + m.fc.weight.abs().view(5, 4, 4).sum((0, 2))
    assert torch.allclose(_l1_sum(dg, g), want.double())


def test_concat_adds_every_occurrence():
    torch.manual_seed(0)
    m = CatTwice()
    dg = fxprune.analyze(m, (torch.randn(1, 3, 4, 4),))
    (g,) = dg.groups
    wb = m.b.weight.abs().sum((0, 2, 3))
    want = m.a.weight.abs().sum((1, 2, 3)) + wb[:4] + wb[4:]
    assert torch.allclose(_l1_sum(dg, g), want.double())


def test_product_of_groups_covers_every_element_once():
    """DemoNet's residual stream is product(G0, G1) (++ G1 ++ G1 after the dense concat): every
    element of every member of G1 lands on exactly one of its coordinates."""
    torch.manual_seed(0)
    dg = fxprune.analyze(DemoNet().eval(), demo_inputs())
    params = dict(dg.gm.named_parameters())
    for g in dg.groups[1:2]:
        total = sum(params[t].double().abs().sum().item() for t, _ in g.members if t in params and not t.endswith("bias"))
        assert _l1_sum(dg, g).sum().item() == pytest.approx(total, rel=1e-9)
    assert fxprune.factor_roles(dg, dg.groups[0]) == {"outer"}
    assert fxprune.factor_roles(dg, dg.groups[1]) == {"inner"}


def test_member_reductions():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    dg = fxprune.analyze(m, (torch.randn(1, 3),))
    (g,) = dg.groups
    out_sq = m[0].weight.pow(2).sum(1).double()
    in_sq = m[2].weight.pow(2).sum(0).double()
    expect = {"sum": out_sq + in_sq, "mean": (out_sq + in_sq) / 2, "max": torch.maximum(out_sq, in_sq),
              "prod": out_sq * in_sq}
    for red, want in expect.items():
        got = Magnitude(reduction=red, normalizer=None)(dg, g)
        assert torch.allclose(got, want), red
    normed = Magnitude()(dg, g)
    assert normed.mean().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="reduction"):
        Magnitude(reduction="median")


def test_normalizers():
    s = torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64)
    assert torch.allclose(normalize(s, "lamp"), torch.tensor([1 / 6, 1.0, 2 / 5], dtype=torch.float64))
    assert torch.allclose(normalize(s, "max"), s / 3)
    assert torch.allclose(normalize(s, "sum"), s / 6)
    assert normalize(s, "standardize").mean().abs().item() < 1e-12
    with pytest.raises(ValueError, match="normalizer"):
        normalize(s, "softmax")


def test_bn_scale_reads_gamma_and_skips_groups_without_norm():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1), nn.ReLU(),
                      nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        m[1].weight.copy_(torch.tensor([0.5, -2.0, 1.0, 0.1, -0.3, 3.0]))
    dg = fxprune.analyze(m, (torch.randn(1, 3, 4, 4),))
    crit = fxprune.BNScale(normalizer=None)
    assert torch.allclose(crit(dg, dg.groups[0]), m[1].weight.abs().double())
    assert crit(dg, dg.groups[1]) is None


def _data(n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, generator=gen), torch.randint(0, 2, (8,), generator=gen)) for _ in range(n)]


def test_taylor_and_hessian_match_hand_computation():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    data = _data()
    dg = fxprune.analyze(m, (torch.randn(1, 3),))
    (g,) = dg.groups
    stats = fxprune.collect_stats(dg.gm, data, fisher=True, per_batch=True)
    assert all(p.grad is None for p in m.parameters())  # .grad untouched
    grads = [torch.autograd.grad(F.cross_entropy(m(x), y), [m[0].weight, m[2].weight]) for x, y in data]
    per_batch = [(m[2].weight * g2).sum(0) for _, g2 in grads]  # removal = zeroing the consumer's slice
    want = torch.stack(per_batch).pow(2).mean(0).double()
    assert torch.allclose(fxprune.Taylor(normalizer=None)(dg, g, stats), want, rtol=1e-5)
    mean_g0 = sum(g0 for g0, _ in grads) / 3
    flat = fxprune.Taylor(normalizer=None, elementwise=True, reduction="sum")(dg, g, stats)
    assert torch.allclose(flat[:1], (m[0].weight * mean_g0).abs().sum(1).double()[:1]
                          + (m[2].weight * sum(g2 for _, g2 in grads) / 3).abs().sum(0).double()[:1], rtol=1e-5)
    obd = fxprune.Hessian(normalizer=None)(dg, g, stats)
    assert obd.shape == (4,) and (obd >= 0).all() and obd.sum() > 0
    with pytest.raises(ValueError, match="needs gradients"):
        fxprune.Taylor()(dg, g)


def test_collect_stats_keeps_batchnorm_statistics():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    before = m[1].running_mean.clone()
    fxprune.collect_stats(m, _data())
    assert torch.equal(before, m[1].running_mean) and m.training and m[1].training
    with pytest.raises(ValueError, match="no batch"):
        fxprune.collect_stats(m, [])


def test_fpgm_is_distance_to_the_others():
    m = nn.Sequential(nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0]]))
        m[2].weight.zero_()
    dg = fxprune.analyze(m, (torch.randn(1, 2),))
    s = fxprune.FPGM(normalizer=None)(dg, dg.groups[0])
    assert torch.allclose(s, torch.tensor([5.1, 5.0, 9.9], dtype=torch.float64))
    assert int(s.argmin()) == 1  # the coordinate nearest the median is the most redundant


def test_random_is_seeded():
    dg = fxprune.analyze(DemoNet(), demo_inputs())
    g = dg.groups[3]
    assert torch.equal(fxprune.Random(1)(dg, g), fxprune.Random(1)(dg, g))
    assert not torch.equal(fxprune.Random(1)(dg, g), fxprune.Random(2)(dg, g))


def test_every_registered_criterion_scores_demonet():
    torch.manual_seed(0)
    dg = fxprune.analyze(DemoNet().eval(), demo_inputs())
    data = [(torch.randn(2, 3, 32, 32), torch.tensor([1, 3]))]
    scores_by = {name: fxprune.score_groups(dg, name, data=data) for name in fxprune.importance_names()}
    for name, scores in scores_by.items():
        for g, s in scores.items():
            if s is not None:
                assert s.shape == (g.size,) and torch.isfinite(s).all(), (name, g)
        assert sum(s is not None for s in scores.values()) >= 3, name


def test_registry_custom_and_errors():
    class Reverse(fxprune.Criterion):
        def score(self, dg, group, stats):
            return -torch.arange(group.size, dtype=torch.float64)

    fxprune.register_importance("test_reverse", Reverse)
    with pytest.raises(ValueError, match="already registered"):
        fxprune.register_importance("test_reverse", Reverse)
    with pytest.raises(ValueError, match="unknown importance"):
        fxprune.get_importance("l3")
    m = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    x = (torch.randn(1, 3),)
    pruned = fxprune.prune(m, x, ratio=0.5, importance="test_reverse")
    assert torch.equal(pruned.get_submodule("0").weight, m[0].weight[:4])
    by_fn = fxprune.prune(m, x, ratio=0.5, importance=lambda dg, g, st: torch.arange(g.size, dtype=torch.float64))
    assert torch.equal(by_fn.get_submodule("0").weight, m[0].weight[4:])
