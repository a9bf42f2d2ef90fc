"""Depth pruning in place: decoder layers leave their ModuleList, layer_idx and config follow, checkpoints
round trip."""
import copy

import pytest
import torch
import torch.nn as nn

import fxprune
import fxprune.hf
from hf_tiny import FAMILIES, ids
from test_depth import XD, Decoder, ResNetish, XR
from zoo import import_torchvision

import_torchvision()  # transformers imports torchvision: nms schema shim on a CUDA wheel over CPU torch
transformers = pytest.importorskip("transformers")


def _build(family: str, **extra):
    cfg_cls, model_cls, kw, _ = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, cfg_cls)(**dict(kw, num_hidden_layers=4, **extra))
    return getattr(transformers, model_cls)(config).eval()


SLIDING = dict(layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
               use_sliding_window=True, sliding_window=3)


def _cached_matches_full(model, x) -> bool:
    """Decoding the last token from the KV cache gives what the full forward gives: layer indices are dense."""
    with torch.no_grad():
        full = model(x).logits[:, -1]
        first = model(x[:, :-1], use_cache=True)
        last = model(x[:, -1:], past_key_values=first.past_key_values, use_cache=True).logits[:, -1]
    return torch.allclose(full, last, atol=1e-5)


@pytest.mark.parametrize("family,extra", [("llama", {}), ("qwen2", SLIDING)])
def test_layers_removed_in_place_round_trip_through_stock_transformers(family, extra, tmp_path):
    model = _build(family, **extra)
    types = getattr(model.config, "layer_types", None)
    ex = dict(input_ids=ids(1, 7))
    kept_layer = model.model.layers[2]
    out = fxprune.prune(model, (), example_kwargs=ex, inplace=True, ratio=0.0, depth_ratio=("model.layers.1",))
    assert out is model and len(model.model.layers) == 3 and model.config.num_hidden_layers == 3
    assert model.model.layers[1] is kept_layer and kept_layer.self_attn.layer_idx == 1
    if types is not None:
        assert model.config.layer_types == [types[0], types[2], types[3]]
    x = ids(2, 6)
    assert _cached_matches_full(model, x)
    model.save_pretrained(tmp_path)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(back(x).logits, model(x).logits)
    assert back.config.num_hidden_layers == 3 and getattr(back.config, "layer_types", None) == \
        getattr(model.config, "layer_types", None)


def test_depth_and_width_in_place_with_per_layer_widths_round_trip(tmp_path):
    model = _build("llama")
    ref = copy.deepcopy(model)
    ex = dict(input_ids=ids(1, 7))
    dg = fxprune.analyze(model, (), ex)
    step = fxprune.prune_step(dg, ratio=0.3, scope="global", depth_ratio=("model.layers.0", "model.layers.3"),
                              inplace=True)  # the transaction proves eager == pruned graph, or undoes everything
    assert step.model is model and step.blocks == ("model.layers.0", "model.layers.3")
    assert len(model.model.layers) == 2 and model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in ref.parameters()) * 0.6
    x = ids(2, 5)
    assert _cached_matches_full(model, x)
    fxprune.hf.save_pretrained(model, str(tmp_path))
    back = fxprune.hf.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.equal(back(x).logits, model(x).logits)


def test_plain_modulelist_model_in_place():
    model = Decoder().eval()
    ref = copy.deepcopy(model)
    dg = fxprune.analyze(model, XD)
    out = fxprune.apply(dg, {}, inplace=True, blocks=[fxprune.removable_blocks(dg)[2]])
    assert out is model and len(model.layers) == 3
    ref.layers[2].attn.out_proj.weight.data.zero_()
    ref.layers[2].attn.out_proj.bias.data.zero_()
    ref.layers[2].mlp[2].weight.data.zero_()
    ref.layers[2].mlp[2].bias.data.zero_()
    with torch.no_grad():
        assert torch.allclose(model(*XD), ref(*XD), atol=1e-6)


def test_block_outside_a_modulelist_is_refused_and_the_model_is_untouched():
    model = ResNetish().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dg = fxprune.analyze(model, XR)
    with pytest.raises(fxprune.FxPruneError, match="not an element of an nn.ModuleList.*inplace=False"):
        fxprune.apply(dg, {dg.groups[0]: [0, 1]}, inplace=True, blocks=fxprune.removable_blocks(dg)[:1])
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in before.items()}
    assert isinstance(model.layer1, nn.Sequential) and len(model.layer1) == 3


def test_angular_scores_on_plain_batches_of_a_graph_captured_with_use_cache_false():
    model = _build("llama")
    dg = fxprune.analyze(model, (), dict(input_ids=ids(1, 7), use_cache=False))
    scores = fxprune.score_blocks(dg, "angular", data=[{"input_ids": ids(2, 7, seed=s)} for s in range(2)])
    assert sorted(scores) == [f"model.layers.{i}" for i in range(4)]
    assert all(0.0 < v < 1.0 for v in scores.values())
