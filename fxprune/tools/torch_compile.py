"""``fxprune.backend``: structural pruning as a ``torch.compile`` backend.

    >>> import torch, fxprune
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    >>> be = fxprune.backend(ratio=0.5, then="eager")
    >>> out = torch.compile(net, backend=be)(torch.randn(3, 4))
    >>> be.pruned_gm.get_parameter("0.weight").shape
    torch.Size([4, 4])

Note [Pruning inside torch.compile]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
Dynamo hands a backend a functional graph whose parameters and buffers are
placeholders (fed the model's own tensors). ``fxprune.analyze`` lifts them
into attributes named after their original qualified names (``conv.weight``),
so the groups, the scores, ``ignore``/``ratios`` by module name and the
selection are those :func:`fxprune.prune` computes on the eager model with
the same :class:`PruneConfig`. The rewrite then freezes *pruned copies* into
the graph (the model is not modified, and later edits of its parameters are
not seen by the compiled function), and the next backend compiles the pruned
graph on the remaining inputs. The returned function takes dynamo's full
argument list and drops the parameter positions.

One backend instance prunes one graph:

* **Graph breaks** split a model into several graphs whose channel groups span
  the pieces (the boundary pins them), so pruning each piece alone is neither
  what ``fxprune.prune`` does nor consistent. The backend refuses a graph that
  ends in a graph break (:class:`GraphBreakError`, naming the break), and any
  second graph with other parameters (:class:`DifferentGraphError`).
* **Recompilation** of the same graph (a new batch size, dynamic shapes, a
  guard failure) does not re-score: the first decision is cached per group,
  keyed by the identity of the parameter tensors (and dims) the group spans,
  and replayed on the new graph.

**Training** through the compiled function would update nothing: the graph
computes with pruned *copies* frozen into it, and the model's parameters (what
an optimizer holds) are not in it any more. So when gradients are enabled and
the model's parameters require them, the outputs carry a backward step that
raises :class:`fxprune.TrainModeError` (prune ahead of time and train the
returned model instead). Inference, with or without ``torch.no_grad()``, and
input gradients through a model whose parameters are frozen
(``requires_grad_(False)``) are unaffected.

The backend does not certify its graph (no float64 forward passes inside a
compile); its decisions are those of :func:`fxprune.prune`, which does, and
:func:`fxprune.verify` checks the model itself.

What needs more than the graph is refused with :class:`UnsupportedOptionError`
(prune ahead of time with ``fxprune.prune`` instead): data-driven importance
(``taylor``, ``hessian``: the backend sees no data), ``target_macs`` /
``target_params`` (a search over real forward passes of the whole model),
``iterative_steps > 1`` (fine-tuning between steps), ``leaf_modules`` (dynamo
inlines every module).
"""
from __future__ import annotations

import dataclasses
import time
import weakref
from operator import attrgetter
from typing import Callable, Optional, Union

import torch
import torch.fx as fx
import torch.nn as nn

from ..api import analyze, apply
from ..errors import FxPruneError
from ..policy.importance import BNScale, get_importance
from ..policy.pruner import PruneConfig, plan, score_groups
from .compiled_call import AHEAD as _AHEAD
from .compiled_call import DifferentGraphError, drop_positions

__all__ = ["backend", "PruningBackend", "GraphBreakError", "DifferentGraphError", "UnsupportedOptionError",
           "RecompileMismatchError"]

class UnsupportedOptionError(FxPruneError, ValueError):
    """A pruning option that needs more than the dynamo graph (data, forward passes, callbacks)."""


class GraphBreakError(FxPruneError):
    """Dynamo split the model at a graph break: the pieces cannot be pruned consistently."""


class RecompileMismatchError(FxPruneError):
    """A recompiled graph's groups do not match the decision taken on the first compile."""


def backend(config: Optional[PruneConfig] = None, *, then: Union[str, Callable] = "inductor",
            **options) -> "PruningBackend":
    """A ``torch.compile`` backend that prunes the graph, then compiles it with ``then``.

    Args:
        config: a :class:`fxprune.PruneConfig`; keyword ``options`` override its fields
            (the same as :func:`fxprune.prune`).
        then: the backend that compiles the pruned graph: a name registered with dynamo
            (``"inductor"``, ``"eager"``, ``"aot_eager"``, ...) or a callable
            ``(gm, example_inputs) -> callable``.

    Returns:
        A :class:`PruningBackend`: pass it as ``torch.compile(model, backend=...)``. One
        instance per model; ``.pruned_gm`` is the last pruned graph and ``.timings`` the
        time spent pruning and compiling each graph.

    Raises:
        UnsupportedOptionError: for options that need data, forward passes of the whole
            model or callbacks (data-driven importance, MAC/parameter targets, iterative steps,
            leaf_modules); prune ahead of time with :func:`fxprune.prune` for those.
    """
    cfg = dataclasses.replace(config, **options) if config is not None else PruneConfig(**options)
    return PruningBackend(cfg, then)


def _check_supported(cfg: PruneConfig) -> None:
    crit = get_importance(cfg.importance)
    if crit.needs_data:
        raise UnsupportedOptionError(
            f"importance {cfg.importance!r} needs gradients on data, which a torch.compile backend never "
            f"sees; use a data-free criterion (l1, l2, bn_scale, fpgm, lamp, random) or {_AHEAD}")
    if cfg.target_macs is not None or cfg.target_params is not None:
        raise UnsupportedOptionError(
            "target_macs/target_params are reached by a search over forward passes of the whole pruned "
            f"model, which a backend (possibly given one piece of it) cannot run; use ratio=... or {_AHEAD}")
    if cfg.iterative_steps != 1:
        raise UnsupportedOptionError(
            f"iterative_steps={cfg.iterative_steps} prunes in steps with fine-tuning (callback) in between, "
            f"which cannot happen inside a compile; {_AHEAD}")
    if cfg.leaf_modules:
        raise UnsupportedOptionError(
            "leaf_modules does not apply to torch.compile graphs: dynamo inlines every module; "
            f"{_AHEAD} (with leaf_modules=...)")


def _next_backend(then: Union[str, Callable]) -> Callable:
    if callable(then):
        return then
    from torch._dynamo import lookup_backend

    return lookup_backend(then)


def _where(frame) -> str:
    return f"{frame.filename}:{frame.lineno}, in {frame.name}: `{(frame.line or '').strip()}`"


def _refuse_graph_break(gm: fx.GraphModule) -> None:
    reason = getattr(gm, "compile_subgraph_reason", None)
    if reason is None or not getattr(reason, "graph_break", False):
        return
    stack = list(getattr(reason, "user_stack", None) or [])
    where = f"\n  at {_where(stack[-1])}" if stack else ""
    raise GraphBreakError(
        f"torch.compile split the model at a graph break ({reason.reason}){where}\n"
        "fxprune.backend prunes one whole graph: channel groups run across the pieces of a broken "
        "graph, and pruning each piece alone would differ from fxprune.prune (and from itself when a "
        "break moves). Fix: remove the break (list them with torch._dynamo.explain(model)(*inputs); "
        "torch.compile(..., fullgraph=True) makes the first one an error), or " + _AHEAD)




class _LiftedBNScale(BNScale):
    """``bn_scale`` on a lifted graph: the owner's class is the one dynamo recorded."""

    def counts(self, dg, target):
        prefix, _, leaf = target.rpartition(".")
        if leaf != "weight":
            return False
        try:
            owner = dg.gm.get_submodule(prefix)
        except AttributeError:
            return False
        cls = getattr(owner, "source_type", type(owner))
        return issubclass(cls, nn.modules.batchnorm._NormBase) or issubclass(cls, (nn.GroupNorm, nn.LayerNorm))


def _criterion(cfg: PruneConfig):
    crit = get_importance(cfg.importance)
    if type(crit) is BNScale:
        return _LiftedBNScale(**{f.name: getattr(crit, f.name) for f in dataclasses.fields(crit)})
    return crit


def _owner_class(dg, target: str):
    prefix = target.rpartition(".")[0]
    try:
        owner = dg.gm.get_submodule(prefix)
    except AttributeError:
        return None, None
    return owner, getattr(owner, "source_type", type(owner))


def _resolve_ignore(dg, cfg: PruneConfig) -> PruneConfig:
    """Module types and instances in ``ignore`` -> the names of their parameters in the lifted graph.

    Names, globs and ``nn.Parameter`` entries match as they do on the eager model.
    """
    if not any(isinstance(e, nn.Module) or (isinstance(e, type) and issubclass(e, nn.Module))
               for e in cfg.ignore):
        return cfg
    targets = list(dg.param_names)
    out = []
    for entry in cfg.ignore:
        if isinstance(entry, type) and issubclass(entry, nn.Module):
            names = [t for t in targets if (c := _owner_class(dg, t)[1]) is not None and issubclass(c, entry)]
        elif isinstance(entry, nn.Module):
            own = {id(t) for t in entry.parameters(recurse=False)} | {id(t) for t in entry.buffers(recurse=False)}
            names = [t for t in targets if id(attrgetter(t)(dg.gm)) in own]
        else:
            out.append(entry)
            continue
        if not names:
            raise ValueError(f"ignore entry {entry!r} matches no parameter of the compiled graph; use a name "
                             "from model.named_modules()/named_parameters(), a module type, or a module or "
                             "parameter of this model")
        out.extend(names)
    return dataclasses.replace(cfg, ignore=tuple(out))


class PruningBackend:
    """The backend :func:`backend` returns. Attributes for inspection:

    Attributes:
        config: the :class:`PruneConfig`.
        pruned_gm: the last pruned ``fx.GraphModule`` handed to the next backend.
        timings: one dict per compiled graph: ``prune_s`` (analysis, scoring, selection,
            rewrite), ``compile_s`` (the next backend), ``replayed`` (a recompile that reused
            the first decision), ``groups`` and ``pruned_groups``.
    """

    def __init__(self, config: PruneConfig, then: Union[str, Callable] = "inductor"):
        _check_supported(config)
        self.config, self.then = config, then
        self._next = _next_backend(then)
        self.pruned_gm: Optional[fx.GraphModule] = None
        self.timings: list = []
        self._params: Optional[dict] = None  # id -> (weakref, name) of the first graph's parameters
        self._decision: Optional[list] = None  # [(member keys, size, keep or None)]
        self._frozen: dict = {}  # id(original tensor) -> its pruned copy from the first compile

    def __repr__(self) -> str:
        return f"fxprune.backend({self.config}, then={self.then!r})"

    # -- identity of parameters ---------------------------------------------------------
    def _param_ids(self, dg) -> dict:
        out = {}
        for name, t in dg.gm.named_parameters(remove_duplicate=False):
            out[id(t)] = (t, name)
        return out

    def _check_same_graph(self, current: dict) -> None:
        alive = {i for i, (ref, _) in self._params.items() if ref() is not None}
        if set(current) == alive:
            return
        extra = sorted(name for i, (_, name) in current.items() if i not in alive)
        missing = sorted(self._params[i][1] for i in alive - set(current))
        raise DifferentGraphError(
            "this fxprune.backend instance already pruned a graph, and torch.compile handed it another one "
            f"with other parameters (new: {extra[:4]}{' ...' if len(extra) > 4 else ''}; not in it: "
            f"{missing[:4]}{' ...' if len(missing) > 4 else ''}). Pruning a second piece of the model on its "
            "own would make the pieces disagree with each other and with fxprune.prune. A graph break splits "
            "the model this way (torch._dynamo.explain(model)(*inputs) lists them); one backend instance is "
            "also needed per model. Fix: remove the break, create a new fxprune.backend(...) per model, or "
            + _AHEAD)

    @staticmethod
    def _member_keys(dg, group) -> frozenset:
        """``(id(tensor), dim, where the group sits in that dim's layout)`` for every member: a dim
        may carry several groups (a product ``heads x head_dim``, a concatenation)."""
        return frozenset((id(attrgetter(m.param)(dg.gm)), m.dim, m.layout.positions(group.atom))
                         for m in group.layouts)

    # -- decisions ------------------------------------------------------------------------
    def _decide(self, dg) -> dict:
        cfg = _resolve_ignore(dg, self.config)
        scores = score_groups(dg, _criterion(cfg))
        keep = plan(dg, scores, cfg)
        self._decision = [(self._member_keys(dg, g), g.size, keep.get(g)) for g in dg.groups]
        return keep

    def _replay(self, dg) -> dict:
        keep = {}
        for g in dg.groups:
            keys = self._member_keys(dg, g)
            hits = [(size, idx) for k, size, idx in self._decision if k & keys]
            if not hits:
                raise RecompileMismatchError(
                    f"the recompiled graph has a group {g!r} that the first compile did not have; the channel "
                    f"structure changed between compiles (a different code path?), so the first decision "
                    f"cannot be replayed; {_AHEAD}")
            if len(hits) > 1 or hits[0][0] != g.size:
                raise RecompileMismatchError(
                    f"the recompiled graph groups {g!r} differently from the first compile ({len(hits)} groups "
                    f"of sizes {[s for s, _ in hits]}); the first decision cannot be replayed; {_AHEAD}")
            if hits[0][1] is not None:
                keep[g] = hits[0][1]
        return keep

    def _snapshot(self, dg, pruned: fx.GraphModule, replayed: bool) -> None:
        """The compiled function is a snapshot of the parameters at the first compile: a
        recompile reuses those pruned tensors (not the model's current values)."""
        tensors = [*pruned.named_parameters(remove_duplicate=False), *pruned.named_buffers(remove_duplicate=False)]
        if not replayed:
            self._frozen = {}
            for name, t in tensors:  # the rewrite gives every tensor its own storage
                self._frozen[id(attrgetter(name)(dg.gm))] = t
            return
        for name, t in tensors:
            old = self._frozen.get(id(attrgetter(name)(dg.gm)))
            if old is None:
                raise RecompileMismatchError(f"the recompiled graph reads {name}, which the first compile did not; "
                                             f"the code path changed between compiles; {_AHEAD}")
            if old.shape != t.shape or old.dtype != t.dtype:
                raise RecompileMismatchError(
                    f"the recompiled graph prunes {name} to {tuple(t.shape)}, the first compile to "
                    f"{tuple(old.shape)}; {_AHEAD}")
            _set_tensor(pruned, name, old)

    # -- the backend ----------------------------------------------------------------------
    def __call__(self, gm: fx.GraphModule, example_inputs):
        _refuse_graph_break(gm)
        start = time.perf_counter()
        example_inputs = list(example_inputs)
        dg = analyze(gm, [_concrete(x) for x in example_inputs])
        current = self._param_ids(dg)
        replayed = self._params is not None
        if replayed:
            self._check_same_graph(current)
            keep = self._replay(dg)
        else:
            self._params = {i: (weakref.ref(t), name) for i, (t, name) in current.items()}
            keep = self._decide(dg)
        pruned = apply(dg, keep, check=False)  # no certificate inside a compile: see the module docstring
        self._snapshot(dg, pruned, replayed)
        _freeze(pruned)
        prune_s = time.perf_counter() - start
        lifted = frozenset(dg.lifted)
        rest = [x for i, x in enumerate(example_inputs) if i not in lifted]
        start = time.perf_counter()
        compiled = self._next(pruned, rest)
        compile_s = time.perf_counter() - start
        self.pruned_gm = pruned
        self.timings.append({"prune_s": prune_s, "compile_s": compile_s, "replayed": replayed,
                             "groups": len(dg.groups), "pruned_groups": len(keep)})
        return drop_positions(compiled, {i: weakref.ref(example_inputs[i]) for i in lifted})


def _set_tensor(gm: fx.GraphModule, name: str, t: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    mod = gm.get_submodule(owner)
    (mod._parameters if leaf in mod._parameters else mod._buffers)[leaf] = t


def _concrete(x):
    """A SymInt input (dynamo's automatic dynamic shapes) as its example value, for the analysis."""
    if isinstance(x, torch.SymInt):
        hint = getattr(x.node, "hint", None)
        if hint is None:
            hint = x.node.shape_env.size_hint(x.node.expr)
        return int(hint)
    return x


def _freeze(gm: fx.GraphModule) -> None:
    """The pruned parameters are constants of the compiled function: no gradients flow to them
    (they are copies; the model's own parameters are not in the graph any more)."""
    for p in gm.parameters():
        p.requires_grad_(False)
    for node in gm.graph.nodes:  # shapes changed: dynamo's stale example values must not mislead passes
        for key in ("example_value", "val", "tensor_meta"):
            node.meta.pop(key, None)
