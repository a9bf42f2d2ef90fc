"""fxprune.prune: ratios, overrides, limits, rounding, ignore, factors, targets, iterations, sparsity, errors."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune.tools.demo import DemoNet, demo_inputs


def cnn(width=16):
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(2 * width, 24, 3), nn.ReLU(), nn.Flatten(), nn.Linear(24 * 16, 10))


X = (torch.randn(2, 3, 6, 6),)


def _outs(m):
    return [m.get_submodule(n).out_channels for n in ("0", "2", "4")]


def test_dead_channels_are_removed_and_the_function_is_exact():
    torch.manual_seed(0)
    m = cnn().double()
    dead = [1, 4, 5, 9, 12, 13, 14, 15]
    with torch.no_grad():
        m[0].weight[dead] = 0
        m[0].bias[dead] = 0
    x = (torch.randn(3, 3, 6, 6, dtype=torch.float64),)
    pruned = fxprune.prune(m, x, ratio=0.5, importance="l1", ratios={"2": 0.0, "4": 0.0})
    assert pruned.get_submodule("0").out_channels == 8
    assert torch.equal(pruned.get_submodule("0").weight, m[0].weight[[i for i in range(16) if i not in dead]])
    assert torch.allclose(pruned(*x), m(*x), rtol=0, atol=1e-12)
    assert fxprune.verify(pruned, x).passed


def test_local_ratio_min_keep_round_to_and_no_mutation():
    m = cnn()
    before = copy.deepcopy(m.state_dict())
    assert _outs(fxprune.prune(m, X, ratio=0.5)) == [8, 16, 12]
    assert _outs(fxprune.prune(m, X, ratio=0.9, min_keep=3)) == [3, 3, 3]
    assert _outs(fxprune.prune(m, X, ratio=0.6, round_to=8)) == [8, 16, 16]
    assert _outs(fxprune.prune(m, X, ratio=0.5, max_ratio=0.25)) == [12, 24, 18]
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


def test_per_module_overrides_and_ignore():
    m = cnn()
    assert _outs(fxprune.prune(m, X, ratio=0.5, ratios={"2": 0.75, "4": 0.0})) == [8, 8, 24]
    assert _outs(fxprune.prune(m, X, ratio=0.5, ignore=["0"])) == [16, 16, 12]  # the group of 0's outputs
    assert _outs(fxprune.prune(m, X, ratio=0.5, ignore=[nn.Linear])) == [8, 16, 24]  # Linear reads conv 4's
    assert _outs(fxprune.prune(m, X, ratio=0.5, ignore=[m[2].weight])) == [16, 32, 12]  # both its dims
    assert _outs(fxprune.prune(m, X, ratio=0.5, ignore=[m[0]])) == [16, 16, 12]
    assert _outs(fxprune.prune(m, X, ratio=0.5, ignore=["?"])) == [16, 32, 24]  # glob on module names
    for bad in (["features"], [nn.LSTM], [nn.Parameter(torch.ones(1))]):
        with pytest.raises(ValueError, match="matches no parameter"):
            fxprune.prune(m, X, ratio=0.5, ignore=bad)
    with pytest.raises(ValueError, match="matches no parameter"):
        fxprune.prune(m, X, ratio=0.5, ratios={"head": 0.1})


def test_global_scope_ranks_across_groups():
    torch.manual_seed(0)
    m = cnn()
    with torch.no_grad():
        m[0].weight.mul_(100)  # the group of conv 0's outputs gets far larger scores
        m[0].bias.mul_(100)
    pruned = fxprune.prune(m, X, ratio=0.4, scope="global", importance=fxprune.Magnitude(normalizer=None))
    outs = _outs(pruned)
    assert outs[0] == 16
    assert (16 + 32 + 24) - sum(outs) == round(0.4 * 72)
    capped = _outs(fxprune.prune(m, X, ratio=0.4, scope="global", max_ratio=0.5,
                                 importance=fxprune.Magnitude(normalizer=None)))
    assert capped == [15, 16, 12]  # 29 removed: 16 and 12 at the cap, then conv 0's weakest


def test_factors_choose_outer_or_inner_product_groups():
    net, x = DemoNet().eval(), demo_inputs()
    outer = fxprune.prune(net, x, ratio=0.5, factors="outer")
    inner = fxprune.prune(net, x, ratio=0.5, factors="inner")
    both = fxprune.prune(net, x, ratio=0.5)
    # stem = G0 (2, outer) x G1 (8, inner); dense.a's outputs are G1 alone
    assert outer.get_submodule("stem.0").out_channels == 8 and outer.get_submodule("dense.a").out_channels == 8
    assert inner.get_submodule("stem.0").out_channels == 8 and inner.get_submodule("dense.a").out_channels == 4
    # both factors share the ratio: half of the stem's outputs go, not half of each factor (a quarter kept)
    assert both.get_submodule("stem.0").out_channels == 8
    for p in (outer, inner, both):
        assert fxprune.verify(p, x).passed


@pytest.mark.parametrize("scope", ["local", "global"])
def test_target_macs_within_one_percent(scope):
    m, x = cnn(32), (torch.randn(1, 3, 6, 6),)
    base = fxprune.count_macs(m, x)
    tol = 0.01 if scope == "global" else 0.05  # a uniform ratio moves in coarser steps
    pruned = fxprune.prune(m, x, target_macs=0.4, scope=scope, tolerance=tol)
    assert abs(fxprune.count_macs(pruned, x) - 0.4 * base) <= tol * 0.4 * base
    absolute = fxprune.prune(m, x, target_params=30000, scope=scope, tolerance=tol)
    assert abs(fxprune.count_params(absolute) - 30000) <= tol * 30000


def test_unreachable_targets_are_errors():
    m, x = cnn(), X
    with pytest.raises(ValueError, match="unreachable"):
        fxprune.prune(m, x, target_macs=0.05, max_ratio=0.5)
    with pytest.raises(ValueError, match="not below"):
        fxprune.prune(m, x, target_params=10 ** 9)


def test_bad_input_is_rejected_clearly():
    m = cnn()
    for r in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\)"):
            fxprune.prune(m, X, ratio=r)
    with pytest.raises(ValueError, match="needs gradients"):
        fxprune.prune(m, X, ratio=0.5, importance="taylor")
    with pytest.raises(ValueError, match="scope"):
        fxprune.PruneConfig(scope="layer")
    with pytest.raises(ValueError, match="not both"):
        fxprune.PruneConfig(target_macs=0.5, target_params=0.5)
    with pytest.raises(ValueError, match="unknown importance"):
        fxprune.PruneConfig(importance="l7")


def test_iterative_schedule_and_callback():
    m = cnn()
    seen = []

    def finetune(step, model):
        seen.append((step, _outs(model)))

    final = fxprune.prune(m, X, ratio=0.5, iterative_steps=2, callback=finetune)
    assert seen == [(1, [12, 24, 18]), (2, [8, 16, 12])]
    assert _outs(final) == [8, 16, 12]
    geo = []
    fxprune.prune(m, X, ratio=0.75, iterative_steps=2, schedule="geometric", callback=lambda k, mm: geo.append(_outs(mm)))
    assert geo == [[8, 16, 12], [4, 8, 6]]
    macs = []
    base = fxprune.count_macs(m, X)
    fxprune.prune(m, X, target_macs=0.5, iterative_steps=2, scope="global", tolerance=0.03,
                  callback=lambda k, mm: macs.append(fxprune.count_macs(mm, X) / base))
    assert macs[0] == pytest.approx(0.75, abs=0.0225) and macs[1] == pytest.approx(0.5, abs=0.015)


def test_taylor_prunes_with_data_and_config_object():
    torch.manual_seed(0)
    m = cnn()
    data = [(torch.randn(4, 3, 6, 6), torch.randint(0, 10, (4,))) for _ in range(2)]
    cfg = fxprune.PruneConfig(ratio=0.5, importance="taylor")
    pruned = fxprune.prune(m, X, cfg, data=data)
    assert _outs(pruned) == [8, 16, 12]
    custom = fxprune.prune(m, X, cfg, data=data, loss_fn=lambda model, b: model(b[0]).pow(2).mean(), round_to=16)
    assert _outs(custom) == [16, 16, 16]


def test_group_sparsity_drives_weak_coordinates_to_zero():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    x = (torch.randn(1, 6),)
    reg = fxprune.GroupSparsity(m, x, strength=1e-2, alpha=4)
    norms0 = reg.group_norms()[0].detach()
    want = (torch.cat([m[0].weight, m[0].bias[:, None], m[2].weight.t()], 1).pow(2).sum(1)).sqrt()
    assert torch.allclose(norms0, want, atol=1e-6)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for _ in range(40):
        opt.zero_grad()
        reg().backward()
        opt.step()
    norms = reg.group_norms()[0].detach()
    weakest = int(norms0.argmin())
    assert norms[weakest] < 0.05 * norms.max() and norms.max() > 0.5 * norms0.max()
    pruned = fxprune.prune(m, x, ratio=1 / 8, importance="l2")
    kept = pruned.get_submodule("0").weight
    assert not any(torch.equal(m[0].weight[weakest], r) for r in kept)
    xs = torch.randn(5, 6)
    assert torch.allclose(pruned(xs), m(xs), atol=0.05 * m(xs).abs().max().item())
    with pytest.raises(ValueError, match="matches no parameter"):
        fxprune.GroupSparsity(m, x, ignore=["nothing"])


def test_pruned_training_still_works():
    m = cnn()
    pruned = fxprune.prune(m, X, ratio=0.5)
    loss = F.cross_entropy(pruned(torch.randn(4, 3, 6, 6)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert pruned.get_submodule("0").weight.grad.shape == (8, 3, 3, 3)
