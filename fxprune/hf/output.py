"""What the CLI's ``--out DIR`` writes for a Hugging Face model, and the check that it loads back the same.

* weights: the model was pruned in place (config updated in the transaction); the checkpoint is written
  with :func:`fxprune.hf.save_pretrained`, read back with :func:`fxprune.hf.from_pretrained` (plain
  transformers reads a stock one the same way) and run on the example: the logits must be identical;
* meta device (a config alone): only the config of the pruned graph's shapes is written; the model's
  own forward cannot run on meta, so nothing says it follows them (head dims, scales).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn as nn

from fxprune.passes import keys

from .outdir import check_out, staged

__all__ = ["Written", "write_checkpoint", "write_config", "prunes_in_place", "write_outputs"]


@dataclass
class Written:
    path: str
    per_layer: bool
    round_trip: str  # "identical logits", a difference, or why it was not run

    def summary(self) -> str:
        how = ("per-layer widths: load it with fxprune.hf.from_pretrained (plain transformers refuses it)"
               if self.per_layer else "stock config: plain transformers from_pretrained loads it")
        return f"wrote {self.path} ({how}); round trip: {self.round_trip}"


def _first(out):
    from torch.utils._pytree import tree_flatten

    return next(t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))


def _run(model: nn.Module, kwargs: dict) -> torch.Tensor:
    kw = dict(kwargs)
    if "use_cache" in inspect.signature(model.forward).parameters:
        kw["use_cache"] = False
    with torch.no_grad():
        return _first(model(**kw))


def _own_tensors(model: nn.Module) -> nn.Module:
    """``model`` with its tensors copied out of the loaded (memory-mapped) files. The same bits at another
    alignment can take another kernel path: a ViT read back from safetensors differed from the model it was
    saved from by 4e-9 while every tensor was equal; in fresh allocations, as the pruned model's are, it does not."""
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            t.data = t.data.clone()
    return model


def write_checkpoint(model: nn.Module, path: str, kwargs: dict) -> Written:
    """Save ``model`` (pruned in place) to ``path`` (new or empty), load it back and compare on ``kwargs``;
    the directory appears only once complete (Note [Output directories] in ``outdir.py``)."""
    from .load import from_pretrained
    from .save import save_pretrained

    from transformers.utils import logging as hf_logging

    path = check_out(None, path)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with staged(path) as tmp:  # Note [Output directories]: renamed into place once written and read back
            per_layer = save_pretrained(model, tmp)
            want = _run(model.eval(), kwargs)
            got = _run(_own_tensors(from_pretrained(tmp)), kwargs)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    same = got.shape == want.shape and torch.equal(got, want)
    diff = "identical logits" if same else f"logits DIFFER (max abs {float((got - want).abs().max()):.2e})"
    return Written(path, per_layer, diff)


def write_config(model: nn.Module, pruned: nn.Module, path: str) -> Written:
    """Write the config of ``model`` (on meta, no weights) for the tensor shapes of the pruned graph."""
    from .config import pruned_config
    from .save import mark_config_file

    own = set(model.state_dict())
    shapes = {k: tuple(v.shape) for k, v in (*pruned.named_parameters(), *pruned.named_buffers()) if k in own}
    result = pruned_config(model.config, shapes, type(model))
    with staged(check_out(None, path)) as tmp:
        result.config.save_pretrained(tmp)
        mark_config_file(tmp)
    return Written(path, not result.uniform, "not run (no weights: config.json only, with the shapes of the "
                   "pruned graph; whether the model's own forward and config follow them, head dims and "
                   "scales, was not checked: nothing runs on the meta device)")


# -- the CLI's steps -----------------------------------------------------------------------------------------

def prunes_in_place(model: nn.Module, meta: bool, say) -> bool:
    """``--out``: True where ``model`` is pruned in place (it has weights); a model on meta only gets its
    pruned config. Raises ValueError (a usage error) for a model that is not a Hugging Face one."""
    from .inplace import is_hf_model

    if not is_hf_model(model):
        raise ValueError("--out writes a Hugging Face checkpoint: give an hf:PATH model")
    if meta:
        say("no weights: the graph is pruned (nothing in place: the model's own forward cannot run on meta); "
            "--out gets the config of its shapes")
        return False
    say("pruning in place: trying which groups the model's own forward and its config can follow")
    return True


def write_outputs(args, before: nn.Module, pruned: nn.Module, inplace: bool, kwargs: dict, say) -> Written:
    """Write ``--out``; print what was left out and the per-layer widths; a round trip that differs raises
    :class:`~fxprune.errors.OracleMismatchError`."""
    from ..errors import OracleMismatchError
    from .widths import widths_table

    if not inplace:
        written = write_config(before, pruned, args.out)
    else:
        say(f"writing {args.out} and loading it back")
        written = write_checkpoint(pruned, args.out, kwargs)
        ex = getattr(pruned, keys.EXPRESSIBLE_ATTR, None)
        if not args.quiet and not args.no_tables:
            print(("\n" + ex.report()) if ex is not None else "")
            print("\nper-layer widths (before -> after):\n" + widths_table(before, pruned))
    if not args.quiet:
        print("\n" + written.summary())
    if "DIFFER" in written.round_trip:
        raise OracleMismatchError(written.summary())
    return written
