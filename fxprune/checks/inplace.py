"""In-place application: resize the user's own modules, then prove the eager model agrees.

Note [In place]
~~~~~~~~~~~~~~~
For users who must keep their model class (HF ``save_pretrained``): the pruned
tensors are swapped into the original parameters and buffers (``tensor.data``,
so tied weights stay tied and references stay valid), every attribute derived
from a pruned size is synced from one table (Note [Attribute table] in
attr_sync.py), and the eager forward is compared with the pruned graph on the
example inputs; they must agree to a few ulps, as they run the same kernels.

For a Hugging Face model the config follows too, and the model a checkpoint of
it would load must compute the same (Note [Config in the transaction] in
``fxprune/hf/inplace.py``): extra *steps* run after the attributes are synced.

It is one transaction: whatever fails (a tensor that cannot be swapped, an
attribute that cannot be derived, an eager forward that disagrees or crashes),
the model comes back bit for bit as it was: the storage of every tensor, every
module attribute (the config's too), ``requires_grad``, ``training``. The check itself runs in eval
mode without gradients and leaves no trace either, so BatchNorm statistics are
not updated and dropout cannot make it fail. On success only the resized
tensors, the synced attributes and the stale ``.grad`` of resized parameters
change; an optimizer built before still holds state of the old sizes.
"""
from __future__ import annotations

from contextlib import contextmanager
from operator import attrgetter
from typing import Callable, Optional

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils._pytree import tree_flatten

from fxprune.passes import get_channel_meta, keys

from ..errors import FxPruneError
from .attr_sync import GraphArgs, SyncPlan, apply_sync, plan_sync
from ..compare import plain_outputs, relative_error

__all__ = ["apply_inplace", "trial_inplace", "InPlaceMismatchError"]


class InPlaceMismatchError(FxPruneError):
    """The eager model, resized in place, does not compute what the pruned graph computes
    (or could not be resized); the model was restored."""


def _param_targets(dg) -> list:
    """Qualified names of the tensors the analysis read."""
    return list(dg.param_names)


def _find(root: nn.Module, target: str) -> Optional[torch.Tensor]:
    try:
        t = attrgetter(target)(root)
    except AttributeError:  # a constant export lifted (``lifted_tensor_0``) is not a model attribute
        return None
    return t if isinstance(t, torch.Tensor) else None


class _Transaction:
    """What in-place pruning (or a forward) may change, and how to put it back bit for bit."""

    def __init__(self, model: nn.Module, buffer_values: bool = False):
        self.modules = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules))
                        for m in model.modules()]
        self.tensors: list = []  # (tensor, its former data, requires_grad)
        self.objects: list = []  # (object, its former __dict__): configs the steps change
        unique = {id(b): b for b in model.buffers()}.values()
        self.values = [(b, b.detach().clone()) for b in unique] if buffer_values else []

    def before(self, m: nn.Module) -> dict:
        """``m``'s attributes as they were when the transaction began."""
        return next((attrs for mod, attrs, *_ in self.modules if mod is m), {})

    def keep(self, obj) -> None:
        """Snapshot ``obj``'s attributes (a step replaces them, never mutates their values)."""
        self.objects.append((obj, dict(obj.__dict__)))

    def swap(self, t: torch.Tensor, new: torch.Tensor) -> None:
        self.tensors.append((t, t.data, t.requires_grad))
        t.data = new

    @torch.no_grad()
    def restore(self) -> None:
        for m, attrs, params, buffers, mods in self.modules:
            m.__dict__.clear()
            m.__dict__.update(attrs)
            for live, saved in ((m._parameters, params), (m._buffers, buffers), (m._modules, mods)):
                live.clear()
                live.update(saved)
        for obj, attrs in reversed(self.objects):
            obj.__dict__.clear()
            obj.__dict__.update(attrs)
        for t, data, requires_grad in reversed(self.tensors):
            t.data = data
            if t.requires_grad != requires_grad and t.is_leaf:
                t.requires_grad_(requires_grad)
        for b, value in self.values:
            if b.shape == value.shape:
                b.copy_(value)


@contextmanager
def _without_side_effects(model: nn.Module, graph: nn.Module):
    """Eval mode, no gradients, and every module attribute and buffer value put back afterwards."""
    state = _Transaction(model, buffer_values=True)
    flags = [(m, m.training) for m in graph.modules()]
    try:
        for m in (*model.modules(), *graph.modules()):
            m.training = False  # export's GraphModule refuses .eval(); the flag is what modules read
        with torch.no_grad():
            yield
    finally:
        state.restore()
        for m, flag in flags:
            m.training = flag


def _swap_tensors(model: nn.Module, dg, pruned: fx.GraphModule, tx: _Transaction) -> tuple:
    """Swap pruned data into the model's tensors; return (resized parameters, old sizes, resized constants)."""
    resized, old_sizes, constants = [], set(), []
    for target in _param_targets(dg):
        new, old = _find(pruned, target), _find(model, target)
        if new is None:
            continue
        if old is None:
            before = _find(dg.gm, target)
            if before is not None and before.shape != new.shape:
                constants.append(target)
            continue
        if old.shape != new.shape:
            old_sizes.update(a for a, b in zip(old.shape, new.shape) if a != b)
            tx.swap(old, new.detach().to(old.dtype))
            resized.append(old)
    return resized, old_sizes, constants


def _set_graph_attrs(model: nn.Module, dg, pruned: fx.GraphModule) -> None:
    """Attributes the graph rewrite recomputed for modules the graph calls (symbolic_trace)."""
    for node in dg.gm.graph.nodes:
        if node.op == "call_module":
            for edit in get_channel_meta(node).attr_edits:
                owner_path, _, attr = f"{node.target}.{edit.name}".rpartition(".")
                setattr(model.get_submodule(owner_path), attr, getattr(pruned.get_submodule(owner_path), attr))


def _tolerance(outputs) -> float:
    """Eager and graph run the same kernels: they agree bit for bit when the function is the same
    (measured on 23 HF families). A few ulps of the coarsest output dtype are allowed; a forward that
    reads a pruned size as a number (an attention scale) differs by more, even on random weights."""
    dtypes = [t.dtype for t in tree_flatten(outputs)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return max((8 * torch.finfo(d).eps for d in dtypes), default=1e-6)


def _check(model: nn.Module, dg, pruned: fx.GraphModule, rtol: Optional[float], steps=()) -> Optional[str]:
    """None if the eager model (and what each step checks) computes what the pruned graph computes on the
    example, else why not."""
    args, kwargs = dg.example_args, dict(dg.example_kwargs)
    capture_kwargs = dg.gm.meta.get(keys.CAPTURE_KWARGS, {})  # e.g. use_cache=False
    with _without_side_effects(model, pruned):
        try:
            graph = pruned(*args, **kwargs)
        except Exception as e:
            return f"the pruned graph fails on the example: {type(e).__name__}: {_first_line(e)}"
        try:
            eager = model(*args, **{**capture_kwargs, **kwargs})
        except Exception as e:
            return f"the eager forward fails: {type(e).__name__}: {_first_line(e)}"
    rtol = _tolerance(graph) if rtol is None else rtol

    def compare(outputs) -> Optional[str]:
        err = relative_error(plain_outputs(graph), plain_outputs(outputs))
        return None if err <= rtol else f"outputs differ (max relative error {err:.2e} > {rtol:.0e})"

    def run(module: nn.Module):
        with _without_side_effects(module, pruned):
            return module(*args, **{**capture_kwargs, **kwargs})
    problem = compare(eager)
    for step in steps:
        problem = problem or step.check(run, compare)
    return problem


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def _stale_hints(model: nn.Module, plan: SyncPlan, sizes: set) -> str:
    """Integer attributes equal to a size pruning changed that no table entry syncs."""
    hints = [f"{name or type(model).__name__}.{k}={v}" for name, m in model.named_modules()
             for k, v in vars(m).items()
             if isinstance(v, int) and not isinstance(v, bool) and not k.startswith("_") and v in sizes
             and not plan.covered(name, k)]
    return ", ".join(hints[:8])


def _explain(model: nn.Module, problem: str, unsynced: list, constants: list, hints: str) -> str:
    lines = [f"in-place pruning of {type(model).__name__} was undone: {problem}. The pruned graph is right, "
             "but the model's own forward does not compute it."]
    if unsynced:
        lines.append("Attributes that could not be synced: "
                     + "; ".join(f"{name} ({why})" for name, why in unsynced[:8]) + ".")
    if constants:
        lines.append(f"Constants the forward creates itself were pruned in the graph: {', '.join(constants[:8])}.")
    lines.append(f"Integer attributes equal to a pruned size that no rule syncs: {hints or 'none found'}.")
    lines.append("Fix: prune only groups the forward infers (e.g. whole heads with view(..., -1, head_dim)), "
                 "update those attributes/config yourself, or use the returned GraphModule.")
    return "\n".join(lines)


# Note [In-place steps]
# ~~~~~~~~~~~~~~~~~~~~~
# Some models carry state the graph does not show: an HF model's config must describe its new
# widths, and a model whose layers go away must renumber them. The room that knows such a
# model registers a step here (``register_step``); the in-place check runs every step whose
# predicate accepts the model. ``fxprune.hf.inplace`` registers the HF config step when
# ``fxprune`` is imported, so this room never imports the HF one above it.
_STEPS: list = []  # (predicate, factory): factory(model) -> a step with .check(run, compare) (and .sync/...)


def register_step(predicate: Callable, factory: Callable) -> None:
    """Run ``factory(model)``'s step in every in-place pruning of a model that ``predicate`` accepts."""
    _STEPS.append((predicate, factory))


def default_steps(model: nn.Module) -> tuple:
    """The steps in-place pruning of ``model`` runs after syncing attributes (Note [In-place steps])."""
    return tuple(factory(model) for predicate, factory in _STEPS if predicate(model))


def apply_inplace(model: nn.Module, dg, pruned: fx.GraphModule, pruned_sizes: set = frozenset(),
                  rtol: Optional[float] = None, edit: Optional[Callable] = None,
                  steps: Optional[tuple] = None) -> nn.Module:
    """Resize ``model`` itself to match ``pruned``, as one transaction (Note [In place]).

    ``edit(model, swap)``, if given, changes the resized model further inside the transaction
    (a repair writes refitted weights and new biases), calling ``swap(tensor, new_data)`` for
    every tensor it changes so that a failure restores it too.

    Raises :class:`InPlaceMismatchError` (``model`` restored bit for bit) when the eager
    forward of the resized model does not compute what ``pruned`` computes (within ``rtol``,
    by default a few ulps of the output dtype), or a step's check fails (``steps``: default
    :func:`default_steps`).
    """
    tx, steps, problem = _transaction(model, dg, pruned, rtol, steps, edit)
    if problem:
        tx.restore()
        hints = _stale_hints(model, tx.plan, tx.old_sizes | set(pruned_sizes))
        raise InPlaceMismatchError(_explain(model, problem, tx.unsynced, tx.constants, hints))
    for p in tx.resized:
        if p.grad is not None and p.grad.shape != p.shape:
            p.grad = None  # a gradient of the old size
    return model


def trial_inplace(model: nn.Module, dg, pruned: fx.GraphModule, rtol: Optional[float] = None,
                  steps: Optional[tuple] = None) -> Optional[str]:
    """The whole in-place transaction, always undone: None if ``model`` could be pruned to ``pruned`` in place,
    else why not. The model comes back bit for bit either way."""
    try:
        tx, _, problem = _transaction(model, dg, pruned, rtol, steps)
    except InPlaceMismatchError as e:
        return _first_line(e.__cause__) if e.__cause__ is not None else str(e)
    tx.restore()
    return problem


def _transaction(model: nn.Module, dg, pruned: fx.GraphModule, rtol: Optional[float], steps,
                 edit: Optional[Callable] = None) -> tuple:
    """Resize, sync, edit (a repair), run the steps and check; returns (transaction, steps, problem or None). Restores and
    raises InPlaceMismatchError on an exception."""
    if dg.lifted:
        raise FxPruneError("in-place pruning needs the model itself; this graph came from torch.compile "
                           "(parameters as inputs): use the returned GraphModule instead")
    tx = _Transaction(model)
    steps = default_steps(model) if steps is None else steps
    with undone_on_failure(tx, f"in-place pruning of {type(model).__name__}"):
        tx.plan = plan_sync(model, GraphArgs(dg.gm))
        tx.resized, tx.old_sizes, tx.constants = _swap_tensors(model, dg, pruned, tx)
        _set_graph_attrs(model, dg, pruned)
        tx.unsynced = apply_sync(model, tx.plan, GraphArgs(pruned), setattr)
        if edit is not None:
            edit(model, tx.swap)
        for step in steps:
            step.apply(tx)
        problem = _check(model, dg, pruned, rtol, steps)
    return tx, steps, problem


@contextmanager
def undone_on_failure(tx, what: str):
    """Restore ``tx`` on any exception (Ctrl-C too); an ``Exception`` becomes an
    :class:`InPlaceMismatchError` saying ``what`` failed and was undone."""
    try:
        yield
    except Exception as e:
        tx.restore()
        raise InPlaceMismatchError(f"{what} failed and was undone: {type(e).__name__}: {_first_line(e)}") from e
    except BaseException:
        tx.restore()
        raise
