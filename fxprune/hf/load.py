"""Load a pruned Hugging Face checkpoint: stock config, then every tensor at its checkpoint shape.

Note [Loading per-layer widths]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
A per-layer checkpoint's config.json is the stock config of the original family
(``model_type`` renamed ``fxprune_<type>`` so that plain transformers refuses it)
plus the ``fxprune`` section, which lists the shapes the config does not describe
(Note [Config from shapes] in config.py). :func:`from_pretrained` lets
transformers do the loading (key conversions such as Mixtral's per-expert
tensors, shards, dtypes, devices, tied weights, non-persistent buffers) on a
subclass whose ``__init__`` ends by giving those tensors their checkpoint
shapes on the meta device (a bias a repair added becomes a new parameter) and
syncing module attributes from the in-place table (``fxprune/checks/attr_sync.py``).
Weights then load as usual, and the object's class is set back to the stock one.

:func:`rebuild` does the same from tensors in memory instead of files: the
in-place transaction uses it to check that what a checkpoint loads computes what
the pruned graph computes (Note [In place] in ``fxprune/checks/inplace.py``).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from contextlib import contextmanager
from typing import Mapping, Optional

import torch
import torch.nn as nn

from ..checks.attr_sync import GraphArgs, apply_sync, plan_sync
from ..errors import FxPruneError
from .config import ORIGINAL, PREFIX, SECTION, model_class

__all__ = ["from_pretrained", "read_config", "resize_to", "rebuild", "CheckpointError"]


class CheckpointError(FxPruneError, ValueError):
    """A checkpoint directory cannot be read as a (pruned) Hugging Face checkpoint."""


def read_config(path: str):
    """The config of checkpoint ``path`` (a directory or its config.json), with the original
    ``model_type`` restored from the ``fxprune`` section; the section stays on the config."""
    file = path if path.endswith(".json") else os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise CheckpointError(f"{path}: no config.json; pass a checkpoint directory written by save_pretrained")
    with open(file) as f:
        data = json.load(f)
    section = data.get(SECTION)
    model_type = data.get("model_type", "")
    if section is not None:
        if section.get("version") != 1:
            raise CheckpointError(f"{file}: fxprune section version {section.get('version')!r} is newer than this "
                                  "fxprune reads (1); upgrade fxprune")
        model_type = section[ORIGINAL]
    elif model_type.startswith(PREFIX):
        raise CheckpointError(f"{file}: model_type {model_type!r} without its fxprune section; the file was edited")
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise CheckpointError(f"{file}: model_type {model_type!r} is not a transformers architecture")
    data["model_type"] = model_type
    return CONFIG_MAPPING[model_type].from_dict(data)


# -- resizing a built model ----------------------------------------------------------------------------------

def _owner(model: nn.Module, name: str) -> tuple:
    path, _, leaf = name.rpartition(".")
    try:
        return model.get_submodule(path), leaf
    except AttributeError:
        raise CheckpointError(f"the checkpoint holds {name}, but {type(model).__name__} has no module "
                              f"{path!r}; load it with the class it was saved from (model_cls=)") from None


def _reshaped(model: nn.Module, name: str, shape: tuple) -> bool:
    """Give tensor ``name`` of ``model`` the (meta) ``shape``; True if it changed."""
    owner, leaf = _owner(model, name)
    if leaf in owner._buffers and owner._buffers[leaf] is not None:
        old = owner._buffers[leaf]
        if tuple(old.shape) != shape:
            owner._buffers[leaf] = torch.empty(shape, dtype=old.dtype, device="meta")
            return True
        return False
    old = owner._parameters.get(leaf)
    if old is None and leaf not in owner._parameters and getattr(owner, leaf, None) is not None:
        raise CheckpointError(f"the checkpoint holds {name}, but {type(owner).__name__}.{leaf} is not a tensor")
    if old is not None and tuple(old.shape) == shape:
        return False
    dtype = old.dtype if old is not None else next((p.dtype for p in owner.parameters()), torch.float32)
    owner._parameters[leaf] = nn.Parameter(torch.empty(shape, dtype=dtype, device="meta"),
                                           requires_grad=old.requires_grad if old is not None else True)
    return True


def resize_to(model: nn.Module, shapes: Mapping[str, tuple]) -> list:
    """Give ``model``'s tensors the ``shapes`` (state-dict names; absent tensors such as a bias are added,
    on the meta device) and sync the attributes derived from them; returns the names that changed."""
    plan = plan_sync(model, GraphArgs(None))
    changed = [n for n, s in shapes.items() if _reshaped(model, n, tuple(int(x) for x in s))]
    if changed:
        failed = apply_sync(model, plan, GraphArgs(None), setattr)
        if failed:
            raise CheckpointError(f"{type(model).__name__}: attributes cannot follow the checkpoint's shapes: "
                                  + "; ".join(f"{a} ({why})" for a, why in failed[:6]))
    return changed


def _match_prefix(model: nn.Module, shapes: Mapping[str, tuple]) -> dict:
    """Checkpoint names as ``model`` names them (a base model loaded from a head model's checkpoint)."""
    own = set(model.state_dict())
    prefix = getattr(model, "base_model_prefix", "")
    out = {}
    for name, shape in shapes.items():
        if name not in own and prefix and name.startswith(prefix + "."):
            stripped = name[len(prefix) + 1:]
            if stripped in own or not any(k.startswith(prefix + ".") for k in own):
                name = stripped
        elif name not in own and prefix and f"{prefix}.{name}" in own:
            name = f"{prefix}.{name}"
        out[name] = shape
    return out


def _resizing(cls: type, shapes: Mapping[str, tuple]) -> type:
    """``cls`` whose ``__init__`` ends by resizing to ``shapes`` (Note [Loading per-layer widths])."""
    def __init__(self, config, *args, **kwargs):
        cls.__init__(self, config, *args, **kwargs)
        if type(self) is sub:  # not the sub-models a composite model builds
            resize_to(self, _match_prefix(self, shapes))
    sub = type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__,
                                      "__qualname__": cls.__qualname__})
    return sub


# -- loading -------------------------------------------------------------------------------------------------

def _header_shapes(path: str) -> dict:
    """Tensor shapes from the safetensors headers of checkpoint ``path`` (single file or shards)."""
    from safetensors import safe_open

    from .checkpoint import shard_files

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no weight_map: it is not a safetensors index")
        files = shard_files(path, weight_map)
    elif os.path.isfile(os.path.join(path, "model.safetensors")):
        files = [os.path.join(path, "model.safetensors")]
    else:
        return {}
    out = {}
    for file in files:
        with safe_open(file, "pt") as f:
            out.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    return out


def _checkpoint_shapes(path: str, config, cls: type) -> dict:
    """Shapes to resize to: the fxprune section's, and header shapes of names the model has."""
    section = getattr(config, SECTION, None)
    shapes = dict((section or {}).get("per_layer", {}))
    if os.path.isdir(path):
        from .config import config_shapes

        built = config_shapes(config, cls)
        for name, shape in _header_shapes(path).items():
            if name in built and tuple(built[name]) != tuple(shape) and name not in shapes:
                if not section:  # a stock config describes every tensor: the file contradicts it
                    raise CheckpointError(f"{path}: tensor {name} has shape {tuple(shape)} in the checkpoint, but "
                                          f"config.json describes {tuple(built[name])}; the config and the weights "
                                          "disagree (an edited config or a corrupt checkpoint)")
                shapes[name] = shape
    return {k: tuple(v) for k, v in shapes.items()}


def from_pretrained(path: str, model_cls: Optional[type] = None, **kwargs) -> nn.Module:
    """Load a checkpoint written after in-place pruning, per-layer widths included (Note [Loading per-layer widths]).

    Args:
        path: the checkpoint directory (``save_pretrained``'s output).
        model_cls: the model class (default: the config's ``architectures``).
        kwargs: passed to ``model_cls.from_pretrained`` (``dtype=``, ``device_map=``, ...).

    Returns:
        The model, of the stock class, in eval mode.

    Example::

        >>> import fxprune.hf
        >>> model = fxprune.hf.from_pretrained("pruned-llama")          # doctest: +SKIP
    """
    config = read_config(path)
    cls = model_class(config, model_cls)
    shapes = _checkpoint_shapes(path, config, cls)
    kwargs.pop("output_loading_info", None)
    try:
        with _quiet_transformers():
            model, info = (_resizing(cls, shapes) if shapes else cls).from_pretrained(
                path, config=config, output_loading_info=True, **kwargs)
    except RuntimeError as e:
        if "mismatched_sizes" not in str(e) and "size mismatch" not in str(e):
            raise
        raise CheckpointError(f"{path}: tensor shapes do not match the model its config describes: "
                              f"{str(e).splitlines()[0][:300]}") from None
    _refuse_partial_load(path, cls, info)
    model.__class__ = cls
    resize_to(model, {})  # attributes of tied tensors
    return model.eval()


def _refuse_partial_load(path: str, cls: type, info: dict) -> None:
    """Transformers' loading report as an error: a missing tensor would be randomly initialised, an
    unexpected one dropped, a mismatched one re-initialised, and the model would still run."""
    what = [(k, sorted(info.get(k) or ())) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")]
    what = [(k.replace("_", " "), v) for k, v in what if v] + [("errors", list(info.get("error_msgs") or ()))]
    what = [(k, v) for k, v in what if v]
    if what:
        raise CheckpointError(f"{path} does not hold exactly the tensors of {cls.__name__}: "
                              + "; ".join(f"{k}: {', '.join(map(str, v[:4]))}{' ...' if len(v) > 4 else ''}"
                                          for k, v in what)
                              + ". Missing weights would be random: fix or re-save the checkpoint")


@contextmanager
def _quiet_transformers():
    log = logging.getLogger("transformers")
    level = log.level
    try:
        log.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


# -- rebuilding from tensors in memory ------------------------------------------------------------------------

def _pretrained_owner(model: nn.Module, path: str):
    """The innermost ``PreTrainedModel`` holding module ``path`` (composite models init their parts)."""
    from transformers import PreTrainedModel

    owner, node = model, model
    for part in path.split(".") if path else ():
        node = getattr(node, part)
        if isinstance(node, PreTrainedModel):
            owner = node
    return owner


@torch.no_grad()
def _materialize_buffers(model: nn.Module, device) -> None:
    """Non-persistent buffers as ``from_pretrained`` computes them (rotary frequencies, embedding scales)."""
    from transformers import initialization as init

    owners = {}
    for name, buf in list(model.named_non_persistent_buffers()):
        path, _, leaf = name.rpartition(".")
        module = model.get_submodule(path)
        module._buffers[leaf] = torch.empty_like(buf, device=device)
        owners[path] = module
    with init.guard_torch_init_functions():
        for path, module in owners.items():
            params, keep = dict(module._parameters), dict(module._buffers)
            try:  # loaded tensors are on meta while init runs: it can only write the buffers it computes
                for k, t in params.items():
                    if t is not None:
                        module._parameters[k] = nn.Parameter(torch.empty_like(t, device="meta"), t.requires_grad)
                for k, t in keep.items():
                    if t is not None and k not in module._non_persistent_buffers_set:
                        module._buffers[k] = torch.empty_like(t, device="meta")
                _pretrained_owner(model, path)._init_weights(module)
            finally:
                module._parameters.update(params)
                module._buffers.update({k: t for k, t in keep.items() if k not in module._non_persistent_buffers_set})


def rebuild(config, state: Mapping[str, torch.Tensor], model_cls: type, device=None) -> nn.Module:
    """What loading a checkpoint of ``config`` and ``state`` builds, sharing ``state``'s storage.

    The stock class is built on meta from ``config`` as read back from JSON, resized to ``state``'s
    shapes (Note [Loading per-layer widths]), and given ``state``'s tensors (no copy); non-persistent
    buffers are computed as ``from_pretrained`` does. Raises :class:`CheckpointError` when a tensor of
    ``state`` has no place in the model or one of the model's is missing.
    """
    from .config import _round_trip

    config = _round_trip(copy.deepcopy(config))
    device = device or next(iter(state.values())).device
    with _quiet_transformers(), torch.device("meta"):
        model = model_cls(config)
    resize_to(model, {k: tuple(v.shape) for k, v in state.items()})
    tensors = {k: v.detach() for k, v in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    model.tie_weights()
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta
            and n not in dict(model.named_non_persistent_buffers())]
    if unexpected or left:
        raise CheckpointError(f"{model_cls.__name__} rebuilt from the config does not take the tensors: "
                              f"unexpected {unexpected[:4]}, not loaded {left[:4]}")
    shared = [t for t in (*model.parameters(), *model.buffers()) if not t.is_meta]
    for t in shared:  # loaded: init must not write into them (they are the caller's storage)
        t._is_hf_initialized = True
    versions = [t._version for t in shared]
    _materialize_buffers(model, device)
    if any(t._version != v for t, v in zip(shared, versions)):
        raise CheckpointError(f"{model_cls.__name__}'s weight init wrote into loaded tensors while computing "
                              "non-persistent buffers (a bug: please report it)")
    resize_to(model, {})
    return model.eval()
