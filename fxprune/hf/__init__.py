"""Hugging Face checkpoints in and out: pruned configs, per-layer widths, loading and saving.

transformers, safetensors and accelerate (the ``hf`` extra) are imported inside the functions,
so ``import fxprune`` never needs them.

Checkpoints larger than memory: :func:`fxprune.hf.stream.prune_checkpoint` plans on the meta
device and scores, calibrates and rewrites tensor by tensor and block by block
(:mod:`fxprune.hf.checkpoint` reads and writes the safetensors shards).
"""
from .config import PrunedConfig, model_class, pruned_config
from .load import CheckpointError, from_pretrained, read_config, rebuild, resize_to
from .save import save_pretrained

__all__ = ["PrunedConfig", "pruned_config", "model_class", "from_pretrained", "save_pretrained", "read_config",
           "rebuild", "resize_to", "CheckpointError"]
