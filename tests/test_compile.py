"""Compiler integration: pass pipelines, torch.export, save/load."""
from __future__ import annotations

import copy
import importlib
import sys

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.infra.pass_manager import PassManager

import fxprune
from fxprune.tools.demo import DemoNet, demo_inputs
from fxprune.passes import META_KEY, MissingAnalysisError
from fxprune.passes.infra import ChannelAnalysisPass, PruneRewritePass, analysis_of, keep_leading


class TinyViT(nn.Module):
    """Patch embedding, class token, heads via reshape, SDPA, MLP."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.norm = nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        b, n, c = x.shape
        x = torch.cat([self.cls.expand(b, -1, -1), x], 1)
        q, k, v = self.qkv(self.norm(x)).reshape(b, n + 1, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n + 1, c))
        x = x + self.mlp(x)
        return self.head(x[:, 0])


MODELS = [(DemoNet, demo_inputs()), (TinyViT, (torch.randn(2, 3, 16, 16),))]


def _half(dg) -> dict:
    torch.manual_seed(0)
    return {g: torch.randperm(g.size)[: max(1, g.size // 2)] for g in dg.groups}


def _params(m) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("cls, inputs", MODELS)
def test_pass_manager_pipeline(cls, inputs):
    torch.manual_seed(0)
    model = cls().eval()
    gm = fx.symbolic_trace(model)
    analysed = ChannelAnalysisPass(inputs)(gm)
    assert analysed.modified is False and analysed.graph_module is gm
    assert all(META_KEY in n.meta for n in gm.graph.nodes)
    assert analysis_of(gm).group_atoms
    result = PassManager([ChannelAnalysisPass(inputs), PruneRewritePass(keep_leading(0.5))])(fx.symbolic_trace(model))
    assert result.modified
    pruned = result.graph_module
    assert pruned(*inputs).shape == model(*inputs).shape
    assert _params(pruned) < _params(model)


def test_rewrite_pass_requires_the_analysis():
    with pytest.raises(MissingAnalysisError, match="run ChannelAnalysisPass"):
        PruneRewritePass(keep_leading(0.5))(fx.symbolic_trace(DemoNet()))
    gm = fx.symbolic_trace(DemoNet())
    ChannelAnalysisPass(demo_inputs())(gm)
    with pytest.raises(ValueError, match="not groups of this graph"):
        PruneRewritePass({-1: torch.tensor([0])})(gm)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        keep_leading(1.0)


@pytest.mark.parametrize("cls, inputs", MODELS)
def test_pruned_model_exports_with_dynamic_batch(cls, inputs):
    model = cls().eval()
    dg = fxprune.analyze(model, inputs)
    pruned = fxprune.apply(dg, _half(dg))
    batch = torch.export.Dim("batch")
    ep = torch.export.export(pruned, inputs, dynamic_shapes=({0: batch},))
    x3 = torch.randn(3, *inputs[0].shape[1:])
    torch.testing.assert_close(ep.module()(x3), pruned(x3))


@pytest.mark.parametrize("cls, inputs", MODELS)
def test_exported_program_is_analysed_and_pruned(cls, inputs):
    torch.manual_seed(0)
    model = cls().eval()
    ep = torch.export.export(model, inputs)
    dg = fxprune.analyze(ep, inputs)
    assert dg.front_end == "ExportedProgram"
    assert dg.result.unknown == []  # aten ops, in-place activations and export's guard module all have rules
    assert dg.result.shape_mode == "meta"
    assert sorted(g.size for g in dg.groups) == sorted(g.size for g in fxprune.analyze(model, inputs).groups)
    perm = fxprune.apply(dg, {g: torch.randperm(g.size) for g in dg.groups})
    torch.testing.assert_close(perm(*inputs), model(*inputs), rtol=1e-4, atol=1e-5)
    pruned = fxprune.apply(dg, _half(dg))
    assert pruned(*inputs).shape == model(*inputs).shape and _params(pruned) < _params(model)


@pytest.mark.parametrize("cls, inputs", MODELS)
def test_save_load_state_dict_and_to_folder(cls, inputs, tmp_path):
    model = cls().eval()
    dg = fxprune.analyze(model, inputs)
    pruned = fxprune.apply(dg, _half(dg))
    expected = pruned(*inputs)
    torch.save(pruned, tmp_path / "pruned.pt")
    torch.testing.assert_close(torch.load(tmp_path / "pruned.pt", weights_only=False)(*inputs), expected)
    blank = copy.deepcopy(pruned)
    with torch.no_grad():
        for p in blank.parameters():
            p.zero_()
    blank.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(blank(*inputs), expected)
    pruned.to_folder(tmp_path / "pkg", "Pruned")
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module("pkg")
        torch.testing.assert_close(module.Pruned()(*inputs), expected)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("pkg", None)
        sys.modules.pop("pkg.module", None)


def test_onnx_export_where_available(tmp_path):
    pytest.importorskip("onnx")
    model, inputs = DemoNet().eval(), demo_inputs()
    dg = fxprune.analyze(model, inputs)
    pruned = fxprune.apply(dg, _half(dg))
    path = tmp_path / "pruned.onnx"
    torch.onnx.export(pruned, inputs, str(path), dynamo=False)
    import onnx

    onnx.checker.check_model(onnx.load(str(path)))
