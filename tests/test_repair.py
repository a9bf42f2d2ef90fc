"""Layer repair (bias, lstsq): exact in the known-answer cases, reported, oracles intact, every graph form."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune.calib import calibrate, repair, repair_report

D = torch.float64


def gen_data(n=4, rows=32, width=4, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, width, generator=gen, dtype=D) for _ in range(n)]


def constant_inputs(removed, bias=True, last=None):
    """Linear(4, 6) -> ReLU -> consumer; the hidden coordinates ``removed`` are the constant 0.7."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), last or nn.Linear(6, 3, bias=bias)).to(D).eval()
    with torch.no_grad():
        m[0].weight[removed] = 0
        m[0].bias[removed] = 0.7
    return m


def keep_all_but(dg, removed):
    g, = dg.groups
    return {g: [i for i in range(g.size) if i not in removed]}


def pruned_and_repaired(m, xs, removed, method, damping=0.0):
    dg = fxprune.analyze(m, (xs[0][:1],))
    keep = keep_all_but(dg, removed)
    cal = calibrate(dg, xs, gram=True)
    plain, fixed = fxprune.apply(dg, keep), fxprune.apply(dg, keep)
    report = repair(dg, keep, fixed, cal, method, damping=damping)
    return plain, fixed, report


@pytest.mark.parametrize("bias", [True, False])
def test_bias_repair_is_exact_when_removed_inputs_are_constant(bias):
    removed = [1, 4]
    m, xs = constant_inputs(removed, bias), gen_data()
    plain, fixed, report = pruned_and_repaired(m, xs, removed, "bias")
    test = torch.randn(9, 4, dtype=D)
    assert torch.allclose(fixed(test), m(test), rtol=0, atol=1e-12)
    assert not torch.allclose(plain(test), m(test), atol=1e-3)
    row, = report.layers
    assert (row.layer, row.method, row.kept, row.removed) == ("2", "bias", 4, 2)
    assert row.after < 1e-20 < row.before and row.note == ("" if bias else "bias added")
    assert fixed.get_submodule("2").bias is not None


def test_lstsq_repair_is_exact_when_removed_inputs_are_linear_in_kept_ones():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 6, bias=False), nn.Linear(6, 3)).to(D)
    xs = gen_data()
    dg = fxprune.analyze(m, (xs[0][:1],))
    g, = [g for g in dg.groups if ("3.weight", 1) in g.members]  # 6 inputs of rank 4: 2 are linear in the rest
    keep = {g: [0, 2, 3, 5]}
    cal = calibrate(dg, xs, gram=True)
    fixed, damped = fxprune.apply(dg, keep), fxprune.apply(dg, keep)
    exact = repair(dg, keep, fixed, cal, "lstsq", damping=0.0)
    default = repair(dg, keep, damped, cal, "lstsq")
    test = torch.randn(9, 4, dtype=D)
    assert torch.allclose(fixed(test), m(test), rtol=0, atol=1e-10)
    assert exact.layers[0].after < 1e-12 < exact.layers[0].before  # float64 cancellation in tr(dW G dW^T)
    row = default.layers[0]
    assert 0 < row.after < row.before  # lambda > 0 trades exactness for stability (this G is nearly singular)


def test_reported_errors_are_the_measured_output_errors():
    torch.manual_seed(0)
    m, xs = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).to(D).eval(), gen_data()
    for method in ("bias", "lstsq"):
        plain, fixed, report = pruned_and_repaired(m, xs, [0, 3, 5], method, damping=0.01)
        y = torch.cat([m(x) for x in xs]) - m[2].bias
        energy = y.pow(2).sum(1).mean()
        for model, want in ((plain, report.layers[0].before), (fixed, report.layers[0].after)):
            got = (torch.cat([model(x) for x in xs]) - torch.cat([m(x) for x in xs])).pow(2).sum(1).mean()
            assert torch.allclose(got / energy, torch.tensor(want, dtype=D), rtol=1e-8), method
        assert report.layers[0].after < report.layers[0].before


class MatmulHead(nn.Module):
    """``x @ W`` and ``F.linear(x, W)`` consumers without a bias: the repair wires a new one into the graph."""

    def __init__(self, how):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.how = how
        self.w = nn.Parameter(torch.randn(6, 3) if how == "matmul" else torch.randn(3, 6))

    def forward(self, x):
        h = F.relu(self.a(x))
        return h @ self.w if self.how == "matmul" else F.linear(h, self.w)


@pytest.mark.parametrize("how", ["matmul", "linear"])
def test_new_bias_is_a_graph_edit_on_functional_consumers(how, tmp_path):
    torch.manual_seed(0)
    removed = [2, 3]
    m = MatmulHead(how).to(D).eval()
    with torch.no_grad():
        m.a.weight[removed] = 0
        m.a.bias[removed] = 0.5
    xs = gen_data()
    plain, fixed, report = pruned_and_repaired(m, xs, removed, "bias")
    test = torch.randn(5, 4, dtype=D)
    assert torch.allclose(fixed(test), m(test), rtol=0, atol=1e-12)
    assert report.layers[0].note == "bias added" and report.layers[0].layer == "w"
    assert "bias" in dict(fixed.named_parameters()) and "bias" not in dict(plain.named_parameters())
    torch.save(fixed, tmp_path / "m.pt")  # savable, and the loaded graph computes the same
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert torch.equal(loaded(test), fixed(test))


def test_conv_repairs_per_channel():
    """Bias compensation is exact without padding; lstsq is exact with zero padding too."""
    torch.manual_seed(0)
    removed = [0, 3]
    m = nn.Sequential(nn.Conv2d(2, 5, 1), nn.ReLU(), nn.Conv2d(5, 3, 3, bias=False)).to(D).eval()
    with torch.no_grad():
        m[0].weight[removed] = 0
        m[0].bias[removed] = 0.3
    xs = [torch.randn(2, 2, 7, 7, dtype=D) for _ in range(3)]
    plain, fixed, report = pruned_and_repaired(m, xs, removed, "bias")
    test = torch.randn(3, 2, 9, 9, dtype=D)
    assert torch.allclose(fixed(test), m(test), rtol=0, atol=1e-12)
    assert report.layers[0].note == "bias added"
    lin = nn.Sequential(nn.Conv2d(2, 5, 1, bias=False), nn.Conv2d(5, 3, 3, padding=1)).to(D).eval()
    plain, fixed, report = pruned_and_repaired(lin, xs, [1, 2, 4], "lstsq")  # 5 channels of rank 2
    assert torch.allclose(fixed(test), lin(test), rtol=0, atol=1e-10)
    assert not torch.allclose(plain(test), lin(test), atol=1e-3)


def test_oracles_hold_and_untouched_tensors_are_unchanged():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4, bias=False)).to(D).eval()
    xs = [torch.randn(4, 3, 8, 8, dtype=D) for _ in range(3)]
    x = (xs[0][:1],)
    for method in ("bias", "lstsq"):
        plain = fxprune.prune(m, x, ratio=0.5, importance="obs", data=xs)
        fixed = fxprune.prune(m, x, ratio=0.5, importance="obs", data=xs, repair=method)
        report = repair_report(fixed)
        assert {r.layer for r in report.repaired} == {"3", "7"}
        changed = {n for n, p in fixed.named_parameters()
                   if n not in dict(plain.named_parameters()) or not torch.equal(p, plain.get_parameter(n))}
        assert changed == ({"3.weight", "7.weight"} if method == "lstsq" else {"3.bias", "7.bias"})
        for n, b in plain.named_buffers():
            assert torch.equal(b, fixed.get_buffer(n))
        assert fxprune.verify(fixed, x).passed  # the repaired model's structure is still exact
        err = lambda mm: sum((mm(z) - m(z)).pow(2).sum() for z in xs)  # noqa: E731
        assert err(fixed) < err(plain), method


def test_shared_weights_are_not_repaired():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x):
            h = F.relu(self.a(x))
            return self.b(h) + F.linear(torch.tanh(h), self.b.weight)  # one weight, two consumers

    torch.manual_seed(0)
    m, xs = Tied().to(D).eval(), gen_data()
    fixed = fxprune.prune(m, (xs[0][:1],), ratio=0.5, importance="wanda", data=xs, repair="lstsq")
    rows = repair_report(fixed).layers
    assert len(rows) == 2 and all(r.note.startswith("skipped") and "read by 2 ops" in r.note for r in rows)
    plain = fxprune.prune(m, (xs[0][:1],), ratio=0.5, importance="wanda", data=xs)
    assert all(torch.equal(p, plain.get_parameter(n)) for n, p in fixed.named_parameters())


def test_inplace_lands_in_the_users_modules():
    removed = [1, 4]
    m, xs = constant_inputs(removed, bias=False), gen_data()
    user = copy.deepcopy(m)
    out = fxprune.prune(user, (xs[0][:1],), ratio=1 / 3, importance="fluctuation", data=xs, repair="bias",
                        inplace=True)
    assert out is user and isinstance(user, nn.Sequential)
    assert user[2].bias is not None and user[2].in_features == 4
    test = torch.randn(7, 4, dtype=D)
    assert torch.allclose(user(test), m(test), atol=1e-12)  # the constant inputs have no variance; bias restores them
    assert repair_report(user).layers[0].note == "bias added"


def test_inplace_without_a_bias_slot_skips_and_says_so():
    torch.manual_seed(0)
    m = MatmulHead("linear").to(D).eval()
    xs = gen_data()
    user = copy.deepcopy(m)
    fxprune.prune(user, (xs[0][:1],), ratio=1 / 3, importance="l2", data=xs, repair="bias", inplace=True)
    row, = repair_report(user).layers
    assert row.note.startswith("skipped: in place") and "bias" not in dict(user.named_parameters())


def test_conv_mean_compensation_next_to_zero_padding_keeps_every_output_mean():
    """With padding a constant cannot be exact at the borders; the bias from the per-(channel, offset) means
    is the best constant: every output channel keeps its mean over the calibration data."""
    torch.manual_seed(0)
    removed = [0, 3]
    m = nn.Sequential(nn.Conv2d(2, 5, 1), nn.ReLU(), nn.Conv2d(5, 3, 3, padding=1, bias=False)).to(D).eval()
    with torch.no_grad():
        m[0].weight[removed] = 0
        m[0].bias[removed] = 0.3
    xs = [torch.randn(2, 2, 5, 5, dtype=D) for _ in range(3)]
    plain, fixed, _ = pruned_and_repaired(m, xs, removed, "bias")
    for model in (plain, fixed):
        gap = torch.cat([m(x) - model(x) for x in xs]).mean((0, 2, 3))
        assert (gap.abs().max() < 1e-12) == (model is fixed)
