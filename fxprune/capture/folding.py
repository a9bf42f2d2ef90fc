"""Folded capture: every distinct repeated block is captured and analysed once.

``fxprune.analyze(model, ..., fold=True)``. The blocks of a ``ModuleList`` or
``Sequential`` that are structurally identical (same types, parameter shapes
and plain attributes) and called with the same input signature are replaced,
in a shallow copy of the model, by stubs that call the opaque op
``fxprune::folded_block``. The top level is exported once with those stubs, each
distinct block is exported once on its own, and the analysis instantiates the
block's summary at every call site (Note [Folded blocks] in
``passes/blocks.py``). Capture and analysis then cost one block, not N. The
summaries and the block path of every call site are frozen metadata:
``gm.meta[fxprune.passes.FOLDS_KEY]``, a ``FoldRegistry``.

Both exports use static shapes: the pruned ``GraphModule`` runs at the example's
sizes. ``apply(..., inplace=True)`` keeps the model's own code, which runs at
any size.
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from fxprune.passes import FOLDS_KEY, FoldRegistry, meta_clone
from fxprune.passes.blocks import register_outputs, summarize
from fxprune.passes.folds import TENSOR, FoldInfo

from .frontends import Captured, _from_exported
from ..errors import CaptureError

__all__ = ["capture_folded", "IDENTITY_ATTRS"]

# Attributes that only name a block's position (HF uses layer_idx to address KV caches);
# every other plain attribute must be equal for two blocks to share one capture.
IDENTITY_ATTRS = frozenset({"layer_idx", "layer_id", "layer_index", "block_idx", "idx"})
_PLAIN = (int, float, bool, str, type(None), torch.dtype, torch.device)


def _attr_sig(v: Any) -> Any:
    if isinstance(v, _PLAIN):
        return v
    if isinstance(v, (tuple, list)) and all(isinstance(x, _PLAIN) for x in v):
        return tuple(v)
    return ("object", id(v))  # shared objects (a config) match; distinct ones never do


def _tensor_sig(t: Optional[torch.Tensor]) -> Any:
    return None if t is None else (tuple(t.shape), t.dtype, t.requires_grad, type(t).__name__)


def signature(m: nn.Module) -> tuple:
    """What two blocks must share to share one capture."""
    attrs = tuple(sorted((k, _attr_sig(v)) for k, v in vars(m).items()
                         if not k.startswith("_") and k not in IDENTITY_ATTRS and k != "training"))
    return (type(m), m.training, attrs,
            tuple((k, _tensor_sig(p)) for k, p in m._parameters.items()),
            tuple((k, _tensor_sig(b)) for k, b in m._buffers.items()),
            tuple((k, None if c is None else signature(c)) for k, c in m._modules.items()))


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def find_blocks(model: nn.Module) -> dict:
    """``{container path: {child name: signature}}`` for the children of a ModuleList/Sequential
    with parameters that at least one sibling matches exactly. Containers inside a folded block
    are part of that block."""
    found: dict = {}
    for path, m in model.named_modules():
        inside = [_join(c, n) for c, names in found.items() for n in names]
        if not isinstance(m, (nn.ModuleList, nn.Sequential)) or any(
                path == b or path.startswith(b + ".") for b in inside):
            continue
        sigs: dict = {}
        for name, child in m.named_children():
            if any(True for _ in child.parameters()):
                sigs.setdefault(signature(child), []).append(name)
        names = {n: sig for sig, group in sigs.items() if len(group) > 1 for n in group}
        if names:
            found[path] = names
    return found


class _BlockStub(nn.Module):
    """Stands in for a block during the top-level export: calls ``folded_block`` instead."""

    def __init__(self, folder: "_Folder", path: str, block: nn.Module, sig: tuple):
        super().__init__()
        object.__setattr__(self, "_block", block)  # not a submodule: its tensors stay out of the export
        self._path, self._folder, self._sig = path, folder, sig

    def forward(self, *args, **kwargs):
        return self._folder.call(self._path, self._block, self._sig, args, kwargs)


def _leaf_sig(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return ("tensor", tuple(int(n) for n in x.shape), x.dtype)
    if isinstance(x, _PLAIN):
        return x
    raise CaptureError(f"a folded block is called with a {type(x).__name__} input; folding supports tensors "
                       "and constants (for HF models pass use_cache=False), or use fold=False")


class _Folder:
    """Records the block calls of the top-level export and captures each distinct block once."""

    def __init__(self):
        self.keys: dict = {}  # (module signature, call signature) -> key
        self.reps: dict = {}  # key -> (block, example leaves, spec, output spec, output template)
        self.calls: list = []  # (path, key) in call order
        self.key_of: dict = {}  # path -> key

    def call(self, path: str, block: nn.Module, sig: tuple, args: tuple, kwargs: dict):
        leaves, spec = tree_flatten((args, kwargs))
        k = (sig, str(spec), tuple(_leaf_sig(x) for x in leaves))
        if k not in self.keys:
            self.keys[k] = self._first_call(block, leaves, spec)
        key = self.keys[k]
        if self.key_of.setdefault(path, key) != key:
            raise CaptureError(f"block '{path}' is called with two different signatures; it cannot share "
                               "one capture per call site (use fold=False)")
        self.calls.append((path, key))
        out = iter(torch.ops.fxprune.folded_block([x for x in leaves if isinstance(x, torch.Tensor)], key))
        _, _, _, out_spec, template = self.reps[key]
        return tree_unflatten([next(out) if x is TENSOR else x for x in template], out_spec)

    def _first_call(self, block: nn.Module, leaves: list, spec) -> int:
        """Run a meta copy of the block on meta inputs of the call's shapes: its outputs."""
        from torch.utils._python_dispatch import _disable_current_modes

        with _disable_current_modes():
            meta = [torch.empty(x.shape, dtype=x.dtype, device="meta") if isinstance(x, torch.Tensor) else x
                    for x in leaves]
            rep = meta_clone(block)
            args, kwargs = tree_unflatten(meta, spec)
            with torch.no_grad():
                out_leaves, out_spec = tree_flatten(rep(*args, **kwargs))
        tensors = [o for o in out_leaves if isinstance(o, torch.Tensor)]
        if not tensors or not all(isinstance(o, (torch.Tensor, *_PLAIN)) for o in out_leaves):
            raise CaptureError(f"a folded block ({type(block).__name__}) must return tensors (and constants)")
        key = register_outputs([(o.shape, o.dtype) for o in tensors])
        template = [TENSOR if isinstance(o, torch.Tensor) else o for o in out_leaves]
        with _disable_current_modes():  # example inputs on the call's device: devices the block names
            example = [torch.empty(x.shape, dtype=x.dtype, device=x.device) if isinstance(x, torch.Tensor) else x
                       for x in leaves]
        self.reps[key] = (block, example, spec, out_spec, template)
        return key

    def summaries(self) -> dict:
        return {key: self._summarize(*rep) for key, rep in self.reps.items()}

    def _summarize(self, rep: nn.Module, example: list, spec, _out_spec, _template) -> FoldInfo:
        """Export the block once (on its own device, with empty inputs) and summarise it."""
        from torch.export._tree_utils import reorder_kwargs

        args, kwargs = tree_unflatten(example, spec)
        ep = torch.export.export(rep, tuple(args), dict(kwargs), strict=False)
        gm = ep.module()
        flat = tree_flatten((tuple(args), reorder_kwargs(dict(kwargs), gm.graph._codegen.pytree_info.in_spec)))[0]
        where = {id(x): i for i, x in enumerate(flat)}
        op_inputs = [where[id(x)] for x in example if isinstance(x, torch.Tensor)]
        state = {n for n, _ in rep.named_parameters(remove_duplicate=False)} | \
            {n for n, _ in rep.named_buffers(remove_duplicate=False)}
        summary = summarize(gm, tuple(flat), op_inputs, state)
        leaves = tuple(TENSOR if isinstance(x, torch.Tensor) else x for x in example)
        return FoldInfo(summary, spec, leaves)


def _shallow(m: nn.Module, path: str, found: dict, folder: _Folder, prefix: str = "") -> nn.Module:
    """A copy of ``m`` sharing everything but the module dicts on the way to folded blocks."""
    clone = copy.copy(m)
    clone._modules = dict(m._modules)
    for name, child in m._modules.items():
        full = f"{prefix}{name}"
        if path in found and name in found[path]:
            clone._modules[name] = _BlockStub(folder, full, child, found[path][name])
        elif child is not None and any(p == full or p.startswith(full + ".") for p in found):
            clone._modules[name] = _shallow(child, full, found, folder, full + ".")
    return clone


def capture_folded(model: nn.Module, args: tuple, kwargs: Optional[dict]) -> Captured:
    """Capture ``model`` with its repeated blocks folded (see the module docstring).

    Raises :class:`CaptureError` when there is nothing to fold or folding cannot apply.
    """
    found = find_blocks(model)
    if not found:
        raise CaptureError(f"{type(model).__name__} has no repeated blocks to fold (children of a "
                           "ModuleList/Sequential with equal structure)")
    folder = _Folder()
    stubbed = _shallow(model, "", found, folder)
    kwargs = dict(kwargs or {})
    ep = torch.export.export(stubbed, tuple(args), kwargs, strict=False)
    cap = _from_exported(ep, args, kwargs)
    gm = cap.gm
    op = torch.ops.fxprune.folded_block.default
    sites = [n for n in gm.graph.nodes if n.op == "call_function" and n.target == op]
    if [n.args[1] for n in sites] != [key for _, key in folder.calls]:
        raise CaptureError("the exported graph does not call the folded blocks once per block call")
    folds = folder.summaries()
    for path in dict.fromkeys(p for p, _ in folder.calls):
        gm.add_submodule(path, model.get_submodule(path))
    gm.meta[FOLDS_KEY] = FoldRegistry(tuple(folds.items()),
                                      tuple((n.name, path) for n, (path, _) in zip(sites, folder.calls)))
    n_blocks = len({p for p, _ in folder.calls})
    cap.front_end = (f"torch.export (non-strict, static shapes), {n_blocks} repeated blocks folded: "
                     f"{len(folds)} distinct block(s) captured once")
    return cap
