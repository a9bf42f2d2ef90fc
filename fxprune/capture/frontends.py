"""Capture front-ends: an nn.Module or GraphModule becomes the GraphModule the passes analyse."""
from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import os
import re
import traceback
import warnings
from typing import Iterable, Optional, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from torch.utils._pytree import tree_flatten, tree_map

from fxprune.passes import keys
from fxprune.passes.rewrite import plant

from ..compare import plain_outputs, relative_error
from ..errors import CaptureError, ExampleInputError
from ..profile import phase
from .replay import replayed_leaves
from .modes import EXPORT_FROZEN, eval_copy, mode_difference, on_meta, reads_training, train_refusal

__all__ = ["capture", "Captured", "capture_exported"]

_TORCH_DIR = os.path.dirname(torch.__file__)


class Captured:
    """A captured graph, which front-end made it, and the inputs it takes."""

    def __init__(self, gm: fx.GraphModule, front_end: str, inputs: tuple, lifted: Sequence[int] = (),
                 train_refused: Optional[str] = None):
        self.gm, self.front_end, self.inputs, self.lifted = gm, front_end, inputs, tuple(lifted)
        self.train_refused = train_refused  # why the pruned graph cannot run in train mode (Note [Training mode])


class _Tracer(fx.Tracer):
    def __init__(self, leaves: Iterable = ()):
        super().__init__()
        self.leaf_names = {x for x in leaves if isinstance(x, str)}
        self.leaf_types = tuple(x for x in leaves if isinstance(x, type))
        self.path_stack: list = []

    def call_module(self, m, forward, args, kwargs):
        self.path_stack.append((self.path_of_module(m), type(m)))
        out = super().call_module(m, forward, args, kwargs)
        self.path_stack.pop()  # left in place when tracing fails: names the culprit
        return out

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaf_names or (self.leaf_types and isinstance(m, self.leaf_types)):
            return True
        return super().is_leaf_module(m, qualname)


def _user_frame(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_TORCH_DIR)]
    if not frames:
        return ""
    f = frames[-1]
    return f"\n  at {f.filename}:{f.lineno}, in {f.name}: `{(f.line or '').strip()}`"


def _trace(model: nn.Module, leaves: Iterable, watch: Optional[nn.Module] = None) -> fx.GraphModule:
    """``symbolic_trace`` with leaves; ``watch``: an eval copy whose reads of ``training`` during the
    trace (not while the GraphModule is built) are logged (see :func:`reads_training`)."""
    tracer = _Tracer(leaves)
    try:
        with reads_training(watch) if watch is not None else contextlib.nullcontext() as log:
            graph = tracer.trace(model)
        tracer.training_reads = log
    except Exception as e:
        path, kind = tracer.path_stack[-1] if tracer.path_stack else ("", type(model))
        where = f"module '{path}' ({getattr(kind, '__name__', kind)})" if path else f"{type(model).__name__}.forward"
        hint = f"leaf_modules=['{path}']" if path else "leaf_modules=[<the module's qualified name or type>]"
        raise CaptureError(
            f"torch.fx.symbolic_trace cannot capture {type(model).__name__}: {type(e).__name__}: {e}\n"
            f"  while tracing {where}{_user_frame(e)}\n"
            f"Fix: keep that module out of the graph with fxprune.analyze(model, inputs, {hint}) "
            "(its channels are then pinned), or rewrite the data-dependent Python in its forward."
        ) from e
    name = model.__class__.__name__
    gm = fx.GraphModule(tracer.root, graph, name)
    gm.meta[keys.TRAINING_READS] = getattr(tracer, "training_reads", None)
    return gm


def _source_name(node: fx.Node) -> str:
    source = getattr(node.meta.get("grapharg"), "source", None)
    if source is None:
        return ""
    try:
        name = source.name  # a method in older torch, a property in newer
        return name() if callable(name) else str(name)
    except Exception:
        return str(source)


def _is_param_input(node: fx.Node, example) -> bool:
    """Placeholders that are parameters/buffers (dynamo lifts them into inputs)."""
    if isinstance(example, nn.Parameter):
        return True
    # dynamo's GraphArg source while compiling; its placeholder names afterwards
    name = _source_name(node) or str(node.target)
    return any(k in name for k in ("_parameters", "_buffers", "parameters_", "buffers_"))


_SOURCE_STEP = re.compile(r"\._(modules|parameters|buffers)\[(['\"])(.*?)\2\]")
_STACK_STEP = re.compile(r"\[(['\"]?)([^\]'\"]*)\1\]")


def _original_fqn(node: fx.Node) -> Optional[str]:
    """``conv.weight`` for dynamo's source ``L['self']._modules['conv']._parameters['weight']``.

    Only a source that ends in a chain of ``_modules[...]`` steps and one ``_parameters``/
    ``_buffers`` step off the compiled root gets a name; anything else (a global module,
    a tensor attribute) is None and keeps a generated name.
    """
    src = _source_name(node)
    steps = list(_SOURCE_STEP.finditer(src))
    if not steps or steps[-1].end() != len(src) or steps[-1].group(1) == "modules":
        return None
    if any(a.end() != b.start() for a, b in zip(steps, steps[1:])) or any(m.group(1) != "modules" for m in steps[:-1]):
        return None
    return ".".join(m.group(3) for m in steps)


def _stack_path(path: str) -> str:
    """``L['self'].blocks[0].conv`` / ``L['self'].blocks.0.conv`` -> ``blocks.0.conv``."""
    path = _STACK_STEP.sub(lambda m: "." + m.group(2), path)
    for root in ("L.self", "self"):
        if path == root or path.startswith(root + "."):
            return path[len(root) + 1:]
    return path


def _owner_types(graph: fx.Graph) -> dict:
    """``{module path: module type}`` from dynamo's ``nn_module_stack`` metadata."""
    types = {}
    for node in graph.nodes:
        for path, cls in (node.meta.get("nn_module_stack") or {}).values():
            if isinstance(path, str) and isinstance(cls, type):
                p = _stack_path(path)
                types.setdefault(p, cls)
    return types


def _lifted_names(placeholders: list, lifted: list) -> list:
    """Attribute names for the lifted placeholders: the original qualified name where dynamo
    says it (so names match ``model.named_parameters()``), else ``_lifted_<k>_<placeholder>``."""
    fqns = [_original_fqn(placeholders[i]) for i in lifted]
    counts: dict = {}
    for f in fqns:
        counts[f] = counts.get(f, 0) + 1
    # a name that is also a prefix of another one cannot be both an attribute and a module
    prefixes = {f.rpartition(".")[0] for f in fqns if f}
    out = []
    for k, (i, f) in enumerate(zip(lifted, fqns)):
        ok = f and counts[f] == 1 and f not in prefixes and not f.startswith("_lifted_")
        out.append(f if ok else f"_lifted_{k}_{placeholders[i].name}")
    return out


def _copy_graph(gm: fx.GraphModule) -> fx.Graph:
    graph = fx.Graph(owning_module=gm)
    out = graph.graph_copy(gm.graph, {})
    graph.output(out)
    graph._codegen = gm.graph._codegen
    return graph


def _from_graph_module(gm: fx.GraphModule, inputs: tuple) -> Captured:
    graph = _copy_graph(gm)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    lifted = [i for i, (n, x) in enumerate(zip(placeholders, inputs)) if _is_param_input(n, x)]
    if not lifted:
        return Captured(fx.GraphModule(gm, graph, gm.__class__.__name__), "GraphModule", inputs)
    root = nn.Module()
    for name, sub in gm.named_children():
        root.add_module(name, sub)
    taken = set(root._modules) | {n for n, _ in gm.named_parameters(recurse=False)} | \
        {n for n, _ in gm.named_buffers(recurse=False)}
    for k, (name, i) in enumerate(zip(_lifted_names(placeholders, lifted), lifted)):
        node, t = placeholders[i], inputs[i]
        if name.partition(".")[0] in taken:  # never add attributes to the graph's own submodules
            name = f"_lifted_{k}_{node.name}"
        plant(root, name, t)
        with graph.inserting_before(node), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the owning module is built right after
            attr = graph.get_attr(name)
        node.replace_all_uses_with(attr)
        graph.erase_node(node)
    new = fx.GraphModule(root, graph, gm.__class__.__name__)
    # the owners' original classes, for ignore-by-type and type-aware criteria (see fxprune.backend)
    for path, cls in _owner_types(gm.graph).items():
        try:
            owner = new.get_submodule(path)
        except AttributeError:
            continue
        if owner is not new and type(owner) is nn.Module:
            owner.source_type = cls
    rest = tuple(x for i, x in enumerate(inputs) if i not in set(lifted))
    return Captured(new, "GraphModule (parameters lifted from inputs)", rest, lifted)


# Note [Dynamic dims]
# ~~~~~~~~~~~~~~~~~~
# Automatic dynamic shapes on every dim (Dim.AUTO) cost minutes on some models (an HF
# Swin classifier: 155 s against 2.6 s static), because export reasons symbolically about
# image sizes that window partitioning then divides and pads. Only the dims users vary
# are marked: dim 0 (batch) of every tensor input, and dim 1 (sequence) of inputs of rank
# 2 or 3 (token ids, masks, (B, N, C) tokens, audio). Export specializes a dim
# whose example size is 1, which would freeze the pruned graph to batch 1; so a batch of
# one (every input of rank >= 2 has size 1 at dim 0) is duplicated to 2 for the capture,
# likewise a single token. The analysis runs on that example too: a batch of one has no
# axis, so a size read that mixes batch and heads (DeBERTa's ``q.size(0) // heads``)
# would look static and the heads prunable. Which dims came out dynamic is read back from
# the exported program and stated in the report; if none did, the capture is static.
# A widened capture is then run on the caller's own example against the model (as a trace
# is, Note [Checked trace]): a forward that branches on the batch size (``if x.shape[0] ==
# 1``) was recorded on the other branch, and export can add a guard that refuses a batch of
# one; either way the capture falls back to a static one at the caller's sizes.

_CAPTURE_SIZE = 2  # what a size-1 batch or sequence dim becomes for the capture


def _marked_dims(t: torch.Tensor) -> tuple:
    """Batch, and the sequence of a tensor of rank 2 or 3 (tokens, features, audio); images
    and volumes (rank >= 4) keep their spatial sizes static."""
    return tuple(range(min(t.ndim, 2))) if t.ndim <= 3 else (0,)


def _token_like(t: torch.Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.ndim >= 2


def _inflate(args: tuple, kwargs: dict) -> tuple:
    """Duplicate a batch of one (and a single token) to ``_CAPTURE_SIZE`` for the capture."""
    leaves = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and t.ndim >= 2]
    tokens = [t for t in leaves if _token_like(t)]
    grow = {d for d, ts in ((0, leaves), (1, tokens)) if ts and all(t.shape[d] == 1 for t in ts)}
    if not grow:
        return args, kwargs

    def widen(t):
        if isinstance(t, torch.Tensor) and t.ndim >= 2:
            for d in sorted(grow):
                if d == 0 or _token_like(t):
                    t = torch.cat([t] * _CAPTURE_SIZE, d)
        return t

    return tree_map(widen, tuple(args)), tree_map(widen, dict(kwargs))


def _auto_dynamic(model: nn.Module, args: tuple, kwargs: dict):
    """Dim.AUTO on the batch and sequence dims only (Note [Dynamic dims])."""
    from torch.export import Dim

    bound = inspect.signature(model.forward).bind_partial(*args, **kwargs)
    spec = lambda t: {d: Dim.AUTO for d in _marked_dims(t)} if isinstance(t, torch.Tensor) else None  # noqa: E731
    return {k: tree_map(spec, v) for k, v in bound.arguments.items()}


def _dynamic_summary(ep) -> str:
    """``input_ids[0, 1], attention_mask[0, 1]``: the input dims the exported program keeps symbolic."""
    user, free = set(ep.graph_signature.user_inputs), set(ep.range_constraints)
    symbolic = lambda n: isinstance(n, torch.SymInt) and bool(n.node.expr.free_symbols & free)  # noqa: E731
    parts = []
    for node in ep.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder" and node.name in user and isinstance(val, torch.Tensor):
            dims = [d for d, n in enumerate(val.shape) if symbolic(n)]  # not specialized to a number
            if dims:
                parts.append(f"{node.name}[{', '.join(map(str, dims))}]")
    return ", ".join(parts)


def _without_cache(model: nn.Module, kwargs: dict) -> tuple:
    """HF models return a cache object export cannot flatten: capture with ``use_cache=False``
    where the forward takes it and the caller did not set it. Returns (module, note)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return model, ""
    if "use_cache" not in params or "use_cache" in kwargs:
        return model, ""
    bound = copy.copy(model)  # same parameters and submodules, so the same names
    bound.forward = functools.partial(type(model).forward, bound, use_cache=False)
    return bound, "use_cache=False: no cache output (pass use_cache= to choose)"


def _export_failure(e: Exception, kwargs: dict) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if kwargs.get("use_cache") and "cache" in str(e).lower():
        return (f"the model returns a cache object torch.export cannot flatten ({first[:120]}); "
                "Fix: pass use_cache=False in example_kwargs")
    return f"{type(e).__name__}: {first}"


def _export(model: nn.Module, args: tuple, kwargs: dict) -> Captured:
    """Non-strict torch.export, batch and sequence dims dynamic (Note [Dynamic dims]); static if that fails."""
    target, note = _without_cache(model, kwargs)
    big_args, big_kwargs = _inflate(args, kwargs)
    try:
        ep = torch.export.export(target, big_args, big_kwargs, strict=False,
                                 dynamic_shapes=_auto_dynamic(target, big_args, big_kwargs))
        if not _dynamic_summary(ep):  # nothing stayed dynamic: analyse at the caller's sizes
            raise ValueError("export specialized every marked dim")
        if big_args is not args or big_kwargs is not kwargs:  # widened: check the caller's example
            _refuse_other_function(target, ep, args, kwargs)
        how = f"torch.export (non-strict, dynamic shapes: {_dynamic_summary(ep)}; other dims static)"
    except Exception as e:
        try:
            ep = torch.export.export(target, args, kwargs, strict=False)
        except Exception as static_error:
            raise CaptureError(_export_failure(static_error, kwargs)) from static_error
        big_args, big_kwargs = args, kwargs
        why = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        how = ("torch.export (non-strict, static shapes: the pruned model keeps the example's sizes; "
               f"dynamic failed: {why})")
    if note:
        how = how[:-1] + f"; {note})"
    cap = _from_exported(ep, big_args, big_kwargs, how)
    cap.gm.meta[keys.CAPTURE_KWARGS] = {"use_cache": False} if note else {}
    return cap


def _refuse_other_function(model: nn.Module, ep, args: tuple, kwargs: dict) -> None:
    """A capture made on a widened example (Note [Dynamic dims]) must run the caller's own example
    and compute what the model computes there: a forward that branches on the batch size
    (``if x.shape[0] == 1``) is recorded on the other branch, and export may add a guard that
    refuses a batch of one. Raises ValueError (the caller then captures statically) if not."""
    problem = _trace_mismatch(model, _from_exported(ep, args, kwargs).gm, args, kwargs)
    if problem is not None:
        raise ValueError(f"the capture at batch {_CAPTURE_SIZE} does not reproduce the model on the example: {problem}")


def _from_exported(ep, args: tuple, kwargs: dict, how: str = "ExportedProgram") -> Captured:
    """The unlifted module of an ExportedProgram: parameters are attributes, inputs keep their pytree."""
    from torch.export._tree_utils import reorder_kwargs

    gm = ep.module()
    in_spec = gm.graph._codegen.pytree_info.in_spec
    flat = tree_flatten((tuple(args), reorder_kwargs(dict(kwargs), in_spec)))[0]
    return Captured(gm, how, tuple(flat))


def capture(model: nn.Module, example_inputs: tuple, leaf_modules: Iterable = (),
            example_kwargs: Optional[dict] = None) -> Captured:
    """Capture ``model`` as a GraphModule the analysis can annotate without touching ``model``.

    ``symbolic_trace`` first, checked against the model (Note [Checked trace]); where it
    fails, records a graph that does not reproduce the model, or keyword inputs are given,
    a non-strict ``torch.export``. Always of an eval-mode copy (Note [Training mode]).
    """
    if isinstance(model, fx.GraphModule):
        cap = _from_graph_module(eval_copy(model), tuple(example_inputs))
        cap.train_refused = train_refusal(model)
        return cap
    if isinstance(model, torch.export.ExportedProgram):
        cap = _from_exported(model, tuple(example_inputs), dict(example_kwargs or {}))
        cap.train_refused = EXPORT_FROZEN
        return cap
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module or fx.GraphModule, got {type(model).__name__}")
    inputs, first_error = tuple(example_inputs), None
    if not example_kwargs:
        try:
            return _checked_trace(model, inputs, leaf_modules)
        except CaptureError as trace_error:
            if leaf_modules and not isinstance(trace_error, _WrongTrace):
                raise
            first_error = trace_error
    return capture_exported(model, inputs, example_kwargs, first_error)


def capture_exported(model: nn.Module, inputs: tuple, kwargs: Optional[dict],
                     first_error: Optional[Exception] = None) -> Captured:
    """A non-strict ``torch.export`` of an eval-mode copy of ``model``; ``first_error`` says why
    ``symbolic_trace`` was not used (it is named in the front end, or in the error if export fails)."""
    try:
        cap = _export(eval_copy(model), inputs, dict(kwargs or {}))
    except Exception as e:
        _refuse_bad_inputs(model, inputs, dict(kwargs or {}))  # the model itself fails: say that instead
        trace_msg = f"{first_error}\n" if first_error else ""
        raise CaptureError(
            f"{trace_msg}torch.export (non-strict) cannot capture {type(model).__name__} either: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    if isinstance(first_error, _WrongTrace):
        cap.front_end += f" (symbolic_trace was not used: {first_error.short})"
    cap.train_refused = EXPORT_FROZEN
    return cap


# Note [Checked trace]
# ~~~~~~~~~~~~~~~~~~~~
# symbolic_trace runs the forward on Proxies, so Python that inspects its inputs can take
# another branch than the model does (``torch.jit.isinstance(x, torch.Tensor)`` is False for a
# Proxy) and record a graph of another function. One eager and one graph forward on the example
# (eval-mode copy, no grad, the same RNG seed) catch it: if the graph fails or its outputs differ,
# the capture falls back to torch.export. Meta-device models compare output shapes only.

class _WrongTrace(CaptureError):
    def __init__(self, msg: str, short: str):
        super().__init__(msg)
        self.short = short


def _checked_trace(model: nn.Module, inputs: tuple, leaves: Iterable) -> Captured:
    clone = eval_copy(model)
    gm = _trace(clone, leaves, watch=clone)
    with phase("checked trace"):
        problem = _trace_mismatch(clone, gm, inputs)
    if problem is not None:
        raise _WrongTrace(f"torch.fx.symbolic_trace recorded a graph that does not compute what "
                          f"{type(model).__name__} computes on the example inputs: {problem}", problem)
    reads = gm.meta.pop(keys.TRAINING_READS, None)
    retrace = lambda: _trace(eval_copy(model, training=True, own_buffers=True), leaves)  # noqa: E731
    refused = None if reads == [] else mode_difference(gm, retrace)
    return Captured(gm, "torch.fx.symbolic_trace", inputs, train_refused=refused)


def _run_seeded(fn, inputs: tuple, kwargs: Optional[dict] = None):
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        return fn(*inputs, **(kwargs or {}))


def _bad_inputs(model: nn.Module, inputs: tuple, kwargs: dict, e: Exception) -> ExampleInputError:
    what = _describe((*inputs, *kwargs.values()))
    return ExampleInputError(
        f"{type(model).__name__} does not run on the example inputs ({what}): {type(e).__name__}: "
        f"{str(e).splitlines()[0][:300] if str(e) else ''}\n"
        "Fix: pass inputs of the shapes and dtypes the model's forward expects")


def _refuse_bad_inputs(model: nn.Module, inputs: tuple, kwargs: dict) -> None:
    """Raise :class:`ExampleInputError` if the eager model fails on the example (not on meta)."""
    if on_meta(model, (inputs, kwargs)):
        return
    try:
        _run_seeded(eval_copy(model), inputs, kwargs)
    except Exception as e:
        raise _bad_inputs(model, inputs, kwargs, e) from e


def _trace_mismatch(model: nn.Module, gm: fx.GraphModule, inputs: tuple,
                    kwargs: Optional[dict] = None) -> Optional[str]:
    """Why ``gm`` does not reproduce ``model`` on ``inputs`` (None if it does). The graph run reuses the
    eager run's layers where it feeds them the same input (Note [Replayed leaves] in capture/replay.py)."""
    meta = on_meta(model, (inputs, kwargs))
    with replayed_leaves(model) as (record, replay):
        try:
            with record():
                ref = plain_outputs(_run_seeded(model, inputs, kwargs))
        except Exception as e:
            if meta:  # data-dependent Python cannot run on meta tensors: the analysis decides
                return None
            raise _bad_inputs(model, inputs, dict(kwargs or {}), e) from e
        try:
            with replay() as calls:
                calls.forget_aliases_of(_tensors(ref))
                out = plain_outputs(_run_seeded(gm, inputs, kwargs))
        except Exception as e:
            why = str(e).splitlines()[0][:200] if str(e) else ""
            return f"the traced graph fails on them ({type(e).__name__}: {why})"
    if meta:
        same = _shapes(ref) == _shapes(out)
        return None if same else f"output shapes {_shapes(out)} instead of {_shapes(ref)}"
    err = relative_error(ref, out)
    tol = 1e-2 if any(t.dtype in (torch.float16, torch.bfloat16) for t in _tensors(ref)) else 1e-5
    return None if err <= tol else f"outputs differ (max relative error {err:.2e})"


def _tensors(out) -> list:
    return [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def _shapes(out):
    return tree_flatten(tree_map(lambda t: tuple(t.shape) if isinstance(t, torch.Tensor) else t, out))[0]


def _describe(inputs: tuple) -> str:
    return ", ".join(f"{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}" if isinstance(x, torch.Tensor)
                     else type(x).__name__ for x in inputs) or "no inputs"
