"""Counting and reporting: exact MACs/params per layer and group, before/after tables, latency."""
import torch
import torch.nn as nn

import fxprune
from fxprune.tools.demo import DemoNet, demo_inputs


def net():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


X = (torch.randn(2, 3, 6, 6),)


def test_macs_and_params_by_formula():
    m = net()
    conv = 2 * 8 * 4 * 4 * 3 * 3 * 3  # batch x out x H x W x in x k x k
    linear = 2 * 128 * 5
    c = fxprune.count(m, X)
    assert c.macs == conv + linear == fxprune.count_macs(m, X)
    assert c.params == 8 * 27 + 8 + 16 + 128 * 5 + 5 == fxprune.count_params(m)
    assert c.layers == {"0": (224, conv), "1": (16, 0), "4": (645, linear)}


def test_counts_after_pruning_and_compare_table():
    m = net()
    pruned = fxprune.prune(m, X, ratio=0.5)
    c = fxprune.count(pruned, X)
    assert c.layers["0"] == (4 * 27 + 4, 2 * 4 * 16 * 27)
    assert c.layers["4"] == (64 * 5 + 5, 2 * 64 * 5)
    table = fxprune.compare(m, pruned, X)
    total = table.splitlines()[-1].split()
    assert total[0] == "total" and int(total[1]) == fxprune.count_params(m) and int(total[2]) == c.params
    assert int(total[4]) == fxprune.count_macs(m, X) and int(total[5]) == c.macs


def test_nested_modules_count_their_own_share():
    m, x = DemoNet().eval(), demo_inputs()
    c = fxprune.count(m, x)
    assert sum(macs for _, macs in c.layers.values()) == c.macs
    assert sum(p for p, _ in c.layers.values()) == c.params
    assert c.layers["blocks.0.gamma".rpartition(".")[0]][0] == 16  # a block's own parameter, no children


def test_group_table_counts_member_parameters():
    m = net()
    dg = fxprune.analyze(m, X)
    (g,) = dg.groups
    keep = {g: list(range(3))}
    rows = fxprune.group_table(dg, keep, X).splitlines()[2].split()
    before = 8 * 27 + 8 + 8 + 8 + 128 * 5  # conv weight+bias, BN weight+bias, linear weight
    assert rows[:5] == ["G0", "8", "3", str(before), str(before * 3 // 8)]
    assert int(rows[5]) == fxprune.count_macs(m, X)  # owners: conv, BN, linear


def test_latency_is_positive_and_restores_threads():
    threads = torch.get_num_threads()
    lat = fxprune.latency(net(), X, warmup=1, repeats=3, threads=1)
    assert 0 < lat["min_ms"] <= lat["median_ms"] and lat["mean_ms"] > 0
    assert torch.get_num_threads() == threads
