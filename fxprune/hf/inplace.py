"""The Hugging Face step of in-place pruning: the config follows the tensors, and a checkpoint loads the same.

Note [Config in the transaction]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
Forwards read their config at run time (Phi-3 slices its fused projection at
``config.num_attention_heads * head_dim``) and at build time (Gemma's embedding
scale is ``sqrt(config.hidden_size)``, attention scales come from ``head_dim``,
rotary frequencies from the head size). So the config update is part of the
in-place transaction (Note [In place] in ``fxprune/checks/inplace.py``):

1. after the tensors are resized and the attributes synced, the config is
   derived from the new shapes (:func:`fxprune.hf.pruned_config`) and set on
   every config object the model's modules hold (sub-configs and the copies
   some families make, such as T5's encoder and decoder), snapshotted first;
2. the eager forward must then compute what the pruned graph computes (run-time
   reads);
3. and so must the model a checkpoint of it loads (:func:`fxprune.hf.rebuild`:
   the stock class built from the config as read back from JSON, resized where
   the config has per-layer widths, sharing the tensors; build-time reads).

Whatever fails, the transaction puts every config attribute back.
"""
from __future__ import annotations

import copy
import sys
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..checks.inplace import _first_line
from ..checks.layers import _rename
from ..errors import FxPruneError
from .config import SECTION, PrunedConfig, _is_config, pruned_config

__all__ = ["ConfigStep", "is_hf_model"]


def is_hf_model(model) -> bool:
    """A transformers ``PreTrainedModel`` (checked without importing transformers)."""
    if "transformers" not in sys.modules or not isinstance(model, nn.Module):
        return False
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def _live_configs(model: nn.Module) -> list:
    """Every distinct config object the model's modules hold, root first."""
    seen, out = set(), []

    def add(c):
        if id(c) in seen:
            return
        seen.add(id(c))
        out.append(c)
        for v in list(vars(c).values()):
            if _is_config(v):
                add(v)
    add(model.config)
    for m in model.modules():
        c = m.__dict__.get("config")
        if _is_config(c):
            add(c)
    return out


def _targets(root, configs: list, path: str, old) -> list:
    """The object that holds attribute ``path`` of ``root``, and the copies of it (same type, same old value)."""
    owner_path, _, leaf = path.rpartition(".")
    owner = root
    for part in owner_path.split(".") if owner_path else ():
        owner = getattr(owner, part)
    return [(c, leaf) for c in configs if c is owner or (type(c) is type(owner) and getattr(c, leaf, None) == old)]


def _plain(v) -> bool:
    return isinstance(v, (int, float, tuple)) and not isinstance(v, bool)


def _meta_model(config, cls: type) -> Optional[nn.Module]:
    from .load import _quiet_transformers

    try:
        with _quiet_transformers(), torch.device("meta"):
            return cls(copy.deepcopy(config))
    except Exception:
        return None


class ConfigStep:
    """Updates an HF model's config inside the in-place transaction (Note [Config in the transaction])."""

    def __init__(self, model: nn.Module):
        self.model, self.cls = model, type(model)
        self.result: Optional[PrunedConfig] = None

    def apply(self, tx) -> None:
        """Derive the config from the resized tensors and set it (``tx.keep(obj)`` snapshots an object first;
        ``tx.before(module)`` gives a module's attributes before the transaction)."""
        self.tx = tx
        model = self.model
        self.shapes = {**{k: tuple(v.shape) for k, v in model.named_buffers()},
                       **{k: tuple(v.shape) for k, v in model.state_dict().items()}}
        self.original = copy.deepcopy(model.config)
        self.configs = _live_configs(model)
        self.saved = [(c, dict(c.__dict__)) for c in self.configs]
        for c in self.configs:
            tx.keep(c)
        self._set(pruned_config(self.original, self.shapes, self.cls))

    def _set(self, result: PrunedConfig) -> None:
        for c, attrs in self.saved:
            c.__dict__.clear()
            c.__dict__.update(attrs)
        root = self.model.config
        edits = [(obj, leaf, new) for path, (old, new) in result.changed.items()
                 for obj, leaf in _targets(root, self.configs, path, old)]
        for obj, leaf, new in edits:
            setattr(obj, leaf, new)
        root.__dict__.pop(SECTION, None)
        if not result.uniform:
            setattr(root, SECTION, getattr(result.config, SECTION))
        self.result = result
        if result.changed:
            self._sync_from_config(result)

    def _sync_from_config(self, result: PrunedConfig) -> None:
        """Module attributes the config determines at build time (T5's ``key_value_proj_dim``), as a model built
        from the new config has them: where a build from the old and one from the new config differ and the
        live module still holds its value from before the transaction, and, for a stock config (it describes
        every module), also where the attribute table changed a value the new build disagrees with (T5's
        ``n_heads``, derived by the table from a head dim it assumed fixed). The transaction restores them."""
        old, new = _meta_model(self.original, self.cls), _meta_model(result.config, self.cls)
        if old is None or new is None:
            return
        built = dict(old.named_modules())
        for path, m in new.named_modules():
            o = built.get(path)
            try:
                live = self.model.get_submodule(path)
            except AttributeError:
                continue
            if o is None or type(o) is not type(live):
                continue
            before = self.tx.before(live)
            for k, v in vars(m).items():
                if not (_plain(v) and not k.startswith("_") and _plain(getattr(o, k, None)) and k in vars(live)):
                    continue
                now, was = vars(live)[k], before.get(k)
                if (getattr(o, k) != v and now == was) or (result.uniform and now != was and now != v):
                    setattr(live, k, v)

    def _rebuilt(self, run: Callable, compare: Callable) -> Optional[str]:
        from .load import rebuild

        try:
            return compare(run(rebuild(self.result.config, self.model.state_dict(), self.cls)))
        except Exception as e:
            return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"

    def check(self, run: Callable, compare: Callable) -> Optional[str]:
        """None if the model a checkpoint loads computes what the graph computes, else why not.

        ``run(module)`` runs a module on the example (no side effects); ``compare(outputs)`` returns None
        or the difference from the graph's outputs. Shapes can fit more than one config (pruned heads or a
        pruned head dim): where the first fails, each changed attribute is held at its value in turn."""
        problem = self._rebuilt(run, compare)
        if problem is None:
            return None
        first = self.result
        for path in first.changed:
            alt = pruned_config(self.original, self.shapes, self.cls, frozen={path})
            if alt.changed == first.changed:
                continue
            self._set(alt)
            if compare(run(self.model)) is None and self._rebuilt(run, compare) is None:
                return None
        self._set(first)
        changed = ", ".join(f"{p} {a} -> {b}" for p, (a, b) in first.changed.items()) or "none"
        how = "stock config" if first.uniform else "config with per-layer widths"
        return (f"the model a checkpoint of it loads ({how}; changed: {changed}) does not compute the pruned "
                f"function: {problem}. A value derived from the config at build time (an embedding or attention "
                "scale, rotary frequencies) changed with it")

    def describe(self) -> str:
        r = self.result
        if r is None:
            return ""
        changed = ", ".join(f"{p} {a} -> {b}" for p, (a, b) in r.changed.items()) or "no attribute"
        return (f"config: {changed}" + ("" if r.uniform else f"; {len(r.per_layer)} tensors with per-layer "
                                        "shapes (fxprune.hf.save_pretrained / from_pretrained)"))


def _live_hf_model(model) -> bool:
    return "transformers" in sys.modules and is_hf_model(model)


# -- layers removed in place (Note [Layers in place] in fxprune/checks/layers.py) --

def _config_follows(model: nn.Module, tx, path: str, kept: list, n_old: int) -> None:
    config = model.config
    if getattr(config, "num_hidden_layers", None) != n_old:
        raise FxPruneError(f"{path} has {n_old} layers but config.num_hidden_layers is "
                           f"{getattr(config, 'num_hidden_layers', None)}: removing layers in place needs the list "
                           "the config counts; use inplace=False")
    for c in _live_configs(model):
        tx.keep(c)
        for k, v in list(vars(c).items()):
            if isinstance(v, (list, tuple)) and len(v) == n_old and not k.startswith("_"):
                setattr(c, k, type(v)(v[i] for i in kept))
        if getattr(c, "num_hidden_layers", None) == n_old:
            c.num_hidden_layers = len(kept)
    section = getattr(config, SECTION, None)
    if isinstance(section, dict) and section.get("per_layer"):
        index = {old: new for new, old in enumerate(kept)}
        per_layer = {}
        for k, v in section["per_layer"].items():
            renamed = _rename(k, path, index)
            if renamed is not None:
                per_layer[renamed] = v
        setattr(config, SECTION, {**section, "per_layer": per_layer})


def _rebuilt_check(model: nn.Module):
    """A step for ``_check``: the model a checkpoint of ``model`` loads computes the same."""
    class _Step:
        def check(self, run, compare):
            from .load import rebuild
            try:
                return compare(run(rebuild(copy.deepcopy(model.config), model.state_dict(), type(model))))
            except Exception as e:  # noqa: BLE001 - any failure of the reloaded model is the finding
                return f"the model a checkpoint loads fails: {type(e).__name__}: {_first_line(e)}"
    return _Step()


def _register() -> None:
    from ..checks.inplace import register_step
    from ..checks.layers import register_layer_step

    register_step(_live_hf_model, ConfigStep)
    register_layer_step(is_hf_model, _config_follows, _rebuilt_check)




_register()  # Note [In-place steps] in fxprune/checks/inplace.py
