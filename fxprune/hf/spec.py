"""``hf:PATH`` for the CLI: a checkpoint directory (or a config.json alone) as a model and example inputs.

A directory with weights (safetensors, a single file or shards) is loaded with
:func:`fxprune.hf.from_pretrained`, so a checkpoint pruned before (per-layer widths)
loads too. A config.json (or a directory without weights) is built on the meta device: only weight-free
criteria (``random``) apply, and nothing is certified, as there are no values.
The example inputs follow the forward's signature and the config: token ids within
the vocabulary, images of the configured size, mel features of the configured length,
decoder ids for encoder-decoders.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

__all__ = ["HFSpec", "load_spec", "example_inputs", "has_weights"]

_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def has_weights(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in _WEIGHTS)


@dataclass
class HFSpec:
    model: nn.Module
    kwargs: dict
    label: str
    meta: bool


def _sub(config, name: str):
    for c in (config, getattr(config, "text_config", None), getattr(config, "vision_config", None)):
        v = getattr(c, name, None) if c is not None else None
        if v is not None:
            return v
    return None


def example_inputs(model: nn.Module, shape: Optional[tuple] = None) -> dict:
    """Keyword inputs for ``model``'s forward: ``shape`` is the token ids' (batch, length), default (1, 8)."""
    config, params = model.config, inspect.signature(model.forward).parameters
    gen = torch.Generator().manual_seed(0)
    batch, length = (tuple(shape) + (8,))[:2] if shape else (1, 8)
    out = {}
    vocab = _sub(config, "vocab_size")
    if "input_ids" in params and vocab:
        out["input_ids"] = torch.randint(0, vocab, (batch, length), generator=gen)
    size = _sub(config, "image_size")
    if "pixel_values" in params and size:
        size = size if isinstance(size, int) else size[0]
        out["pixel_values"] = torch.randn(batch, _sub(config, "num_channels") or 3, size, size, generator=gen)
    mels = _sub(config, "num_mel_bins")
    if "input_features" in params and mels:
        out["input_features"] = torch.randn(batch, mels, 2 * _sub(config, "max_source_positions"), generator=gen)
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in params and vocab:
        out["decoder_input_ids"] = torch.randint(0, vocab, (batch, max(1, length // 2)), generator=gen)
    if not out:
        raise ValueError(f"cannot make example inputs for {type(model).__name__} (forward takes "
                         f"{', '.join(list(params)[:6])}); use the Python API with your own inputs")
    return out


def load_spec(path: str, shape: Optional[tuple] = None) -> HFSpec:
    """The model of checkpoint ``path`` (loaded, or on meta without weights) and example inputs."""
    from .config import model_class
    from .load import from_pretrained, read_config

    config = read_config(path)
    meta = path.endswith(".json") or not has_weights(path)  # a config file names the architecture only
    if meta:
        with torch.device("meta"):
            model = model_class(config)(config).eval()
    else:
        model = from_pretrained(path)
    label = f"{type(model).__name__} ({path}{', meta device: no weights' if meta else ''})"
    return HFSpec(model, example_inputs(model, shape), label, meta)
