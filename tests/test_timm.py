"""timm vision transformers and friends (random init, small variants) against the oracles.

Each model: both exactness oracles (float64) pass, a structural check of its
groups, a third of every group removed runs with unchanged output shapes and
fewer parameters, also at another batch size.
"""
import math
import os
import sys

import pytest
import torch
import torch.nn as nn

import fxprune

sys.path.insert(0, os.path.dirname(__file__))
from zoo import import_torchvision  # noqa: E402

import_torchvision()  # timm imports torchvision: needs the nms schema shim on a CUDA wheel over CPU torch
timm = pytest.importorskip("timm")


def build(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, **kw).eval()
    with torch.no_grad():  # zero-initialised heads make the oracles vacuous: give them random weights
        for mod in m.modules():
            if isinstance(mod, nn.Linear) and not mod.weight.abs().max() > 0:
                nn.init.normal_(mod.weight, std=0.05)
                if mod.bias is not None:
                    nn.init.normal_(mod.bias, std=0.05)
    return m


def third_keep(dg) -> dict:
    return {g: list(range(math.ceil(2 * g.size / 3))) for g in dg.groups}


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def sizes_with(dg, target: str, dim: int) -> list:
    return sorted(g.size for g in dg.groups if (target, dim) in g.members)


def run_model(name, kw, side, structure, other_side=None):
    m = build(name, **kw)
    x = (torch.randn(2, 3, side, side),)
    x2 = (torch.randn(3, 3, other_side or side, other_side or side),)
    rep = fxprune.verify(m, x, raise_on_mismatch=False)
    assert rep.passed and rep.permutation_error < 1e-9 and rep.removal_error < 1e-9, str(rep)
    assert rep.groups > 0 and rep.permutation_error > 0, f"vacuous oracle (outputs independent of channels?)\n{rep}"
    dg = fxprune.analyze(m, x)
    structure(dg)
    pruned = fxprune.apply(dg, third_keep(dg), check=False)  # verified above
    assert n_params(pruned) < n_params(m)
    with torch.no_grad():
        for inp in (x, x2):
            assert pruned(*inp).shape == m(*inp).shape == (inp[0].shape[0], m.num_classes)
    return dg, pruned


def _vit(dg):
    assert sizes_with(dg, "patch_embed.proj.weight", 0) == [192]  # the residual stream
    for b in range(2):
        # fused qkv: heads (3) and one head_dim (64) shared by q, k and v; MLP hidden (768)
        assert sizes_with(dg, f"blocks.{b}.attn.qkv.weight", 0) == [3, 64], dg.report()
        assert sizes_with(dg, f"blocks.{b}.attn.proj.weight", 1) == [3, 64]
        assert sizes_with(dg, f"blocks.{b}.mlp.fc1.weight", 0) == [768]
    assert sizes_with(dg, "cls_token", 2) == [192]
    assert sizes_with(dg, "pos_embed", 1) == []  # token positions are not channels


def _convnext(dg):
    assert sizes_with(dg, "stem.0.weight", 0) == [40]
    assert sizes_with(dg, "stages.0.blocks.0.mlp.fc1.weight", 0) == [160]
    assert sizes_with(dg, "stages.0.blocks.0.gamma", 0) == [40]  # layer scale on the stream


def _mixer(dg):
    assert sizes_with(dg, "stem.proj.weight", 0) == [512]
    assert sizes_with(dg, "blocks.0.mlp_tokens.fc1.weight", 0) == [256]
    assert sizes_with(dg, "blocks.0.mlp_channels.fc1.weight", 0) == [2048]
    assert sizes_with(dg, "blocks.0.mlp_tokens.fc1.weight", 1) == []  # tokens: fixed by the patch grid


def _swin(dg):
    assert sizes_with(dg, "patch_embed.proj.weight", 0) == [96]
    qkv = sizes_with(dg, "layers.0.blocks.0.attn.qkv.weight", 0)
    assert qkv == [3, 32], dg.report()  # heads and head_dim: the bias table index addresses positions only
    heads = [g for g in dg.groups if g.size == 3 and ("layers.0.blocks.0.attn.qkv.weight", 0) in g.members]
    assert ("layers.0.blocks.0.attn.relative_position_bias_table", 1) in heads[0].members
    assert sizes_with(dg, "layers.0.blocks.0.mlp.fc1.weight", 0) == [384]


def _levit(dg):
    stream = sizes_with(dg, "stem.conv4.linear.weight", 0)
    assert stream == [128] and sizes_with(dg, "stages.0.blocks.1.mlp.ln2.linear.weight", 0) == [128]
    # heads (4) with the attention biases (their index addresses positions only), key and value dims
    assert sizes_with(dg, "stages.0.blocks.0.attn.qkv.linear.weight", 0) == [4, 16, 32], dg.report()
    assert sizes_with(dg, "stages.0.blocks.0.attn.attention_biases", 0) == [4]
    assert sizes_with(dg, "stages.0.blocks.0.mlp.ln1.linear.weight", 0) == [256]


def _mobilevit(dg):
    assert sizes_with(dg, "stem.conv.weight", 0) == [16]
    # the transformer blocks inside MobileViT blocks keep prunable attention and MLP groups
    assert any(".attn.qkv.weight" in t for g in dg.groups for t, _ in g.members), dg.report()
    assert any(".mlp.fc1.weight" in t for g in dg.groups for t, _ in g.members), dg.report()


def _efficientformerv2(dg):
    assert sizes_with(dg, "stem.conv1.conv.weight", 0) == [16]


FAST = [
    ("vit_tiny_patch16_224", dict(img_size=64, depth=4), 64, _vit, None),
    ("deit_tiny_patch16_224", dict(img_size=64, depth=4), 64, _vit, None),
    ("convnext_atto", {}, 64, _convnext, 96),
    ("mixer_s16_224", dict(img_size=64), 64, _mixer, None),
    ("levit_128s", dict(img_size=64), 64, _levit, None),
    ("efficientformerv2_s0", dict(img_size=64), 64, _efficientformerv2, None),
    ("swin_tiny_patch4_window7_224", dict(img_size=112), 112, _swin, None),
]
SLOW = [  # full depth, or export-captured (mobilevit: math.ceil on sizes defeats symbolic_trace)
    ("deit_tiny_patch16_224", dict(img_size=64), 64, _vit, None),
    ("vit_tiny_patch16_224", dict(img_size=64), 64, _vit, None),
    ("mobilevit_xxs", {}, 64, _mobilevit, None),  # export guards fix the resolution
]


@pytest.mark.parametrize("name,kw,side,structure,other", FAST, ids=[c[0] for c in FAST])
def test_timm_fast(name, kw, side, structure, other):
    run_model(name, kw, side, structure, other)


@pytest.mark.slow
@pytest.mark.parametrize("name,kw,side,structure,other", SLOW,
                         ids=[c[0] + "_12_blocks" if "_tiny_" in c[0] else c[0] for c in SLOW])
def test_timm_slow(name, kw, side, structure, other):
    run_model(name, kw, side, structure, other)
