"""NaN and inf never make a check vacuous (issue 21, item 7; Note [NaN and inf] in
fxprune/compare.py): positions of non-finite values are compared exactly, finite
values by relative error, in every check (oracles, certificate, verify, in-place)."""
import math

import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.checks.inplace import InPlaceMismatchError

NAN, INF = float("nan"), float("inf")


def test_same_nonfinite_positions_compare_the_finite_values():
    a = torch.tensor([[1.0, -INF, 3.0], [NAN, 2.0, INF]])
    assert fxprune.relative_error(a, a.clone()) == 0.0
    assert fxprune.relative_error(a, 2 * a) == pytest.approx(1.0)  # a 2x error with NaN present
    assert fxprune.relative_error(a, a + 1e-3) == pytest.approx(1e-3 / 3, rel=1e-3)


@pytest.mark.parametrize("other", [
    [[1.0, -INF, 3.0], [0.0, 2.0, INF]],  # NaN became a number
    [[1.0, INF, 3.0], [NAN, 2.0, INF]],  # -inf became +inf
    [[1.0, -INF, NAN], [NAN, 2.0, INF]],  # a number became NaN
    [[1.0, -INF, 3.0], [NAN, 2.0, NAN]],  # inf became NaN
])
def test_nonfinite_positions_must_match(other):
    a = torch.tensor([[1.0, -INF, 3.0], [NAN, 2.0, INF]])
    assert fxprune.relative_error(a, torch.tensor(other)) == math.inf


def test_all_nonfinite_and_python_numbers():
    a = torch.full((3,), -INF)
    assert fxprune.relative_error(a, a.clone()) == 0.0
    assert fxprune.relative_error((NAN, 1), (NAN, 1)) == 0.0
    assert fxprune.relative_error((NAN,), (1.0,)) == math.inf
    assert not math.isnan(fxprune.relative_error(torch.tensor([NAN]), torch.tensor([NAN])))


class MaskedLogits(nn.Module):
    """Causal attention that returns its -inf masked logits with the output."""

    def __init__(self, dim=8, scale=1.0):
        super().__init__()
        self.scale = scale
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        n = x.shape[1]
        logits = self.q(x) @ self.k(x).transpose(1, 2)
        mask = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        logits = logits.masked_fill(mask, float("-inf"))
        return self.o(logits.softmax(-1) @ self.v(x)), logits * self.scale


def test_masked_logits_get_a_real_check():
    torch.manual_seed(0)
    m = MaskedLogits().eval()
    x = torch.randn(2, 5, 8)
    rep = fxprune.verify(m, (x,))
    assert rep.passed and rep.groups >= 1
    small = fxprune.prune(m, (x,), ratio=0.5)
    cert = small.fxprune_certificate
    assert cert.passed and not math.isnan(cert.error)
    doubled = MaskedLogits(scale=2.0).eval()
    doubled.load_state_dict(m.state_dict())
    with torch.no_grad():
        assert fxprune.relative_error(m(x)[1], doubled(x)[1]) == pytest.approx(1.0)  # -inf kept, 2x caught


class StaleScale(nn.Module):
    """The forward reads ``fc.out_features`` as a number: the graph freezes it at 8, the resized
    eager model reads 4, so in place it computes 2x what the pruned graph computes; its output
    also holds a NaN, which used to hide the difference."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.fc(x)
        y = self.out(h) * (8 / self.fc.out_features)
        return torch.cat([y, torch.full_like(y[:, :1], float("nan"))], 1)


def test_inplace_error_with_nan_in_the_output_is_caught():
    m = StaleScale().eval()
    x = torch.randn(3, 4)
    dg = fxprune.analyze(m, (x,))
    (g,) = dg.groups
    with pytest.raises(InPlaceMismatchError):
        fxprune.apply(dg, {g: [0, 2, 4, 6]}, inplace=True)
    assert m.fc.out_features == 8  # restored
