"""In-place application: resize the user's own modules, then prove the eager model agrees.

For users who must keep their model class (HF ``save_pretrained``): the pruned
tensors are swapped into the original parameters (``param.data``, so tied
weights stay tied and references stay valid), module attributes are
recomputed, and the eager forward is compared with the pruned graph on the
example inputs. On any disagreement the model is restored and an error says
what the forward still hard-codes.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn

from fxprune.passes import get_channel_meta

from ..errors import FxPruneError
from .compare import plain_outputs, relative_error

__all__ = ["apply_inplace", "InPlaceMismatchError"]


class InPlaceMismatchError(FxPruneError):
    """The eager model, resized in place, does not compute what the pruned graph computes."""


def _linear(m: nn.Linear) -> dict:
    return {"in_features": m.weight.shape[1], "out_features": m.weight.shape[0]}


def _conv(m) -> dict:
    w = m.weight
    if m.transposed:
        return {"in_channels": w.shape[0], "out_channels": w.shape[1] * m.groups}
    return {"out_channels": w.shape[0], "in_channels": w.shape[1] * m.groups}


def _norm(m) -> dict:
    return {"num_features": next(t for t in (m.weight, m.running_mean) if t is not None).shape[0]}


def _layer_norm(m) -> dict:
    return {"normalized_shape": tuple(m.weight.shape)} if m.weight is not None else {}


def _embedding(m: nn.Embedding) -> dict:
    return {"num_embeddings": m.weight.shape[0], "embedding_dim": m.weight.shape[1]}


# attributes that follow from parameter shapes, by module type
_ATTRS: dict = {
    nn.Linear: _linear, nn.Conv1d: _conv, nn.Conv2d: _conv, nn.Conv3d: _conv, nn.ConvTranspose1d: _conv,
    nn.ConvTranspose2d: _conv, nn.ConvTranspose3d: _conv, nn.BatchNorm1d: _norm, nn.BatchNorm2d: _norm,
    nn.BatchNorm3d: _norm, nn.LayerNorm: _layer_norm, nn.Embedding: _embedding,
}


def _attr_fn(m: nn.Module) -> Callable | None:
    for base in type(m).__mro__:
        if base in _ATTRS:
            return _ATTRS[base]
    return None


def _owner(root: nn.Module, target: str):
    path, _, name = target.rpartition(".")
    return (root.get_submodule(path) if path else root), name


def _snapshot(model: nn.Module) -> list:
    """(module, attribute, value) for everything in-place pruning may change."""
    saved = [(p, "data", p.data) for p in [*model.parameters(), *model.buffers()]]
    for m in model.modules():
        for k, v in vars(m).items():
            if isinstance(v, (int, tuple)) and not k.startswith("_"):
                saved.append((m, k, v))
    return saved


def _restore(saved: list) -> None:
    for obj, attr, value in saved:
        setattr(obj, attr, value)


def _swap_tensors(model: nn.Module, dg, pruned: fx.GraphModule) -> tuple:
    """Swap pruned data into the model's tensors; return the touched modules and the old sizes."""
    touched, old_sizes = set(), set()
    for target in dg.param_names:
        owner, name = _owner(model, target)
        old = getattr(owner, name)
        new = getattr(*_owner(pruned, target))
        if isinstance(old, torch.Tensor) and old.shape != new.shape:
            old_sizes.update(a for a, b in zip(old.shape, new.shape) if a != b)
            old.data = new.detach().to(old.dtype)
            touched.add(owner)
    return touched, old_sizes


def _set_attrs(model: nn.Module, dg, pruned: fx.GraphModule, touched: set) -> None:
    for node in dg.gm.graph.nodes:  # attributes the graph rewrite recomputed (call_module nodes)
        if node.op == "call_module":
            for edit in get_channel_meta(node).attr_edits:
                owner_path, _, attr = f"{node.target}.{edit.name}".rpartition(".")
                setattr(model.get_submodule(owner_path), attr, getattr(pruned.get_submodule(owner_path), attr))
    for m in touched:  # modules the graph called through their parameters (torch.export)
        fn = _attr_fn(m)
        for k, v in (fn(m) if fn else {}).items():
            setattr(m, k, type(getattr(m, k))(v) if isinstance(getattr(m, k), tuple) else v)
        if isinstance(m, nn.RNNBase):
            m._init_flat_weights()


def _stale_hints(model: nn.Module, sizes: set) -> str:
    """Integer attributes of non-standard modules equal to a size that pruning changed."""
    hints = [f"{name or type(model).__name__}.{k}={v}" for name, m in model.named_modules() if _attr_fn(m) is None
             for k, v in vars(m).items()
             if isinstance(v, int) and not isinstance(v, bool) and not k.startswith("_") and v in sizes]
    return ", ".join(hints[:8])


def apply_inplace(model: nn.Module, dg, pruned: fx.GraphModule, pruned_sizes: set = frozenset(),
                  rtol: float = 1e-4) -> nn.Module:
    """Resize ``model`` itself to match ``pruned``; raise (and restore ``model``) if they disagree."""
    if dg.lifted:
        raise FxPruneError("in-place pruning needs the model itself; this graph came from torch.compile "
                           "(parameters as inputs): use the returned GraphModule instead")
    saved = _snapshot(model)
    touched, old_sizes = _swap_tensors(model, dg, pruned)
    _set_attrs(model, dg, pruned, touched)
    args, kwargs = dg.example_args, dg.example_kwargs
    try:
        with torch.no_grad():
            eager, graph = model(*args, **kwargs), pruned(*args, **kwargs)
        err = relative_error(plain_outputs(graph), plain_outputs(eager))
        problem = None if err <= rtol else f"outputs differ (max relative error {err:.2e})"
    except Exception as e:  # the eager forward no longer runs
        problem = f"the eager forward fails: {type(e).__name__}: {str(e).splitlines()[0]}"
    if problem:
        _restore(saved)
        raise InPlaceMismatchError(
            f"in-place pruning of {type(model).__name__} was undone: {problem}. The pruned graph is right, "
            "but the model's Python forward hard-codes a size that only the graph rewrite could change. "
            f"Integer attributes that may need updating: {_stale_hints(model, old_sizes | set(pruned_sizes)) or 'none found'}. "
            "Fix: prune only groups the forward infers (e.g. heads through view(..., -1, head_dim)), update "
            "those attributes/config yourself, or use the returned GraphModule.")
    return model
