"""In-place pruning (Note [In place]): one transaction, attributes synced from one table.

After any failure the model must equal, byte for byte, a deep copy taken before:
every parameter and buffer (BatchNorm statistics and ``num_batches_tracked``
included), every module attribute, ``requires_grad`` and ``training``. After a
success it computes what the pruned graph computes, at other batch sizes too.
"""
import copy
import os
import sys

import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.checks import attr_sync
from fxprune.checks import inplace as inplace_mod
from fxprune.checks.inplace import InPlaceMismatchError

sys.path.insert(0, os.path.dirname(__file__))
from models_tiny import group_with  # noqa: E402


def assert_identical(model: nn.Module, ref: nn.Module) -> None:
    """Every tensor byte for byte, every attribute, requires_grad and training: as in ``ref``."""
    mods, ref_mods = dict(model.named_modules()), dict(ref.named_modules())
    assert mods.keys() == ref_mods.keys()
    for name, m in mods.items():
        r = ref_mods[name]
        assert m.training == r.training, name
        assert m._parameters.keys() == r._parameters.keys() and m._buffers.keys() == r._buffers.keys(), name
        for key in (*m._parameters, *m._buffers):
            a, b = getattr(m, key), getattr(r, key)
            if a is None:
                assert b is None
                continue
            assert a.dtype == b.dtype and a.shape == b.shape, f"{name}.{key}"
            assert torch.equal(a.detach().reshape(-1).view(torch.uint8), b.detach().reshape(-1).view(torch.uint8)), \
                f"{name}.{key}"
            assert a.requires_grad == b.requires_grad, f"{name}.{key}"
        plain = lambda mod: {k: v for k, v in vars(mod).items() if not k.startswith("_")}  # noqa: E731
        assert plain(m) == plain(r), name


class HardCoded(nn.Module):
    """conv -> BN -> dropout -> a reshape that hard-codes the channel count -> linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bn, self.drop = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Dropout(0.5)
        self.fc = nn.Linear(8, 4)
        self.fc.bias.requires_grad_(False)
        self.channels = 8

    def forward(self, x):
        y = self.drop(self.bn(self.conv(x)).relu()).mean((2, 3))
        return self.fc(y.reshape(-1, self.channels))  # hard-coded: only the graph rewrite could change it


def _train_model():
    m = HardCoded().train()
    with torch.no_grad():  # non-trivial statistics
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
        m.bn.num_batches_tracked.fill_(7)
    return m


X = (torch.randn(2, 3, 6, 6),)


def test_failed_check_restores_everything_byte_for_byte():
    m = _train_model()
    dg = fxprune.analyze(m, X)
    ref = copy.deepcopy(m)
    g = group_with(dg, "conv.weight", 0, 8)
    with pytest.raises(InPlaceMismatchError, match="channels=8"):  # the hint names the hard-coded size
        fxprune.apply(dg, {g: [0, 2, 5]}, inplace=True)
    assert_identical(m, ref)


@pytest.mark.parametrize("stage", ["swap", "sync", "check"])
def test_failure_at_any_stage_restores_everything(stage, monkeypatch):
    m = _train_model()
    dg = fxprune.analyze(m, X)
    m.channels = 3  # the forward follows the pruned size: in place would succeed
    ref = copy.deepcopy(m)
    g = group_with(dg, "conv.weight", 0, 8)

    def boom(*args, **kwargs):
        raise RuntimeError(f"forced failure at {stage}")

    if stage == "swap":  # after the first tensor was swapped
        real = inplace_mod._Transaction.swap

        def swap_once(self, t, new):
            if self.tensors:
                boom()
            real(self, t, new)
        monkeypatch.setattr(inplace_mod._Transaction, "swap", swap_once)
    else:
        monkeypatch.setattr(inplace_mod, {"sync": "apply_sync", "check": "relative_error"}[stage], boom)
    with pytest.raises(InPlaceMismatchError, match=f"forced failure at {stage}"):
        fxprune.apply(dg, {g: [0, 2, 5]}, inplace=True)
    assert_identical(m, ref)


def test_success_in_train_mode_leaves_statistics_and_flags():
    """Dropout cannot fail the check; BatchNorm statistics and training flags are not touched by it."""
    m = _train_model()
    dg = fxprune.analyze(m, X)
    m.channels = 3  # the forward follows the pruned size
    ref = copy.deepcopy(m)
    keep = [0, 2, 5]
    graph = fxprune.apply(dg, {group_with(dg, "conv.weight", 0, 8): keep})
    assert fxprune.apply(dg, {group_with(dg, "conv.weight", 0, 8): keep}, inplace=True) is m
    assert all(mod.training for mod in m.modules())
    assert torch.equal(m.bn.running_mean, ref.bn.running_mean[keep]) and int(m.bn.num_batches_tracked) == 7
    assert m.conv.out_channels == 3 and m.bn.num_features == 3 and m.fc.in_features == 3
    assert not m.fc.bias.requires_grad
    m.eval(), graph.eval()
    with torch.no_grad():
        x = torch.randn(5, 3, 9, 9)
        torch.testing.assert_close(m(x), graph(x))


class Lifted(nn.Module):
    """A constant the export capture lifts (``lifted_tensor_0``) is no attribute of the model."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.b(self.a(x) * torch.tensor([2.0]))


def test_lifted_constant_is_not_a_model_attribute():
    m = Lifted().eval()
    dg = fxprune.analyze(m, (), {"x": torch.randn(3, 4)})
    assert any("lifted" in t for t in inplace_mod._param_targets(dg)), dg.gm.code
    fxprune.apply(dg, {dg.groups[0]: [1, 4]}, inplace=True)
    assert m.a.out_features == 2 and m.b.in_features == 2


# -- the attribute table ---------------------------------------------------------------------------------

class DepthwiseNorms(nn.Module):
    """ConvNeXt-style depthwise conv, GroupNorm per channel and in groups of 4."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.gn1 = nn.GroupNorm(8, 8)
        self.expand = nn.Conv2d(8, 12, 1)
        self.gn3 = nn.GroupNorm(3, 12)  # 3 groups of 4: prunes as 3 x 4
        self.proj = nn.Conv2d(12, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        y = self.gn1(self.dw(self.stem(x)))
        y = y + self.proj(self.gn3(self.expand(y)).relu())
        return self.head(y.mean((2, 3)))


def _inplace_matches_graph(m, x, front_end: str, keep_fn):
    args, kwargs = ((x,), None) if front_end == "trace" else ((), {"x": x})
    dg = fxprune.analyze(m, args, kwargs)
    assert ("symbolic_trace" in dg.front_end) == (front_end == "trace")
    keep = {g: keep_fn(g) for g in dg.groups}
    graph = fxprune.apply(dg, keep)
    assert fxprune.apply(dg, keep, inplace=True) is m
    x3 = torch.randn(3, *x.shape[1:])
    with torch.no_grad():
        torch.testing.assert_close(m(x3), graph(x3) if front_end == "trace" else graph(x=x3))
    return dg


@pytest.mark.parametrize("front_end", ["trace", "export"])
def test_table_syncs_depthwise_groups_and_group_norms(front_end):
    m = DepthwiseNorms().eval()
    _inplace_matches_graph(m, torch.randn(2, 3, 5, 5), front_end, lambda g: list(range(g.size))[::2])
    assert m.dw.groups == m.dw.in_channels == m.dw.out_channels == m.dw.weight.shape[0] == 4
    assert m.gn1.num_groups == m.gn1.num_channels == 4
    assert (m.gn3.num_groups, m.gn3.num_channels) == (2, 4)  # 2 of 3 groups, 2 of 4 channels in each


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.attn, self.head = nn.Linear(3, 8), nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 5)

    def forward(self, x):
        t = self.inp(x)
        return self.head(self.attn(t, t, t, need_weights=False)[0].mean(1))


def test_multihead_attention_prunes_whole_heads_in_place():
    m = Attention().eval()
    heads_one_of_two = lambda g: [g.size - 1] if g.size == 2 else list(range(g.size))  # noqa: E731
    _inplace_matches_graph(m, torch.randn(2, 6, 3), "trace", heads_one_of_two)
    assert (m.attn.embed_dim, m.attn.num_heads, m.attn.head_dim, m.attn.kdim) == (4, 1, 4, 4)


def test_table_keys_by_qualified_name_along_the_mro(monkeypatch):
    class Base(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(6, 3))
            self.rows = 6

    class Child(Base):
        pass

    key = f"{Base.__module__}.{Base.__qualname__}"
    monkeypatch.setitem(attr_sync.SYNC, key, {"rows": attr_sync.size("w", 0)})
    child = Child()
    plan = attr_sync.plan_sync(child, attr_sync.GraphArgs(None))
    assert plan.covered("", "rows")
    child.w.data = torch.zeros(4, 3)
    assert attr_sync.apply_sync(child, plan, attr_sync.GraphArgs(None), setattr) == [] and child.rows == 4


def test_unsyncable_attribute_is_named():
    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.k_proj = nn.Linear(4, 8), nn.Linear(4, 8)
            self.head_dim, self.num_heads, self.num_key_value_groups = 4, 2, 1

    key = "transformers.models.llama.modeling_llama.LlamaAttention"
    m = Heads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(attr_sync.SYNC, f"{Heads.__module__}.{Heads.__qualname__}", attr_sync.SYNC[key])
        plan = attr_sync.plan_sync(m, attr_sync.GraphArgs(None))
        assert plan.covered("", "num_heads") and plan.covered("", "num_key_value_groups")
        m.q_proj.weight.data = torch.zeros(6, 4)  # a head dim was pruned: 6 rows are not whole heads
        failed = dict(attr_sync.apply_sync(m, plan, attr_sync.GraphArgs(None), setattr))
    assert "Heads.num_heads" in failed and "not a multiple of 4" in failed["Heads.num_heads"]
