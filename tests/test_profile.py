"""``profile=True`` / ``--profile``: wall time by phase, each second counted once."""
from __future__ import annotations

import time

import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.profile import PHASES, Profile, phase, profiling
from fxprune.tools.cli import main


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(12, 5)).eval()


X = (torch.randn(2, 3, 10, 10),)


def test_prune_profile_has_the_phases_and_they_sum_below_the_total():
    out = fxprune.prune(small_cnn(), X, ratio=0.5, profile=True)
    prof = out.fxprune_profile
    assert out.meta["fxprune.profile"] is prof
    for name in ("capture", "checked trace", "analysis", "scoring", "selection", "rewrite", "certificate"):
        assert name in prof.seconds, name
    assert all(s >= 0 for s in prof.seconds.values())
    assert sum(prof.seconds.values()) <= prof.total + 1e-9
    assert "certificate" in str(prof) and "other" in str(prof)


def test_target_search_counts_and_no_certificate_without_check():
    prof = fxprune.prune(small_cnn(), X, target_macs=0.6, tolerance=0.1, check=False,
                         profile=True).fxprune_profile
    assert "counting" in prof.seconds and "certificate" not in prof.seconds
    assert sum(prof.seconds.values()) <= prof.total + 1e-9


def test_inplace_profile_names_the_trials():
    model = small_cnn()
    out = fxprune.prune(model, X, ratio=0.5, inplace=True, profile=True)
    assert out is model and "in-place trials" in model.fxprune_profile.seconds


def test_off_by_default_and_outside_a_profile_phase_records_nothing():
    assert not hasattr(fxprune.prune(small_cnn(), X, ratio=0.5, check=False), "fxprune_profile")
    with phase("capture"):  # no active profile: a no-op
        pass
    with profiling(False) as prof:
        assert prof is None


def test_nested_phases_are_exclusive():
    with profiling() as prof:
        with phase("certificate"):
            time.sleep(0.02)
            with phase("rewrite"):
                time.sleep(0.03)
    assert isinstance(prof, Profile)
    assert prof.seconds["rewrite"] >= 0.03 and 0.02 <= prof.seconds["certificate"] < 0.03 + 0.02
    assert sum(prof.seconds.values()) <= prof.total
    assert set(PHASES) >= {"capture", "checked trace", "counting", "in-place trials"}


def test_an_outer_profile_owns_the_timing():
    with profiling() as outer:
        with profiling() as inner:
            assert inner is None
        with phase("analysis"):
            pass
    assert "analysis" in outer.seconds


def test_cli_profile(capsys):
    code = main(["--ratio", "0.3", "--profile", "--no-tables", "--latency-runs", "0", "-q"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "profile:" in out and "checked trace" in out and "certificate" in out
