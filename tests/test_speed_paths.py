"""The fast paths of issue 20 compute what the slow ones compute: meta probes, cached member sums."""
from __future__ import annotations

import torch
import torch.nn as nn

import fxprune
from fxprune.policy.counting import count_macs, count_params
from fxprune.policy.probe import TargetProbe


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 24, 3, padding=1, groups=8), nn.ReLU(), nn.Conv2d(24, 12, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5)).eval()


X = (torch.randn(2, 3, 12, 12),)


def test_meta_probe_counts_what_the_real_rewrite_counts():
    dg = fxprune.analyze(net(), X)
    scores = fxprune.score_groups(dg)
    for macs in (True, False):
        real = (lambda m: count_macs(m, X)) if macs else count_params
        probe = TargetProbe(dg, real, macs)
        assert probe.gm is not None  # this graph runs on meta
        for ratio in (0.0, 0.3, 0.7):
            keep = fxprune.plan(dg, scores, fxprune.PruneConfig(ratio=ratio))
            assert probe(keep) == real(fxprune.apply(dg, keep, check=False)), (macs, ratio)
        assert probe({}) == real(net())
        assert all(not t.is_meta for t in dg.gm.parameters())  # the analysed graph keeps its tensors


class DataDependent(nn.Module):
    """Python reading a tensor value: cannot run on meta, so the probe counts real rewrites."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.a(x).relu()
        return self.b(h) * (h.sum() * 0 + 1).item()


def test_probe_falls_back_to_real_counts_off_meta():
    x = (torch.randn(2, 4),)
    dg = fxprune.analyze(DataDependent(), x)
    probe = TargetProbe(dg, lambda m: count_macs(m, x), True)
    keep = {dg.groups[0]: [0, 2, 5]}
    assert probe(keep) == count_macs(fxprune.apply(dg, keep, check=False), x) == 2 * 4 * 3 + 2 * 3 * 3
    assert probe.gm is None


def test_target_search_result_matches_its_target():
    model = net()
    half = fxprune.prune(model, X, target_macs=0.5, scope="global", tolerance=0.1)
    assert abs(count_macs(half, X) / count_macs(model, X) - 0.5) <= 0.1 * 0.5


def test_scoring_all_groups_at_once_is_bit_for_bit_the_per_group_score():
    from fxprune.policy.importance import get_importance

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(6 * 6 * 6, 4)).eval()
    dg = fxprune.analyze(model, (torch.randn(1, 3, 10, 10),))
    for name in ("l2", "l1", "bn_scale", "lamp"):
        crit = get_importance(name)
        together = crit.score_all(dg)
        for g in dg.groups:
            alone = crit(dg, g)
            assert (alone is None and together[g] is None) or torch.equal(alone, together[g]), (name, g)
        if name == "l2":  # nothing is kept between calls: new weights, new scores
            with torch.no_grad():
                model[0].weight.mul_(2.0)
            again = crit.score_all(dg)
            assert not torch.equal(again[dg.groups[0]], together[dg.groups[0]])
            assert torch.equal(again[dg.groups[0]], crit(dg, dg.groups[0]))
