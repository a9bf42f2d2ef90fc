"""Evidence that the ranking works: on scikit-learn's digits, magnitude and Taylor beat random.

A small version of benchmarks/digits_ranking.py: one trained CNN, pruned to 50% of
its MACs by each criterion (random over three seeds). Accuracy is measured after
re-estimating BatchNorm statistics and before gradient fine-tuning, where the
choice of channels, not the fine-tuning, decides the outcome.
"""
import importlib.util
import os

import pytest
import torch

pytest.importorskip("sklearn")

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "digits_ranking.py")


def _bench():
    spec = importlib.util.spec_from_file_location("digits_ranking", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def results():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _bench().run(**_bench().QUICK)
    finally:
        torch.set_num_threads(threads)


def test_every_criterion_reaches_half_the_macs(results):
    _, dense_macs, res = results
    for name, r in res.items():
        assert abs(r["macs"] / dense_macs - 0.5) <= 0.01, (name, r)


def test_dense_model_learned_digits(results):
    dense, _, _ = results
    assert dense > 0.92


@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor"])
def test_ranking_beats_random(results, criterion):
    _, _, res = results
    assert res[criterion]["recalibrated"] > res["random"]["recalibrated"] + 0.005, res


def test_fine_tuning_recovers(results):
    dense, _, res = results
    for name, r in res.items():
        assert r["finetuned"] > 0.9 and r["finetuned"] >= r["pruned"], (name, r)
