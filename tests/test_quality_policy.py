"""Ratios on factored head groups, budgets honoured for every criterion, sequential repair."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune.policy.factored import components, split_counts

E = 12


class GQABlock(nn.Module):
    """GQA attention (4 query heads, 2 kv heads, head dim 8) and an MLP, residual stream of width E."""

    def __init__(self, h=4, kv=2, d=8, mlp=24, classes=5):
        super().__init__()
        self.h, self.kv, self.d = h, kv, d
        self.q, self.k, self.v = nn.Linear(E, h * d), nn.Linear(E, kv * d), nn.Linear(E, kv * d)
        self.o = nn.Linear(h * d, E)
        self.up, self.down = nn.Linear(E, mlp), nn.Linear(mlp, E)
        self.head = nn.Linear(E, classes)

    def forward(self, x):
        b, n, _ = x.shape
        r = self.h // self.kv
        q = self.q(x).view(b, n, -1, self.d).transpose(1, 2)
        k = self.k(x).view(b, n, -1, self.d).transpose(1, 2)
        v = self.v(x).view(b, n, -1, self.d).transpose(1, 2)
        k = k[:, :, None].expand(b, k.shape[1], r, n, self.d).reshape(b, -1, n, self.d)
        v = v[:, :, None].expand(b, v.shape[1], r, n, self.d).reshape(b, -1, n, self.d)
        x = x + self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1))
        x = x + self.down(F.gelu(self.up(x)))
        return self.head(x)


ATTN = ("q.weight", "k.weight", "v.weight", "o.weight")


def _numel(m, names):
    return sum(m.get_parameter(n).numel() for n in names)


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.7])
def test_a_ratio_on_a_factored_head_group_removes_that_share_of_it(ratio):
    """ratio=0.3 removes about 30% of the attention parameters, not 3 of 4 heads (each factor rounded)."""
    torch.manual_seed(0)
    m = GQABlock().eval()
    x = (torch.randn(2, 5, E),)
    small = fxprune.prune(m, x, ratio=ratio, ignore=("up", "down"))
    removed = 1 - _numel(small, ATTN) / _numel(m, ATTN)
    assert abs(removed - ratio) <= 0.07, removed
    if ratio <= 0.3:  # at most one factor loses a share; a kv group and a query per group stay
        assert small.q.weight.shape[0] >= 16


def test_the_split_prefers_whole_outer_units_among_equally_near():
    torch.manual_seed(0)
    m = GQABlock().eval()
    dg = fxprune.analyze(m, (torch.randn(2, 5, E),))
    (groups, products), = components(dg, dg.groups)
    assert [g.size for g in groups][:2] == [2, 2]  # kv groups, then queries per group, then head dims
    counts = split_counts(groups, products, 0.5, lambda g: list(range(1, g.size + 1)))
    # half of everything: dropping one kv group is exactly as near as halving a head dim, and is chosen
    assert [counts[g] for g in groups] == [1, 2, 8, 8]


def _data(n=4):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 5, E, generator=g), torch.randint(0, 5, (8, 5), generator=g)) for _ in range(n)]


def _loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


def _shares(budget, criteria, measure):
    """One analysis, every criterion: the share ``measure`` keeps (the certificate is tested elsewhere)."""
    torch.manual_seed(0)
    m = GQABlock(mlp=512).eval()  # an MLP channel is 0.2% of the parameters: the share can be matched
    x = (torch.randn(2, 5, E),)
    dg = fxprune.analyze(m, x)
    cfg = fxprune.PruneConfig(ratio=0.4, scope="global", budget=budget, ignore=("head",))
    shares = {}
    for crit in criteria:
        step = fxprune.prune_step(dg, cfg, importance=crit, data=_data(), loss_fn=_loss, check=False)
        shares[crit] = measure(step.model, x) / measure(m, x)
    return shares


def test_a_params_budget_reaches_the_same_measured_share_for_every_criterion():
    """Calibrated criteria score only the groups with a consumer site; the budget is still the same
    share of the candidate tensors (Note [Honoured budgets])."""
    shares = _shares("params", ("l2", "taylor", "wanda", "fluctuation", "obs", "random"),
                     lambda t, x: fxprune.count_params(t))
    assert max(shares.values()) - min(shares.values()) <= 0.005, shares
    assert all(0.5 < s < 0.8 for s in shares.values()), shares


def test_a_macs_budget_is_a_share_of_the_measured_macs():
    shares = _shares("macs", ("l2", "obs"), fxprune.count_macs)
    assert all(abs(s - 0.6) <= 0.01 for s in shares.values()), shares


def _deep(width=24, depth=3):
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(8, width), nn.Tanh(), nn.Linear(width, 8), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(8, 3)).double().eval()


def test_sequential_repair_fits_each_layer_on_the_pruned_models_inputs():
    """The first consumer sees the dense inputs (sequential = one-shot there); later ones see the pruned
    model's, and their refit reproduces the dense output better on them than the one-shot weights do."""
    from fxprune.calib import calibrate, repair

    torch.manual_seed(0)
    m = _deep()
    xs = [torch.randn(256, 8, dtype=torch.float64) for _ in range(2)]
    x = (xs[0][:1],)
    seq = fxprune.prune(m, x, ratio=0.6, importance="l2", repair="lstsq", sequential=True, data=xs)
    rep = fxprune.repair_report(seq)
    assert rep.method == "lstsq (sequential)" and len(rep.layers) == 6  # every consumer but the first Linear
    assert all(r.after < r.before for r in rep.layers)
    dg = fxprune.analyze(m, x)
    keep = fxprune.plan(dg, fxprune.score_groups(dg, "l2"), fxprune.PruneConfig(ratio=0.6))
    one = fxprune.apply(dg, keep)
    repair(dg, keep, one, calibrate(dg, xs, gram=True), "lstsq")
    assert torch.allclose(seq.get_parameter("2.weight"), one.get_parameter("2.weight"), atol=1e-9)  # first layer
    held = torch.randn(512, 8, dtype=torch.float64)
    with torch.no_grad():
        err = {k: (p(held) - m(held)).pow(2).mean().item() for k, p in (("seq", seq), ("one", one))}
    assert err["seq"] < err["one"], err


def test_sequential_repair_in_place_writes_the_same_weights():
    torch.manual_seed(0)
    m, xs = _deep(), [torch.randn(128, 8, dtype=torch.float64)]
    x = (xs[0][:1],)
    copy_ = fxprune.prune(m, x, ratio=0.5, repair="lstsq", sequential=True, data=xs)
    own = fxprune.prune(_clone(m), x, ratio=0.5, repair="lstsq", sequential=True, data=xs, inplace=True)
    with torch.no_grad():
        assert torch.allclose(own(xs[0]), copy_(xs[0]), atol=1e-10)
    assert fxprune.repair_report(own).method == "lstsq (sequential)"
    with pytest.raises(ValueError, match="sequential=True"):
        fxprune.PruneConfig(sequential=True)


def _clone(m):
    import copy

    return copy.deepcopy(m)


def test_split_by_objective_matches_the_share_and_beats_the_mlp_only_split():
    """split='objective' removes the ratio's share of the candidate parameters (within 0.5%) and its
    calibration objective is no worse than removing MLP channels alone at the same share."""
    from fxprune.calib import calibrate
    from fxprune.policy.objective import objective
    from fxprune.policy.budget import _meter

    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = GQABlock(mlp=64).eval()
    x = (torch.randn(2, 5, E),)
    data = [b[0] for b in _data()]
    dg = fxprune.analyze(m, x)
    cfg = fxprune.PruneConfig(ratio=0.4, importance="wanda", repair="lstsq", split="objective", ignore=("head",))
    step = fxprune.prune_step(dg, cfg, data=data)
    ratios = fxprune.policy.selection.group_ratios(dg, cfg, 1.0)
    assert abs(_meter(dg, ratios, "params")(step.keep) - 0.4) <= 0.005
    cal = calibrate(dg, data, gram=True)
    scores = fxprune.score_groups(dg, "wanda", stats=cal)
    mlp, = [g for g in ratios if ("down.weight", 1) in g.members]
    mlp_only = fxprune.plan(dg, {g: (s if g is mlp else None) for g, s in scores.items()},
                            fxprune.PruneConfig(ratio=0.4, scope="global", budget="params", ignore=("head",)))
    assert abs(_meter(dg, ratios, "params")(mlp_only) - 0.4) <= 0.005
    assert objective(dg, step.keep, cal, "lstsq") <= objective(dg, mlp_only, cal, "lstsq")
    assert step.certificate.passed
