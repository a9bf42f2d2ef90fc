"""Calibration block by block: one decoder layer's weights in memory at a time.

Note [Block by block]
~~~~~~~~~~~~~~~~~~~~~
:class:`BlockRunner` pushes calibration batches through a checkpoint's model
without loading it. The model is built on the meta device (accelerate's
``init_empty_weights``) in the compute dtype, and tensors are materialised with
accelerate's ``set_module_tensor_to_device`` from the safetensors shards. For
each repeated block ``i`` (the decoder layers) in call order:

1. **inputs**: every batch runs through the model's own forward, with blocks
   ``0..i-1`` replaced by stubs that return the stored outputs of block ``i-1``
   and a pre-hook on block ``i`` that records its arguments and stops the
   forward. So block ``i`` gets what the model passes it (its hidden states,
   and masks or position embeddings that may differ per layer), computed by
   the model's code. The modules outside the blocks that run there (the
   embeddings) are materialised on first use and kept.
2. **block**: its weights are read, every batch runs through it (observers,
   forward pre-hooks on its submodules, see its inputs), the outputs replace
   the stored ones, and its weights go back to meta.

Then, if asked (``tail=True``), the stubs return the last block's outputs and
the rest of the forward (final norm, head) runs with its own observers. Only the
activations between blocks are kept: one tensor per batch, plus the block's
recorded arguments. Peak memory is one block's weights in the compute dtype,
the modules outside the blocks that ran, and the activations.

Batches are dicts of keyword inputs (``{"input_ids": ...}``) or tensors (token ids).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .plan import CheckpointPlan, meta_model

__all__ = ["BlockRunner"]


class _Stop(Exception):
    """Raised by the pre-hook of the block whose inputs are being recorded."""


def _kwargs(batch) -> dict:
    if isinstance(batch, torch.Tensor):
        return {"input_ids": batch}
    if isinstance(batch, dict):
        return dict(batch)
    raise TypeError(f"a calibration batch is a tensor of token ids or a dict of keyword inputs, got "
                    f"{type(batch).__name__}")


class BlockRunner:
    """Run calibration batches through a checkpoint's model, one block's weights at a time.

    Args:
        plan: the :class:`~fxprune.hf.plan.CheckpointPlan` of the checkpoint.
        batches: a list of batches (dicts of keyword inputs, or token-id tensors).
        dtype: the compute dtype (float32 by default: CPU kernels, and statistics of the
            checkpoint's values).

    Example::

        >>> runner = BlockRunner(plan, [{"input_ids": ids}])            # doctest: +SKIP
        >>> runner.run({"model.layers.0.mlp.down_proj": lambda mod, x: print(x.shape)})  # doctest: +SKIP
    """

    def __init__(self, plan: CheckpointPlan, batches: Iterable, dtype: torch.dtype = torch.float32):
        self.plan, self.dtype = plan, dtype
        self.batches = [_kwargs(b) for b in batches]
        if not self.batches:
            raise ValueError("calibration needs at least one batch")
        if "use_cache" in plan.example_kwargs:
            for b in self.batches:
                b.setdefault("use_cache", False)
        self.model = meta_model(plan.config, type(plan.model), dtype=dtype)
        self.blocks = [self.model.get_submodule(p) for p in plan.blocks]
        if not self.blocks:
            raise ValueError(f"{type(self.model).__name__} has no repeated blocks (a ModuleList of layers): "
                             "block-by-block calibration needs them")
        self._stored = _stored_names(self.model, plan)
        self._outside: set = set()  # tensors outside the blocks materialised so far
        self._head: set = set()  # modules outside the blocks that run before block 0
        self._phase = "head"
        self.bytes_read = 0
        self._load([n for n, _ in self.model.named_buffers() if n in self._stored])  # persistent buffers

    # -- tensors -------------------------------------------------------------------------------------
    def _load(self, names) -> None:
        from accelerate.utils import set_module_tensor_to_device

        for n in names:
            stored = self._stored.get(n)
            if stored is None:
                raise KeyError(f"{n} is not in the checkpoint {self.plan.checkpoint.path}; calibration needs "
                               "every tensor of the modules it runs")
            value = self.plan.checkpoint.read(stored)
            self.bytes_read += value.numel() * value.element_size()
            set_module_tensor_to_device(self.model, n, "cpu", value=value)

    def _unload(self, names) -> None:
        from accelerate.utils import set_module_tensor_to_device

        for n in names:
            set_module_tensor_to_device(self.model, n, "meta")

    @staticmethod
    def _meta_params(prefix: str, module: nn.Module, recurse: bool) -> list:
        return [f"{prefix}{n}" for n, p in module.named_parameters(recurse=recurse) if p.is_meta]

    @contextlib.contextmanager
    def _lazy_outside(self):
        """Modules outside the blocks get their parameters when they first run, and keep them."""
        inside = tuple(p + "." for p in self.plan.blocks)
        handles = []
        for path, mod in self.model.named_modules():
            if path in self.plan.blocks or (path + ".").startswith(inside):
                continue

            def pre(m, args, _path=path):
                if self._phase == "head":
                    self._head.add(_path)
                names = self._meta_params(f"{_path}." if _path else "", m, recurse=False)
                self._load(names)
                self._outside.update(names)
            handles.append(mod.register_forward_pre_hook(pre))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    # -- stages --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _stubs(self, upto: int, outputs: list):
        """Blocks ``0..upto-1`` return the stored outputs of block ``upto-1`` (per batch, in order)."""
        saved = [b.forward for b in self.blocks[:upto]]
        current = {"batch": 0}

        def stub(*args, **kwargs):
            return outputs[current["batch"]]
        for b in self.blocks[:upto]:
            b.forward = stub
        try:
            yield current
        finally:
            for b, f in zip(self.blocks[:upto], saved):
                b.forward = f

    def _inputs_of(self, i: int, outputs: Optional[list]) -> list:
        """The (args, kwargs) block ``i`` receives for every batch."""
        recorded = []

        def catch(mod, args, kwargs):
            recorded.append((args, kwargs))
            raise _Stop
        handle = self.blocks[i].register_forward_pre_hook(catch, with_kwargs=True)
        try:
            with self._stubs(i, outputs or []) as cur, self._lazy_outside(), torch.no_grad():
                for k, batch in enumerate(self.batches):
                    cur["batch"] = k
                    try:
                        self.model(**batch)
                    except _Stop:
                        continue
                    raise RuntimeError(f"the forward never called block {self.plan.blocks[i]}")
        finally:
            handle.remove()
        return recorded

    def _observe(self, observers: dict) -> list:
        """Pre-hooks calling ``fn(module, input)``; modules outside the blocks observed once (the head on
        the way to block 0, the rest in the tail)."""
        handles = []
        for path, fn in observers.items():
            mod = self.model.get_submodule(path)

            def pre(m, args, _fn=fn, _path=path):
                if self._phase in ("head", "block") or (self._phase == "tail" and _path not in self._head):
                    _fn(m, args[0])
            handles.append(mod.register_forward_pre_hook(pre))
        return handles

    def run(self, observers: Optional[dict] = None, *, on_block: Optional[Callable] = None, tail: bool = False,
            progress: bool = False) -> None:
        """Run every batch through every block (Note [Block by block]).

        Args:
            observers: ``{module path: fn(module, input)}``, called with the first positional input of
                every call of that module (a consumer's activation), once per batch.
            on_block: ``fn(index, path)`` after block ``index`` ran every batch (its statistics are
                complete); its weights are on meta again.
            tail: also run what follows the last block (the final norm and the head).
            progress: a tqdm bar over the blocks (stderr).
        """
        handles = self._observe(observers or {})
        outputs = None
        try:
            for i, path in enumerate(tqdm(self.plan.blocks, desc="calibrating blocks", unit="block",
                                          disable=not progress)):
                self._phase = "head" if i == 0 else "between"
                recorded = self._inputs_of(i, outputs)
                self._phase = "block"
                names = self._meta_params(f"{path}.", self.blocks[i], recurse=True)
                self._load(names)
                try:
                    with torch.no_grad():
                        outputs = [self.blocks[i](*a, **k) for a, k in recorded]
                finally:
                    self._unload(names)
                del recorded
                if on_block is not None:
                    on_block(i, path)
            if tail:
                self._phase = "tail"
                with self._stubs(len(self.blocks), outputs) as cur, self._lazy_outside(), torch.no_grad():
                    for k, batch in enumerate(self.batches):
                        cur["batch"] = k
                        self.model(**batch)
        finally:
            for h in handles:
                h.remove()
            self._unload(sorted(self._outside))
            self._outside.clear()


def _stored_names(model: nn.Module, plan: CheckpointPlan) -> dict:
    """``{module tensor name: checkpoint tensor}``, through tied parameters."""
    ck = plan.checkpoint
    by_id: dict = {}
    for n, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        by_id.setdefault(id(t), []).append(n)
    out = {}
    for names in by_id.values():
        stored = [n for n in names if n in ck]
        for n in names:
            if stored:
                out[n] = stored[0]
    return out
