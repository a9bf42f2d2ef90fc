"""Model-zoo helpers for the tests and benchmarks (torchvision models).

The torchvision wheel in some environments is a CUDA build sitting on a CPU-only
torch; :func:`fxprune.tools.zoo.import_torchvision` (the CLI's model loader) handles
that, see Note [torchvision on a CPU torch] there.
"""
from __future__ import annotations

import math
import sys
import warnings

import torch

from fxprune.tools.zoo import import_torchvision as _import_torchvision, torchvision_kwargs

__all__ = ["import_torchvision", "model_names", "build", "input_size", "make_informative", "third_removed_keep", "param_count"]


def import_torchvision():
    """Return the ``torchvision`` module (the library's shim applies where its C ops are missing).

    Inside pytest, a missing torchvision skips the calling test (module) instead of failing.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _import_torchvision()
    except ImportError as e:
        if "pytest" in sys.modules:
            import pytest
            pytest.skip(f"torchvision is not installed: {e}", allow_module_level=True)
        raise


def model_names() -> list:
    """Every torchvision classification and segmentation model name."""
    tv = import_torchvision()
    M = tv.models
    return M.list_models(module=M) + M.list_models(module=M.segmentation)


def input_size(name: str) -> int:
    """Smallest convenient square input side for ``name``."""
    if name.startswith(("vit_", "swin", "maxvit")):
        return 224  # fixed positional embeddings / window partitions
    if name.startswith("inception"):
        return 75  # inception_v3's minimum
    return 64


@torch.no_grad()
def make_informative(model: torch.nn.Module, inputs: tuple, seed: int = 0) -> torch.nn.Module:
    """Make an untrained model's output depend on every channel, so the oracles are not vacuous.

    Freshly built models are nearly constant functions: zero-initialised heads (ViT's
    output is exactly 0), biases and layer scales of 0 or 1e-6, and BatchNorm running
    stats of 0/1 that let activations vanish, so the output is mostly a bias and a
    wrong channel coupling changes it by ~1e-8 relative. Constant parameters get
    ``c + 0.1 * randn`` and BatchNorm running stats are recomputed from ``inputs``
    (one train-mode pass, cumulative average), which keeps activations at unit scale.
    """
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.is_floating_point() and p.numel() > 1 and bool((p == p.flatten()[0]).all()):
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    if bns:
        model(*inputs)
    for m, (momentum, training) in zip(bns, saved):
        m.momentum, m.training = momentum, training
    return model


def build(name: str, dtype=torch.float32, informative: bool = True):
    """Build ``name`` with ``weights=None`` in eval mode (googlenet/inception without aux heads).

    With ``informative`` (default), :func:`make_informative` on a random batch of 4.
    """
    tv = import_torchvision()
    torch.manual_seed(0)
    model = tv.models.get_model_builder(name)(**torchvision_kwargs(name)).to(dtype).eval()
    if informative:
        s = input_size(name)
        make_informative(model, (torch.randn(4, 3, s, s, generator=torch.Generator().manual_seed(2), dtype=dtype),))
    return model


def third_removed_keep(dg) -> dict:
    """Keep the first ceil(2/3 * size) coordinates of every group."""
    return {g: list(range(math.ceil(2 * g.size / 3))) for g in dg.groups}


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
