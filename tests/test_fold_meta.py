"""Folds are frozen metadata (passes/folds.py): no graph attributes, no closures over the axis table.

The capture writes a ``FoldRegistry`` into ``gm.meta``; the analysis writes a
``FoldSite`` into each call site's ``ChannelMeta``; the rewrite expands the
sites from those records alone.
"""
import dataclasses
import pickle

import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.passes import FOLDS_KEY, FoldRegistry, FoldSite, Layout, fold_registry, get_channel_meta


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(8, 12), nn.Linear(12, 8)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


class Deep(nn.Module):
    def __init__(self, n=3):
        super().__init__()
        self.inp, self.out = nn.Linear(4, 8), nn.Linear(8, 3)
        self.layers = nn.ModuleList(Block() for _ in range(n))

    def forward(self, x):
        x = self.inp(x)
        for layer in self.layers:
            x = layer(x)
        return self.out(x)


X = (torch.randn(2, 4),)


@pytest.fixture(scope="module")
def folded():
    torch.manual_seed(0)
    model = Deep().eval()
    dg = fxprune.analyze(model, X, fold=True)
    assert "3 repeated blocks folded: 1 distinct" in dg.front_end, dg.front_end
    return model, dg


def _walk(obj, seen=None):
    """Every value reachable through frozen records and tuples (not into graph modules or tensors)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _walk(getattr(obj, f.name), seen)
    elif isinstance(obj, (tuple, list, frozenset)):
        for x in obj:
            yield from _walk(x, seen)


def test_the_registry_is_frozen_metadata_on_the_graph(folded):
    _, dg = folded
    reg = fold_registry(dg.gm)
    assert isinstance(reg, FoldRegistry) and dg.gm.meta[FOLDS_KEY] is reg
    assert len(reg.blocks) == 1 and [p for _, p in reg.sites] == ["layers.0", "layers.1", "layers.2"]
    assert not any(k.startswith("_fxprune") for k in vars(dg.gm))  # nothing smuggled through attributes
    with pytest.raises(dataclasses.FrozenInstanceError):
        reg.sites = ()


def test_call_sites_hold_frozen_records_without_closures(folded):
    _, dg = folded
    sites = [get_channel_meta(n).fold for n in dg.gm.graph.nodes if get_channel_meta(n).fold is not None]
    assert [s.path for s in sites] == ["layers.0", "layers.1", "layers.2"]
    for site in sites:
        assert isinstance(site, FoldSite)
        assert all(isinstance(b, int) and isinstance(lay, Layout) for b, lay in site.atoms)
        values = list(_walk(site))
        assert not any(callable(v) and not isinstance(v, (type, torch.nn.Module)) for v in values)
        assert pickle.loads(pickle.dumps(site.atoms)) == site.atoms
        with pytest.raises(dataclasses.FrozenInstanceError):
            site.path = "elsewhere"


def test_the_rewrite_needs_no_live_axis_table(folded):
    model, dg = folded
    keep = {g: list(range(0, g.size, 2)) for g in dg.groups}
    before = fxprune.apply(dg, keep)
    axes = dg.result.axes
    saved = dict(vars(axes))
    vars(axes).clear()  # the analysis state is gone: only metadata is left
    try:
        after = fxprune.apply(dg, keep)
    finally:
        vars(axes).update(saved)
    with torch.no_grad():
        assert torch.equal(before(*X), after(*X))
    assert FOLDS_KEY not in after.meta and isinstance(after.get_submodule("layers.1"), torch.fx.GraphModule)


def test_folded_oracles_exact(folded):
    model, _ = folded
    rep = fxprune.verify(model, X, fold=True, raise_on_mismatch=False)
    assert rep.passed and rep.groups >= 4, str(rep)
