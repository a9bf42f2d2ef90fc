"""Named regression tests: each a minimal, self-contained reproduction of a rule bug that
a hand-written model, a third-party model or the model fuzzer (tests/test_fuzz.py) found.

Every model is checked by both oracles in float64 (``verified``) plus a structural check
of what the analysis may and may not prune.
"""
import os
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune.errors import OracleMismatchError
from fxprune.passes import registry
from fxprune.passes.rules.common import passthrough

sys.path.insert(0, os.path.dirname(__file__))
from models_tiny import group_with, runs_smaller, sizes, verified  # noqa: E402

X = (torch.randn(2, 3, 5, 5),)
X2 = (torch.randn(3, 3, 7, 6),)


def members(dg) -> set:
    return {m for g in dg.groups for m in g.members}


# -- index tensors (issue 10, item 1) ---------------------------------------------------------
class IndexSelectBuffer(nn.Module):
    """A buffer of channel indices: its values address the conv's channels."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 1)
        self.register_buffer("idx", torch.tensor([3, 1, 0, 2, 7, 5]))
        self.d = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.d(torch.index_select(self.c(x), 1, self.idx))


def test_index_select_buffer_is_coupled_to_what_it_selects_never_a_group_alone():
    m = IndexSelectBuffer().eval()
    dg = fxprune.analyze(m, X)
    # the addressed channels are pinned; the index's entries are the output channels
    assert ("c.weight", 0) not in members(dg)
    g = group_with(dg, "idx", 0)
    assert set(g.members) == {("idx", 0), ("d.weight", 1)}
    verified(m, X, groups=1)
    p = fxprune.apply(dg, {g: [4, 0]})
    assert p.idx.tolist() == [7, 3] and p.d.in_channels == 2
    torch.testing.assert_close(p(*X2), F.conv2d(m.c(*X2)[:, [7, 3]], m.d.weight[:, [4, 0]], m.d.bias))


class GatherPrefix(nn.Module):
    """gather along dim 2 with an index that covers only the first 3 of 6 channels (dim 1)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(3, 6, 1)
        self.register_buffer("idx", torch.tensor([[[4, 0, 2, 1]] * 3]))  # (1, 3, 4)

    def forward(self, x):
        return torch.gather(self.c(x), 2, self.idx.expand(x.shape[0], -1, -1))


def test_gather_index_reading_a_prefix_pins_the_dimension():
    m = GatherPrefix().eval()
    x = (torch.randn(2, 3, 5),)
    dg = fxprune.analyze(m, x)
    assert ("c.weight", 0) not in members(dg), dg.report()
    verified(m, x)


class TakeAlongDim(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(3, 6, 1)
        self.register_buffer("idx", torch.tensor([[[4, 0, 2]]]))  # broadcast over batch and channels
        self.d = nn.Conv1d(6, 2, 1)

    def forward(self, x):
        return self.d(torch.take_along_dim(self.c(x), self.idx, dim=2))


def test_take_along_dim_keeps_the_broadcast_channels_prunable():
    m = TakeAlongDim().eval()
    x = (torch.randn(2, 3, 5),)
    dg = fxprune.analyze(m, x)
    g = group_with(dg, "c.weight", 0)
    assert ("d.weight", 1) in g.members
    assert ("idx", 2) not in members(dg)
    verified(m, x, groups=1)


class AdvancedIndex(nn.Module):
    """``y[:, idx]``: advanced indexing with one integer index tensor (a buffer)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 1)
        self.register_buffer("idx", torch.tensor([6, 1, 1, 3]))
        self.d = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.d(self.c(x)[:, self.idx])


def test_advanced_index_couples_the_index_entries_and_pins_what_they_address():
    m = AdvancedIndex().eval()
    dg = fxprune.analyze(m, X)
    assert ("c.weight", 0) not in members(dg)
    g = group_with(dg, "idx", 0)
    assert ("d.weight", 1) in g.members
    verified(m, X, groups=1)
    runs_smaller(m, X, X2)


class TokenPool(nn.Module):
    """CLIP's text pooling: ``x[torch.arange(B), ids.argmax(-1)]`` picks one token per sequence."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.proj = nn.Linear(6, 3)

    def forward(self, ids):
        x = self.emb(ids)
        return self.proj(x[torch.arange(x.shape[0]), ids.argmax(dim=-1)])


def test_two_index_tensors_gather_tokens_and_keep_the_channels_prunable():
    m = TokenPool().eval()
    ids = (torch.tensor([[1, 7, 3, 2], [9, 4, 4, 0]]),)
    dg = fxprune.analyze(m, ids)
    g = group_with(dg, "emb.weight", 1)
    assert ("proj.weight", 1) in g.members
    verified(m, ids, groups=1)


class SplitIndices(nn.Module):
    """Index tensors on dims 0 and 2 (not adjacent): their broadcast dims come first."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(3, 5, 1)
        self.register_buffer("rows", torch.tensor([[1], [0]]))  # (2, 1)
        self.register_buffer("cols", torch.tensor([3, 0, 2]))  # (3,)
        self.d = nn.Linear(5, 2)

    def forward(self, x):
        return self.d(self.c(x)[self.rows, :, self.cols])  # (2, 3, 5)


def test_non_adjacent_index_tensors_put_their_dims_first():
    m = SplitIndices().eval()
    x = (torch.randn(2, 3, 4),)
    dg = fxprune.analyze(m, x)
    g = group_with(dg, "c.weight", 0)
    assert ("d.weight", 1) in g.members
    verified(m, x, groups=1)


class BoolMaskIndex(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 1)
        self.register_buffer("keep", torch.tensor([True, False, True, True, False, True, True, False]))
        self.d = nn.Conv2d(5, 2, 1)

    def forward(self, x):
        return self.d(self.c(x)[:, self.keep])


def test_boolean_mask_index_pins_mask_and_channels():
    m = BoolMaskIndex().eval()
    dg = fxprune.analyze(m, X)
    assert not {("keep", 0), ("c.weight", 0)} & members(dg), dg.report()
    verified(m, X)


class IndexWrite(nn.Module):
    """Ops that write or read through an index (no rule): the index and every channel they touch pin."""

    def __init__(self, op):
        super().__init__()
        self.op = op
        self.c = nn.Conv1d(3, 6, 1)
        self.register_buffer("idx", torch.tensor([4, 1, 1]))
        self.d = nn.Conv1d(6, 2, 1)

    def forward(self, x):
        y, idx = self.c(x), self.idx
        if self.op == "index_add":
            y = y.index_add(1, idx, y[:, :3] * 2)
        elif self.op == "index_copy":
            y = y.index_copy(1, idx[:2] + 1, y[:, :2])
        elif self.op == "index_fill":
            y = y.index_fill(1, idx, 0.5)
        elif self.op == "scatter":
            y = y.scatter(1, idx.view(1, 3, 1).expand(x.shape[0], 3, x.shape[2]), y[:, 3:])
        elif self.op == "scatter_add":
            y = y.scatter_add(1, idx.view(1, 3, 1).expand(x.shape[0], 3, x.shape[2]), y[:, :3])
        return self.d(y)


@pytest.mark.parametrize("op", ["index_add", "index_copy", "index_fill", "scatter", "scatter_add"])
def test_index_writes_pin_their_index_and_channels(op):
    m, x = IndexWrite(op).eval(), (torch.randn(2, 3, 4),)
    dg = fxprune.analyze(m, x)
    assert not {("idx", 0), ("c.weight", 0), ("d.weight", 1)} & members(dg), dg.report()
    verified(m, x)


class EmbeddingMaxNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6, max_norm=0.5)
        self.lin = nn.Linear(6, 3)

    def forward(self, ids):
        return self.lin(self.emb(ids))


def test_embedding_max_norm_mixes_the_embedding_dim():
    m = EmbeddingMaxNorm().eval()
    ids = (torch.tensor([[1, 4, 7], [2, 2, 9]]),)
    dg = fxprune.analyze(m, ids)
    g = group_with(dg, "emb.weight", 1)
    assert g.mixing is not None and "max_norm" in g.mixing
    verified(m, ids, groups=1, removal_groups=0)


# -- tensors a rule does not read (issue 10, item 2) -------------------------------------------
class MaskedMHA(nn.Module):
    """A text encoder's causal mask buffer, as CLIP-style models pass it."""

    def __init__(self, mask_kind="causal", batch_first=True, padding=False):
        super().__init__()
        self.emb = nn.Linear(8, 16)
        self.mha = nn.MultiheadAttention(16, 4, batch_first=batch_first)
        self.batch_first, self.padding = batch_first, padding
        causal = torch.triu(torch.full((5, 5), float("-inf")), 1)
        if mask_kind == "per_head":  # (N * heads, L, S): batch 2, 4 heads, each its own mask
            causal = torch.randn(8, 5, 5)
        self.register_buffer("mask", causal)
        self.register_buffer("pad", torch.tensor([[False] * 4 + [True], [False] * 5]))

    def forward(self, x):
        h = self.emb(x)
        if not self.batch_first:
            h = h.transpose(0, 1)
        out = self.mha(h, h, h, attn_mask=self.mask, need_weights=False,
                       key_padding_mask=self.pad if self.padding else None)[0]
        return out if self.batch_first else out.transpose(0, 1)


@pytest.mark.parametrize("kind,batch_first,padding", [("causal", True, False), ("causal", False, True),
                                                      ("per_head", True, True)])
def test_multihead_attention_masks_are_tied_to_positions_and_heads(kind, batch_first, padding):
    m = MaskedMHA(kind, batch_first, padding).eval()
    x = (torch.randn(2, 5, 8),)
    dg = fxprune.analyze(m, x)
    heads = group_with(dg, "mha.in_proj_weight", 0)
    assert heads.size == 4
    if kind == "per_head":  # the mask's rows per head are pruned with the heads
        assert ("mask", 0) in heads.members
    assert {("mask", 1), ("mask", 2), ("pad", 1)}.isdisjoint(members(dg)), dg.report()
    rep = verified(m, x)
    p = fxprune.apply(dg, {heads: [3, 1]})
    assert p.mha.num_heads == 2 and p(*x).shape == m(*x).shape
    assert rep.groups == len(dg.groups)


def test_multihead_attention_arguments_passed_positionally():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
            self.lin = nn.Linear(4, 8)
            self.register_buffer("mask", torch.zeros(3, 3))

        def forward(self, x):
            h = self.lin(x)
            return self.mha(h, h, h, None, False, self.mask)[0]  # need_weights=False, attn_mask

    m = M().eval()
    x = (torch.randn(2, 3, 4),)
    dg = fxprune.analyze(m, x)
    assert "cannot handle" not in dg.report()
    assert sizes(dg) == [2]  # whole heads: lin's out-features are product(heads, pinned head dim)
    verified(m, x)


def _unread_arg(x, w):  # computes with ``w``, but its rule below will not read it
    return x * w


torch.fx.wrap("_unread_arg")


class UnreadArg(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 1)
        self.w = nn.Parameter(torch.randn(1, 6, 1, 1))

    def forward(self, x):
        return _unread_arg(self.c(x), self.w)


def test_a_call_with_a_tensor_argument_its_rule_does_not_read_is_pinned_with_a_reason():
    registry.register(_unread_arg)(passthrough)  # a rule that never looks at ``w``
    try:
        m = UnreadArg().eval()
        dg = fxprune.analyze(m, X)
        assert dg.groups == []  # neither w nor the channels it scales
        assert "passthrough cannot handle this call (the rule does not read argument 1 ('w'))" in dg.report()
        verified(m, X)
    finally:
        registry._RULES.pop(_unread_arg)


class BufferedScale(nn.Module):
    """A module whose rule (registered below) reads ``weight`` but not its ``scale`` buffer."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6))
        self.register_buffer("scale", torch.randn(6))

    def forward(self, x):
        return x * (self.weight * self.scale)[:, None, None]


def _weight_only(ctx):
    x, w = ctx.tensor(0, "input"), ctx.module_param("weight")
    ctx.unify(w.dims[0], x.dims[1])
    return ctx.result(x.dims)


def test_a_module_buffer_its_rule_does_not_read_pins_the_call():
    registry.register(BufferedScale)(_weight_only)
    try:
        m = nn.Sequential(nn.Conv2d(3, 6, 1), BufferedScale(), nn.Conv2d(6, 2, 1)).eval()
        dg = fxprune.analyze(m, X, leaf_modules=[BufferedScale])
        assert "_weight_only cannot handle this call (the rule does not read 'scale' of BufferedScale)" \
            in dg.report()
        assert dg.groups == []
        verified(m, X, leaf_modules=[BufferedScale])
    finally:
        registry._RULES.pop(BufferedScale)


class ViewAs(nn.Module):
    """``a.view_as(b)`` takes b's sizes at run time: b's channels must be pruned with a's."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 6, 1)
        self.d = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.d(self.a(x).flatten(2).view_as(self.b(x)))


def test_view_as_couples_the_reshaped_tensor_to_the_one_giving_the_sizes():
    m = ViewAs().eval()
    dg = fxprune.analyze(m, X)
    g = group_with(dg, "a.weight", 0)
    assert ("b.weight", 0) in g.members and ("d.weight", 1) in g.members
    verified(m, X, groups=1)
    runs_smaller(m, X, X2)


class RankBranch(nn.Module):
    """``x.dim()`` reads the rank only (torchvision's ViT asserts it on every encoder input)."""

    def __init__(self):
        super().__init__()
        self.c, self.d = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = self.c(x)
        torch._assert(y.dim() == 4, "expected a 4-d input")
        return self.d(y) * y.ndimension()


def test_reading_the_rank_reads_no_coordinate():
    m = RankBranch().eval()
    dg = fxprune.analyze(m, X)
    assert sizes(dg) == [6], dg.report()  # found by the ViT latency benchmark: the channels were pinned
    verified(m, X, groups=1)


class ClampMinTensor(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 1)
        self.floor = nn.Parameter(torch.randn(6, 1, 1))
        self.d = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.d(self.c(x).clamp_min(self.floor))


def test_clamp_min_with_a_tensor_bound_is_element_wise():
    m = ClampMinTensor().eval()
    dg = fxprune.analyze(m, X)
    g = group_with(dg, "c.weight", 0)
    assert ("floor", 0) in g.members
    verified(m, X, groups=1)


def _wrong_rule(ctx):  # reads w but states no coupling: w's rows become a group of their own
    x, w = ctx.tensor(0, "input"), ctx.tensor(1, "weight")
    ctx.contract(w, 0)
    return ctx.result(x.dims[:-1] + (w.dims[1],))


def _mm(x, w):
    return x @ w


torch.fx.wrap("_mm")


def test_verify_reports_a_pruned_model_that_fails_to_run():
    registry.register(_mm)(_wrong_rule)
    try:
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.w = nn.Parameter(torch.randn(6, 3))

            def forward(self, x):
                return _mm(x, self.w)

        m, x = M().eval(), (torch.randn(2, 6),)
        rep = fxprune.verify(m, x, raise_on_mismatch=False)
        assert not rep.passed and "fails to run" in str(rep) and "RuntimeError" in str(rep)
        with pytest.raises(OracleMismatchError, match="fails to run"):
            fxprune.verify(m, x)
    finally:
        registry._RULES.pop(_mm)


class DefaultDtypeMask(nn.Module):
    """DETR's pixel mask: ``torch.ones`` without a dtype, then cast to float32 (the export graph
    records the factory without a dtype and asserts the cast's input dtype)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        mask = torch.ones(x.shape[0], 1, device=x.device).to(torch.float32)
        return self.out(self.lin(x) * mask)


def test_verify_runs_factories_without_dtype_in_float64():
    m, x = DefaultDtypeMask().eval(), torch.randn(2, 4)
    rep = fxprune.verify(m, (), {"x": x})  # keyword input: captured by torch.export
    assert rep.passed and rep.groups == 1


class RepeatThenSplit(nn.Module):
    """Found by the fuzzer: the Linear reads product(count, C) (a repeat); chunking the count and
    splitting C into unit pieces afterwards nests a sum inside that product, and the rewrite took
    the nested in_features layout for a list of sizes (TypeError in every pruned model)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 2)

    def forward(self, x):
        z = x.repeat(1, 2)
        y = self.lin(z)
        a, b = z.chunk(2, 1)
        return y, (a * b).split(1, 1)[3]


def test_module_attribute_with_a_nested_layout_is_one_size():
    m, x = RepeatThenSplit().eval(), (torch.randn(2, 4),)
    verified(m, x)
    p = fxprune.apply(fxprune.analyze(m, x), {})
    assert p.lin.in_features == 8


class RepeatInterleaveTotal(nn.Module):
    """``repeat_interleave(..., output_size=)``: the total is a count of the output dim."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(6, 2)

    def forward(self, x):
        return self.b(self.a(x).repeat_interleave(2, dim=1, output_size=6))


def test_repeat_interleave_output_size_is_rewritten():
    m, x = RepeatInterleaveTotal().eval(), (torch.randn(2, 4),)
    dg = fxprune.analyze(m, x)
    g = group_with(dg, "a.weight", 0, size=3)
    verified(m, x, groups=2)  # a's outputs, and the repeat count
    p = fxprune.apply(dg, {g: [2]})
    assert p.b.in_features == 2 and p(*x).shape == (2, 2)


class TopkAlongChannels(nn.Module):
    """``topk`` along the channels sorts them: exported as aten.topk(x, k, dim), where the
    rule took ``k`` for the dim and left the sorted channels prunable."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(2, 2)

    def forward(self, x):
        h = self.a(x).transpose(1, 2)  # (B, 2, T)
        return self.b(torch.topk(h, 2, dim=1).values.transpose(1, 2))


def test_aten_topk_pins_the_dim_it_sorts():
    m, x = TopkAlongChannels().eval(), torch.randn(2, 5, 3)
    dg = fxprune.analyze(m, (), {"x": x})  # keyword input: captured by torch.export
    assert ("a.weight", 0) not in members(dg), dg.report()
    assert fxprune.verify(m, (), {"x": x}).passed
