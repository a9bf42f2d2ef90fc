"""Plan from the checkpoint: the model built from its config on the meta device, analysed folded.

Note [Planning on meta]
~~~~~~~~~~~~~~~~~~~~~~~
Nothing here reads a weight. ``config.json`` gives the model class (its
``architectures`` entry); the model is built under accelerate's
``init_empty_weights`` (parameters on the meta device, buffers such as rotary
frequencies computed for real) and analysed with ``fold=True``: one decoder
layer is captured once and instantiated at every call site, so planning a 7B
model costs about one second and a few tens of MB. The checkpoint's tensor
names are matched to the names the analysis knows, tied parameters included
(``lm_head.weight`` read through ``model.embed_tokens.weight``).

Which groups the streamed pruning may change (:func:`candidates`): the HF
forward reshapes attention with one ``head_dim`` attribute and normalises the
residual stream, so the default leaves out the innermost factor of a product
layout (a head dim: v's head dim, the rotary half of q/k) and groups that a
normalization or reduction reads (the hidden size). Whole heads, whole kv heads
with their query heads, query heads per kv head and MLP widths stay. The plan
says which groups it left out and why.
"""
from __future__ import annotations

import copy
import inspect
import os
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..graph import DependencyGraph
from .checkpoint import Checkpoint
from .config import model_class

__all__ = ["CheckpointPlan", "plan_checkpoint", "check_tensors", "meta_model", "candidates", "head_dim_groups", "block_paths"]


@dataclass
class CheckpointPlan:
    """A checkpoint and the analysis of its model, built on the meta device.

    Attributes:
        checkpoint: the :class:`~fxprune.hf.checkpoint.Checkpoint` (headers only).
        config: the model's ``PretrainedConfig``.
        model: the model on the meta device (buffers real).
        dg: its folded analysis.
        target_of: ``{checkpoint tensor: name the analysis reads it by}`` (None: not read by the graph).
        aliases: ``{analysis name: checkpoint tensor}`` for every name, tied ones included.
        blocks: the repeated blocks' module paths, in call order (``model.layers.0``, ...).
    """

    checkpoint: Checkpoint
    config: object
    model: torch.nn.Module
    dg: DependencyGraph
    target_of: dict
    aliases: dict
    blocks: tuple
    example_kwargs: dict = field(default_factory=dict)

    def block_of(self, name: str) -> Optional[str]:
        """The block path a checkpoint tensor belongs to, or None (embeddings, final norm, head)."""
        for b in self.blocks:
            if name.startswith(b + "."):
                return b
        return None


def _import_transformers():
    from ..compat import import_torchvision
    try:
        import_torchvision()  # transformers imports torchvision when it is installed
    except Exception:  # noqa: BLE001 - no torchvision, or a broken one: transformers copes without it
        pass
    import transformers
    return transformers


def meta_model(config, model_cls=None, dtype: Optional[torch.dtype] = None) -> torch.nn.Module:
    """``model_cls`` (default: from ``config.architectures``) built under ``init_empty_weights``, eval mode.

    ``dtype``: of the parameters (default: the config's). ``config`` is not modified.
    """
    from accelerate import init_empty_weights

    _import_transformers()
    cls = model_class(config, model_cls)
    config = copy.deepcopy(config)  # _from_config writes its dtype into the config
    with init_empty_weights(include_buffers=False):
        if hasattr(cls, "_from_config"):
            model = cls._from_config(config, **({"dtype": dtype} if dtype is not None else {}))
        else:
            model = cls(config)
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # as from_pretrained does: tied names are one tensor (not done on meta at build)
    return model.eval()


def default_example(model: torch.nn.Module, config) -> dict:
    """Keyword inputs for the capture: 2 x 8 token ids (``use_cache=False`` where the forward takes it)."""
    vocab = int(getattr(config, "vocab_size", 2) or 2)
    kwargs = {"input_ids": torch.arange(16).reshape(2, 8) % vocab}
    if "use_cache" in inspect.signature(model.forward).parameters:
        kwargs["use_cache"] = False
    return kwargs


def plan_checkpoint(path, example_kwargs: Optional[dict] = None, *, model_cls=None, fold: bool = True,
                    config=None) -> CheckpointPlan:
    """Read the headers and the config of the checkpoint at ``path``, build and analyse its model on meta.

    Example::

        >>> plan = plan_checkpoint("path/to/llama")          # doctest: +SKIP
        >>> len(plan.dg.groups), plan.blocks[:2]             # doctest: +SKIP
        (130, ('model.layers.0', 'model.layers.1'))
    """
    from ..api import analyze

    ck = Checkpoint(path)
    if config is None:
        T = _import_transformers()
        if not os.path.isfile(os.path.join(ck.path, "config.json")):
            raise FileNotFoundError(f"{ck.path} has no config.json: the model is built from it")
        config = T.AutoConfig.from_pretrained(ck.path)
    if isinstance(getattr(config, "fxprune", None), dict):
        raise ValueError(f"{ck.path} is a checkpoint fxprune pruned with per-layer widths; stream-pruning it "
                         "again is not supported: load it with fxprune.hf.from_pretrained and prune in memory")
    model = meta_model(config, model_cls)
    check_tensors(model, ck)
    kwargs = dict(example_kwargs) if example_kwargs is not None else default_example(model, config)
    dg = analyze(model, (), kwargs, fold=fold)
    target_of, aliases = _match_names(model, dg, ck)
    blocks = block_paths(model)
    return CheckpointPlan(ck, config, model, dg, target_of, aliases, blocks, kwargs)


def check_tensors(model: torch.nn.Module, ck: Checkpoint) -> None:
    """Raise CheckpointError unless ``ck`` holds exactly ``model``'s persistent tensors (one name of each tied
    set), at ``model``'s shapes: a missing tensor would leave the output without it, an unexpected one
    would be copied unpruned, and a shape that contradicts the config would be cut at the wrong width."""
    from .load import CheckpointError

    tied: dict = {}
    for n, t in (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)):
        tied.setdefault(id(t), []).append(n)
    state = model.state_dict(keep_vars=True)
    missing = sorted({names[0] for names in tied.values() if any(n in state for n in names)
                      and not any(n in ck for n in names)})
    unexpected = [n for n in ck if n not in state]
    mismatched = [f"{n} {ck.tensors[n].shape} vs {tuple(state[n].shape)}" for n in ck
                  if n in state and tuple(ck.tensors[n].shape) != tuple(state[n].shape)]
    problems = [(k, v) for k, v in (("missing", missing), ("unexpected", unexpected),
                                    ("shape (checkpoint vs config)", mismatched)) if v]
    if problems:
        raise CheckpointError(
            f"{ck.path} does not hold exactly the tensors of {type(model).__name__} as config.json describes it: "
            + "; ".join(f"{k}: {', '.join(v[:3])}{' ...' if len(v) > 3 else ''}" for k, v in problems)
            + ". Streaming reads tensors by the model's own names and shapes: fix the checkpoint, or (for names "
            "transformers converts on load, such as per-expert MoE tensors) prune it in memory")


def block_paths(model: torch.nn.Module) -> tuple:
    """The children of the layer list, in order: the ``ModuleList``/``Sequential`` holding the most
    parameters among those of two or more children that all have parameters (the decoder layers)."""
    best, size = (), 0
    for path, m in model.named_modules():
        if not isinstance(m, (torch.nn.ModuleList, torch.nn.Sequential)) or len(m) < 2:
            continue
        counts = [sum(p.numel() for p in c.parameters()) for c in m.children()]
        if min(counts) > 0 and sum(counts) > size:
            best = tuple(f"{path}.{n}" if path else n for n, _ in m.named_children())
            size = sum(counts)
    return best


def _match_names(model: torch.nn.Module, dg: DependencyGraph, ck: Checkpoint) -> tuple:
    """Checkpoint names to analysis names and back, through tied parameters."""
    by_id: dict = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(n)
    for n, b in model.named_buffers(remove_duplicate=False):
        by_id.setdefault(id(b), []).append(n)
    known = set(dg.param_names)
    target_of, aliases = {}, {}
    for names in by_id.values():
        stored = [n for n in names if n in ck]
        read = [n for n in names if n in known]
        if stored and read:
            for n in read:
                aliases[n] = stored[0]
            for n in stored:
                target_of[n] = read[0]
    for n in ck:
        target_of.setdefault(n, None)
    return target_of, aliases


def head_dim_groups(dg: DependencyGraph) -> set:
    """Group atoms that are the innermost factor of a product layout (inside a head) somewhere."""
    inner: set = set()

    def walk(layout, inside: bool) -> None:
        for seg in layout.segments:
            for j, f in enumerate(seg):
                last = inside or (len(seg) > 1 and j == len(seg) - 1)
                if hasattr(f, "segments"):
                    walk(f, last)
                elif last:
                    inner.add(f.id)
    for g in dg.groups:
        for m in g.layouts:
            walk(m.layout, False)
    return inner


def candidates(dg: DependencyGraph) -> tuple:
    """``(groups the streamed pruning may change, {group: why it is left out})`` (Note [Planning on meta])."""
    inner = head_dim_groups(dg)
    keep, left = [], {}
    for g in dg.groups:
        if g.atom in inner:
            left[g] = "a dimension inside a head (head_dim): the forward reshapes with one head_dim"
        elif g.mixing:
            left[g] = f"read by a normalization or reduction ({g.mixing}): the residual stream"
        else:
            keep.append(g)
    return keep, left
