"""Representative third-party models (the ``thirdparty`` extra; each test skips without its library),
checked by both oracles in float64 plus a structural check. The full side-by-side table with
Torch-Pruning is ``python benchmarks/bench_thirdparty.py``; minimal reproductions of the bugs
these models found, needing no third-party import, are in test_regressions.py.
"""
import pytest
import torch

import fxprune
import thirdparty_zoo


def _model(name):
    if not thirdparty_zoo.available(name):
        pytest.skip(f"{thirdparty_zoo.library(name)} is not installed (pip install -e '.[thirdparty]')")
    return thirdparty_zoo.build(name)


def _exact(name):
    model, args, kwargs = _model(name)
    rep = fxprune.verify(model, args, kwargs)
    assert rep.passed and rep.groups > 0 and rep.permutation_error > 0, str(rep)
    dg = fxprune.analyze(model, args, kwargs)
    pruned = fxprune.apply(dg, {g: list(range(0, g.size, 2)) for g in dg.groups})
    with torch.no_grad():
        assert [t.shape for t in _tensors(pruned(*args, **kwargs))] == [t.shape for t in _tensors(model(*args, **kwargs))]
    return dg


def _tensors(out):
    from torch.utils._pytree import tree_flatten
    return [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def _members(dg, prefix: str) -> set:
    return {(t, d) for g in dg.groups for t, d in g.members if t.startswith(prefix)}


def test_open_clip_text_encoder_causal_mask_stays_whole():
    """The text tower passes a causal-mask buffer to nn.MultiheadAttention (issue 10, item 2)."""
    dg = _exact("open_clip CLIP")
    assert not _members(dg, "attn_mask"), dg.report()
    assert any(t.startswith("transformer.") and "in_proj_weight" in t for t, _ in _members(dg, "transformer.")), \
        dg.report()


def test_segmentation_models_unet_prunes_encoder_and_decoder():
    dg = _exact("smp Unet (resnet18)")
    assert _members(dg, "encoder.") and _members(dg, "decoder."), dg.report()


def test_monai_unet_is_exact():
    dg = _exact("MONAI UNet 2-D")
    assert len(dg.groups) >= 3, dg.report()


@pytest.mark.slow  # captured by torch.export with every dim dynamic: about a minute
def test_diffusers_unet_is_exact_with_its_timestep_input():
    dg = _exact("diffusers UNet2DModel")
    assert _members(dg, "down_blocks."), dg.report()
