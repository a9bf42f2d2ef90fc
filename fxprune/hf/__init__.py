"""Hugging Face checkpoints: pruned checkpoints in and out (issues 11 and 13).

transformers, safetensors and accelerate (the ``hf`` extra) are imported inside
the functions that need them, so ``import fxprune`` never needs them.

* :mod:`fxprune.hf.checkpoint`: safetensors shards read tensor by tensor, written shard by shard.
* :mod:`fxprune.hf.stream`: prune a checkpoint larger than memory (:func:`fxprune.hf.stream.prune_checkpoint`).
"""
