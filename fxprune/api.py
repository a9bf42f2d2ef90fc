"""The public verbs: analyze and apply."""
from __future__ import annotations

import warnings
from typing import Iterable, Mapping, Optional, Union

import torch
import torch.nn as nn

from fxprune.passes import InvalidKeepError, RuleBugError, ShapePropagationError, analyze_graph, keep_indices, keys, rewrite_graph
from fxprune.passes.depth import remove_branches

from .capture import capture
from .capture.frontends import capture_exported
from .capture.modes import refuse_train, restore_flags, training_flags
from .checks.certificate import attach, certify
from .checks.guard import explain_copy_failure, own_inputs, refuse_unsupported, unwrap_compiled, written_inputs
from .errors import CaptureError, GroupMismatchError, KeepIndicesError
from .graph import DependencyGraph, Group
from .profile import phase

__all__ = ["analyze", "apply", "certificate"]


def _as_inputs(example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)):
        raise TypeError("example_inputs must be a tuple of positional arguments, e.g. (torch.randn(1, 3, 224, 224),)")
    return tuple(example_inputs)


def name_list(value, what: str) -> tuple:
    """A name list option: one string is one name (never split into letters)."""
    if value is None:
        return ()
    if isinstance(value, (str, type, nn.Module, nn.Parameter)):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        raise TypeError(f"{what} must be a name or a list of names, got {type(value).__name__}") from None


def _check_leaves(model: nn.Module, leaf_modules: Iterable) -> list:
    leaves = list(name_list(leaf_modules, "leaf_modules"))
    for leaf in leaves:
        if isinstance(leaf, str):
            try:
                model.get_submodule(leaf)
            except AttributeError:
                raise ValueError(
                    f"leaf_modules names '{leaf}', which is not a submodule of {type(model).__name__}; "
                    "use a name from model.named_modules()"
                ) from None
        elif not isinstance(leaf, type):
            raise TypeError(f"leaf_modules entries are qualified names or module types, got {leaf!r}")
    return leaves


def analyze(model: nn.Module, example_inputs, example_kwargs: Optional[dict] = None, *,
            leaf_modules: Iterable = (), fold: bool = False) -> DependencyGraph:
    """Find the groups of coupled channels of ``model``.

    Args:
        model: an ``nn.Module`` (captured with ``torch.fx.symbolic_trace``) or an
            ``fx.GraphModule`` (parameters may be ``get_attr`` nodes, or placeholders
            fed ``nn.Parameter`` example inputs as ``torch.compile`` does). Never modified.
            ``torch.compile(model)`` is analysed as ``model``; quantization-aware, quantized
            and parametrized models are refused (Note [Models fxprune refuses] in
            ``fxprune/checks/guard.py``).
        example_inputs: tuple of positional inputs; only shapes and dtypes are used. The
            analysis runs on copies: a forward that writes its input raises ``InputMutationError``.
        example_kwargs: keyword inputs. Models ``symbolic_trace`` cannot capture (or
            called with keywords) are captured with a non-strict ``torch.export``;
            ``dg.report()`` says which front end was used.
        leaf_modules: qualified names or types of modules symbolic_trace must not trace
            into (e.g. ones with data-dependent Python). A leaf with a rule (a torch.nn
            layer) is still analysed by its rule; any other leaf pins every axis it touches.

    Returns:
        A :class:`DependencyGraph`.

    Example::

        >>> import torch, fxprune
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
        ...                           torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
        >>> dg = fxprune.analyze(net, (torch.randn(1, 3, 16, 16),))
        >>> dg.groups
        [Group(G0, size=8, members=[0.weight[0], 0.bias[0], 1.weight[0], +4 more])]
    """
    model = unwrap_compiled(model)  # Note [Models fxprune refuses] in fxprune/checks/guard.py
    refuse_unsupported(model)
    inputs, example_kwargs, versions = own_inputs(model, _as_inputs(example_inputs), example_kwargs)
    leaves = _check_leaves(model, leaf_modules)
    try:
        with phase("capture"), explain_copy_failure(model):
            cap = _capture(model, inputs, leaves, example_kwargs, fold)
    except Exception:
        written_inputs(model, versions, inputs, example_kwargs)  # the model's own writes, not a capture bug
        raise
    written_inputs(model, versions, inputs, example_kwargs)
    try:
        with phase("analysis"):
            result = analyze_graph(cap.gm, cap.inputs)
    except ShapePropagationError as e:  # a traced graph of another branch (Note [Checked trace])
        if cap.front_end != "torch.fx.symbolic_trace":
            raise
        why = f"its graph fails shape propagation: {str(e).splitlines()[0][:200]}"
        with phase("capture"):
            cap = capture_exported(model, inputs, example_kwargs, CaptureError(f"symbolic_trace: {why}"))
        cap.front_end += f" (symbolic_trace was not used: {why})"
        with phase("analysis"):
            result = analyze_graph(cap.gm, cap.inputs)
    return DependencyGraph(result, cap.front_end, type(model).__name__, cap.lifted, example_args=inputs,
                           example_kwargs=example_kwargs, model=model,
                           train_refused=cap.train_refused,  # Note [Training mode] in fxprune/capture/modes.py
                           training_flags=training_flags(model) if isinstance(model, nn.Module) else {})


def _capture(model, inputs: tuple, leaves: list, kwargs: Optional[dict], fold: bool):
    if not fold or not isinstance(model, nn.Module) or isinstance(model, torch.fx.GraphModule):
        return capture(model, inputs, leaves, kwargs)
    from .capture import capture_folded
    from .capture.modes import EXPORT_FROZEN, eval_copy

    try:
        cap = capture_folded(eval_copy(model), inputs, kwargs)
        cap.train_refused = EXPORT_FROZEN
        return cap
    except RuleBugError:  # strict mode: a rule bug inside a block is a bug, not a reason not to fold
        raise
    except Exception as e:  # folding is an optimisation: the usual capture stays sound
        cap = capture(model, inputs, leaves, kwargs)
        why = str(e).splitlines()[0] if isinstance(e, CaptureError) else f"{type(e).__name__}: {str(e)[:200]}"
        cap.front_end += f" (not folded: {why})"
        return cap


def _keep_tensor(group: Group, keep) -> torch.Tensor:
    """The passes' keep check (passes/validate.py), its error as :class:`KeepIndicesError`."""
    try:
        return keep_indices(keep, group.size, group.name)
    except InvalidKeepError as e:
        raise KeepIndicesError(str(e)) from None


def _resolve_group(dg: DependencyGraph, key: Union[Group, int]) -> Group:
    if isinstance(key, bool) or not isinstance(key, (Group, int)):
        raise TypeError(f"keep is keyed by Group (or its index in dg.groups), got {type(key).__name__}")
    if isinstance(key, int):
        if not 0 <= key < len(dg.groups):
            raise GroupMismatchError(f"group index {key} is out of range: this graph has "
                                     f"{len(dg.groups)} groups (dg.groups)")
        return dg.groups[key]
    if key.graph is not dg:
        raise GroupMismatchError(
            f"{key.name} belongs to another DependencyGraph ({key.graph!r}), not {dg!r}; "
            "use the groups of the graph you apply to (dg.groups), or re-run fxprune.analyze")
    return key


def apply(dg: DependencyGraph, keep: Mapping, *, inplace: bool = False, check: bool = True, repair=None,
          blocks: Iterable = ()):
    """Emit the pruned model: a new ``fx.GraphModule``.

    Args:
        dg: the result of :func:`analyze`.
        keep: ``{group: indices}``; indices are distinct ints (Python, numpy or a 1-D integer
            tensor) in ``range(group.size)`` in the order they must appear. Groups not named keep
            every coordinate; a group is named once (as a ``Group`` or its index).
        inplace: resize the analysed model's own modules instead (to keep its class,
            e.g. for HF ``save_pretrained``), then check that its eager forward agrees
            with the pruned graph on the example inputs; on disagreement the model is
            restored and :class:`fxprune.checks.inplace.InPlaceMismatchError` says why.
        check: certify the analysis with the permutation oracle (Note [Certified by default] in
            ``fxprune/checks/certificate.py``; once per ``dg``): the result carries the
            :class:`~fxprune.checks.Certificate` in ``.meta["fxprune.certificate"]`` and
            ``.fxprune_certificate``; a mismatch raises :class:`OracleMismatchError`.
        repair: a repair plan (:func:`fxprune.calib.plan_repair`, computed from the original
            weights) to write into the result: the one deliberate change of function, reported in
            ``fxprune.repair_report(result)``. With ``inplace=True`` it is written inside the
            in-place transaction and checked with it.
        blocks: whole blocks to remove as well (:class:`fxprune.passes.depth.Block`, from
            :func:`fxprune.removable_blocks`): each branch's add returns its skip, the branch and its
            parameters are deleted (exactly the model with the branch's output zeroed).

    Returns:
        A new ``torch.fx.GraphModule`` (the analysed model is not modified), or with
        ``inplace=True`` the analysed model itself. It trains like the original, or refuses
        ``train()`` where its graph froze a mode-dependent branch (Note [Training mode] in
        ``fxprune/capture/modes.py``).

    Example::

        >>> import torch, fxprune
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> dg = fxprune.analyze(net, (torch.randn(1, 4),))
        >>> small = fxprune.apply(dg, {dg.groups[0]: [7, 1, 2]})
        >>> small.get_submodule("0")
        Linear(in_features=4, out_features=3, bias=True)
        >>> small.fxprune_certificate.passed
        True
    """
    atoms = {}
    for key, idx in keep.items():
        group = _resolve_group(dg, key)
        if group.atom in atoms:
            raise GroupMismatchError(f"{group.name} is given twice in keep (as a Group and as its index "
                                     f"{group.index}?); name every group once")
        atoms[group.atom] = _keep_tensor(group, idx)
    cert = None
    if check:
        with phase("certificate"):
            cert = certificate(dg)
    with phase("rewrite"):
        pruned = rewrite_graph(dg.gm, atoms)
    if repair is not None:
        repair.write(pruned)
    branches = [br for b in blocks for br in b.branches]
    if branches and not inplace:
        remove_branches(pruned, branches, inplace=True)
    if not inplace:
        _set_modes(dg, pruned)
        if cert is not None:
            attach(pruned, cert)
        return pruned
    sizes = {dg.groups[i].size for i, g in enumerate(dg.groups) if g.atom in atoms and len(atoms[g.atom]) < g.size}
    if branches:
        from .checks.layers import apply_inplace_depth

        depth_graph = remove_branches(pruned, branches)
        model = apply_inplace_depth(dg, pruned, depth_graph, list(blocks),
                                    edit=None if repair is None else repair.write_module)
        if cert is not None:
            attach(model, cert)
        return model
    from .checks.inplace import apply_inplace

    with phase("in-place trials"):
        model = apply_inplace(dg.model, dg, pruned, sizes, edit=None if repair is None else repair.write_module)
    if cert is not None:
        attach(model, cert)
    return model


def certificate(dg: DependencyGraph):
    """The permutation oracle's :class:`~fxprune.checks.Certificate` for ``dg``, computed once."""
    cert = dg._certificate
    if cert is None:
        cert = dg._certificate = certify(dg)
    return cert


def _set_modes(dg: DependencyGraph, pruned) -> None:
    """The original's training flags where the graph can train; eval-only where it cannot. Also
    the example the graph was captured with, for :func:`fxprune.save`."""
    lifted = set(dg.lifted)
    pruned.meta[keys.EXAMPLE] = (tuple(x for i, x in enumerate(dg.example_args) if i not in lifted),
                                      dict(dg.example_kwargs))
    if dg.train_refused:
        refuse_train(pruned, dg.train_refused)
        if dg.training_flags.get(""):
            warnings.warn(f"{dg.source_name} is in train mode, but its pruned graph is returned in eval mode and "
                          f"refuses train(): {dg.train_refused}", stacklevel=3)
    else:
        restore_flags(pruned, dg.training_flags)
