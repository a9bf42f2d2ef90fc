"""Calibration statistics and the calibrated criteria (wanda, fluctuation, obs): known answers."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune.calib import OBS, Fluctuation, Wanda, calibrate
from fxprune.calib import collect
from fxprune.calib.criteria import DAMPING


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2)).double().eval()


def data(n=4, rows=16, width=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, width, generator=gen, dtype=torch.float64) for _ in range(n)]


def hidden(m, xs):
    return torch.cat([F.relu(m[0](x)) for x in xs])


def test_statistics_stream_equal_one_shot_and_the_layer_input():
    m, xs = mlp(), data()
    dg = fxprune.analyze(m, (xs[0][:1],))
    streamed = calibrate(dg, xs, gram=True)
    once = calibrate(dg, [torch.cat(xs)], gram=True)
    (key, site), = streamed.sites.items()
    assert site.weight == "2.weight" and site.dim == 1 and site.kind == "linear"
    a, b = streamed.stats[key], once.stats[key]
    h = hidden(m, xs)
    assert a.n == b.n == 64 and streamed.batches == 4 and once.batches == 1
    for got in (a, b):
        assert torch.allclose(got.mean, h.mean(0), rtol=1e-12, atol=1e-14)
        assert torch.allclose(got.second, h.pow(2).mean(0), rtol=1e-12, atol=1e-14)
        assert torch.allclose(got.moment, h.T @ h / 64, rtol=1e-12, atol=1e-14)
        assert got.gram.dtype == torch.float64


def test_criteria_equal_hand_computations():
    m, xs = mlp(), data()
    dg = fxprune.analyze(m, (xs[0][:1],))
    cal = calibrate(dg, xs, gram=True)
    g, = dg.groups
    h, w = hidden(m, xs), m[2].weight.detach()
    wanda = w.abs().sum(0) * h.pow(2).mean(0).sqrt()
    fluct = h.var(0, unbiased=False) * w.pow(2).sum(0)
    # one consumer: its scores in output units; by default divided by their mean
    assert torch.allclose(Wanda(normalizer=None)(dg, g, cal), wanda, rtol=1e-9)
    assert torch.allclose(Fluctuation(normalizer=None)(dg, g, cal), fluct, rtol=1e-9)
    assert torch.allclose(Wanda()(dg, g, cal), wanda / wanda.mean(), rtol=1e-9)
    scores = fxprune.score_groups(dg, "fluctuation", data=xs)
    assert torch.allclose(scores[g], fluct / fluct.mean(), rtol=1e-9)


def _refit_error(h, y, kept):
    """Mean squared error of the least-squares fit of ``y`` from the columns ``kept`` of ``h``."""
    if not kept:
        return y.pow(2).sum() / h.shape[0]
    sol = torch.linalg.lstsq(h[:, kept], y).solution
    return (y - h[:, kept] @ sol).pow(2).sum() / h.shape[0]


@pytest.mark.parametrize("damping", [0.0, DAMPING])
def test_obs_is_the_error_left_after_the_optimal_refit(damping):
    """obs removes greedily: each score is the output error once that coordinate and all before it are
    gone and the rest refit (the damped refit of repair="lstsq"); the first is the least single loss."""
    m, xs = mlp(), data()
    dg = fxprune.analyze(m, (xs[0][:1],))
    cal = calibrate(dg, xs, gram=True)
    g, = dg.groups
    scores = OBS(damping=damping, normalizer=None)(dg, g, cal)
    h, w = hidden(m, xs), m[2].weight.detach()
    y = h @ w.T
    order = torch.argsort(scores).tolist()
    if damping == 0:
        singles = [_refit_error(h, y, [i for i in range(6) if i != j]) for j in range(6)]
        assert torch.allclose(scores[order[0]], min(singles), rtol=1e-6)
        for k in range(1, 7):
            assert torch.allclose(scores[order[k - 1]], _refit_error(h, y, sorted(order[k:])), rtol=1e-6, atol=1e-12)
    gm = h.T @ h / h.shape[0]
    lam = damping * gm.diagonal().mean()
    for k in range(1, 7):  # the damped refit pulls toward the kept weights: (W G_:K + lam W_K)(G_KK + lam I)^-1
        kept = sorted(order[k:])
        full = torch.zeros_like(w)
        if kept:
            hk = gm[kept][:, kept] + lam * torch.eye(len(kept), dtype=torch.float64)
            full[:, kept] = torch.linalg.solve(hk, (w @ gm[:, kept] + lam * w[:, kept]).T).T
        d = w - full
        assert torch.allclose(scores[order[k - 1]], ((d @ gm) * d).sum(), rtol=1e-6, atol=1e-12)


class Heads(nn.Module):
    """Two heads of width 3 (``view(-1, 2, 3)``) read by one linear: a head owns 3 columns."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 5)

    def forward(self, x):
        h = F.relu(self.a(x)).view(-1, 2, 3) * 2.0
        return self.b(h.reshape(-1, 6))


def test_product_layouts_score_every_column_a_coordinate_owns():
    torch.manual_seed(0)
    m, xs = Heads().double().eval(), data(width=4)
    dg = fxprune.analyze(m, (xs[0][:1],))
    cal = calibrate(dg, xs, gram=True)
    h = torch.cat([2 * F.relu(m.a(x)) for x in xs])
    w = m.b.weight.detach()
    col = w.abs().sum(0) * h.pow(2).mean(0).sqrt()
    gm = h.T @ h / h.shape[0]
    hinv = torch.linalg.inv(gm)
    by_size = {g.size: g for g in dg.groups}
    heads, dims = by_size[2], by_size[3]
    assert torch.allclose(Wanda(normalizer=None)(dg, heads, cal), col.view(2, 3).sum(1), rtol=1e-9)
    assert torch.allclose(Wanda(normalizer=None)(dg, dims, cal), col.view(2, 3).sum(0), rtol=1e-9)
    single = []
    for head in range(2):  # a head is removed as one block of 3 columns
        s = list(range(3 * head, 3 * head + 3))
        ws = w[:, s]
        single.append(torch.trace(ws @ torch.linalg.inv(hinv[s][:, s]) @ ws.T))
    obs = OBS(damping=0.0, normalizer=None)(dg, heads, cal)
    assert torch.allclose(obs.min(), min(single), rtol=1e-9)  # the cheaper head goes first
    assert torch.allclose(obs.max(), ((w @ gm) * w).sum(), rtol=1e-9)  # then all of the output


def test_convolutions_are_calibrated_per_channel():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3)).double().eval()
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    dg = fxprune.analyze(m, (x[:1],))
    cal = calibrate(dg, [x], gram=True)
    (key, site), = cal.sites.items()
    rows = F.relu(m[0](x)).permute(0, 2, 3, 1).reshape(-1, 4)
    st = cal.stats[key]
    assert site.kind == "conv" and st.n == 2 * 36
    assert torch.allclose(st.moment, rows.T @ rows / st.n, rtol=1e-12)
    g, = dg.groups
    w = m[2].weight.detach()
    want = rows.var(0, unbiased=False) * w.pow(2).sum((0, 2, 3))
    assert torch.allclose(Fluctuation(normalizer=None)(dg, g, cal), want, rtol=1e-9)


def test_activations_are_freed_after_their_last_use(monkeypatch):
    """A deep chain keeps a bounded number of live activations, not one per layer."""
    torch.manual_seed(0)
    m = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(30)]).eval()
    dg = fxprune.analyze(m, (torch.randn(1, 8),))
    live = []
    run_node = collect._Calibrator.run_node

    def spy(self, n):
        live.append(sum(isinstance(v, torch.Tensor) for v in self.env.values()))
        return run_node(self, n)
    monkeypatch.setattr(collect._Calibrator, "run_node", spy)
    cal = calibrate(dg, [torch.randn(4, 8)])
    assert len(cal.sites) == 29 and len(live) > 60
    assert max(live) <= 2


def test_batches_tuples_dicts_and_labelled_pairs():
    m, xs = mlp(), data()
    dg = fxprune.analyze(m, (xs[0][:1],))
    key = next(iter(calibrate(dg, xs).sites))
    plain = calibrate(dg, xs).stats[key].s2
    for batches in ([(x,) for x in xs], [{"input": x} for x in xs], [(x, torch.zeros(16)) for x in xs]):
        assert torch.equal(calibrate(dg, batches).stats[key].s2, plain)


def test_errors_name_the_fix():
    m, xs = mlp(), data()
    dg = fxprune.analyze(m, (xs[0][:1],))
    with pytest.raises(ValueError, match="need data"):
        calibrate(dg, None)
    with pytest.raises(ValueError, match="iterator"):
        calibrate(dg, iter(xs))
    with pytest.raises(ValueError, match="no batch"):
        calibrate(dg, [])
    with pytest.raises(ValueError, match="does not fit"):
        calibrate(dg, [torch.randn(4, 5, dtype=torch.float64)])
    with pytest.raises(ValueError, match="pass data="):
        fxprune.score_groups(dg, "wanda")
    with pytest.raises(ValueError, match="Gram"):
        OBS()(dg, dg.groups[0], calibrate(dg, xs))
    with pytest.raises(ValueError, match="read activations"):
        fxprune.prune(m, (xs[0],), importance="obs")
    with pytest.raises(ValueError, match="repair must be"):
        fxprune.prune(m, (xs[0],), repair="ols", data=xs)
    with pytest.raises(ValueError, match="budget must be"):
        fxprune.PruneConfig(budget="flops")
    with pytest.raises(ValueError, match="one step"):
        fxprune.prune(m, (xs[0],), inplace=True, iterative_steps=2)


def test_wanda_keeps_the_channels_that_carry_the_output():
    """Channels with large weights but no activation are the ones wanda drops (magnitude keeps them)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)).double().eval()
    dead = [0, 2, 4, 6]
    with torch.no_grad():
        m[0].weight[dead] = 0
        m[0].bias[dead] = -1.0  # never active
        m[2].weight[:, dead] *= 100  # but heavy outgoing weights
    xs = data()
    x = (xs[0][:1],)
    for crit in ("wanda", "fluctuation", "obs"):
        pruned = fxprune.prune(m, x, ratio=0.5, importance=crit, data=xs)
        assert torch.allclose(pruned(xs[0]), m(xs[0]), atol=1e-12), crit
    magnitude = fxprune.prune(m, x, ratio=0.5, importance="l2")
    assert not torch.allclose(magnitude(xs[0]), m(xs[0]))


def test_global_budget_in_parameters():
    """budget="params": ratio is the share of the candidate tensors' parameters, measured on the pruned
    layouts (a tensor that loses rows and columns is counted once; Note [Honoured budgets]); coordinates
    are ranked weighing the parameters they carry."""
    from fxprune.calib.allocation import coordinate_costs

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 2)).eval()
    x = (torch.randn(1, 16),)
    dg = fxprune.analyze(m, x)
    costs = coordinate_costs(dg, dg.groups)
    assert sorted(costs.values()) == [8 + 1 + 2, 16 + 1 + 64]  # a 64-group channel, an 8-group channel
    scores = fxprune.score_groups(dg, fxprune.Random(0))
    for budget in ("coordinates", "params"):
        keep = fxprune.plan(dg, scores, fxprune.PruneConfig(ratio=0.5, scope="global", budget=budget))
        removed = {g: g.size - len(keep.get(g, range(g.size))) for g in dg.groups}
        if budget == "coordinates":
            assert sum(removed.values()) == 36
        else:
            total = fxprune.count_params(m)
            share = 1 - fxprune.count_params(fxprune.apply(dg, keep)) / total
            assert abs(share - 0.5) <= max(costs.values()) / total / 2


class TwoReaders(nn.Module):
    """One hidden group read by a narrow and a wide layer."""

    def __init__(self):
        super().__init__()
        self.a, self.narrow, self.wide = nn.Linear(3, 6), nn.Linear(6, 2), nn.Linear(6, 40)

    def forward(self, x):
        h = F.relu(self.a(x))
        return self.narrow(h).sum(1) + self.wide(h).sum(1)


def test_consumers_are_normalised_before_they_are_averaged():
    torch.manual_seed(0)
    m, xs = TwoReaders().double().eval(), data()
    dg = fxprune.analyze(m, (xs[0][:1],))
    cal = calibrate(dg, xs)
    g, = [g for g in dg.groups if ("a.weight", 0) in g.members]
    h = torch.cat([F.relu(m.a(x)) for x in xs])
    norm = h.pow(2).mean(0).sqrt()
    per = [layer.weight.detach().abs().sum(0) * norm for layer in (m.narrow, m.wide)]
    want = (per[0] / per[0].mean() + per[1] / per[1].mean()) / 2 * (per[0].mean() + per[1].mean()) / 2
    assert torch.allclose(Wanda(normalizer=None)(dg, g, cal), want, rtol=1e-9)
    assert torch.allclose(Wanda()(dg, g, cal), want / want.mean(), rtol=1e-9)
