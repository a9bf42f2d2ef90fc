"""What in-place pruning may choose: the groups the model's own forward (and its saved config) can follow.

Note [Expressible pruning]
~~~~~~~~~~~~~~~~~~~~~~~~~~
The pruned graph runs any keep; the model's own eager forward does not: it
reshapes with a fixed ``head_dim``, scales by it, reads head counts from its
config. Which groups it can follow is found on the real model, not from a list
of families:

* **classes**: groups with the same role in every repeated block are
  equivalent: their members' parameter names with the layer index abstracted
  (``model.layers.*.mlp.up_proj.weight``), dims and layouts (the group itself
  written ``X``, other groups ``G``) and sizes agree. One trial speaks for a class.
* **trials**: one in-place transaction per class (Note [In place]), always
  undone: every group of the class loses a third (``uniform``); where that
  passes and the class spans layers, every other group loses a third and the
  rest nothing (``per layer``). The transaction updates the config and checks
  that a checkpoint loads the same function (Note [Config in the transaction]
  in ``fxprune/hf/inplace.py``), so a class is accepted only if it saves.
* **ties**: classes refused alone that play the same role (the same size and
  layout pattern, e.g. T5's query/key head dim and value head dim, in every
  attention) are tried together with equal counts; if that passes, their
  groups keep the same count (``tied``).
* A class accepted only uniformly keeps one count across its groups; with
  ``uniform=True`` every class does, and classes whose uniform trial needs
  per-layer widths in the config (no stock config describes them, BERT's heads)
  are left out, so that plain ``from_pretrained`` loads the result.

The trials run on the example inputs: each costs a graph rewrite, three
forward passes and a config solve (:attr:`Expressible.seconds`).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Optional

from tabulate import tabulate

from ..graph import DependencyGraph, Group

__all__ = ["Expressible", "GroupClass", "group_classes", "expressible"]

_INDEX = re.compile(r"(?<=\.)\d+(?=\.)")
_GROUP = re.compile(r"\bG\d+\b")
_PINNED = re.compile(r"\[\d+\]")


def _abstract(name: str) -> str:
    return _INDEX.sub("*", name)


def _layouts(dg: DependencyGraph, g: Group) -> list:
    """``(member dim, layout pattern)``: the group as ``X``, other groups as ``G``."""
    out = []
    for m in g.layouts:
        text = dg.format_layout(m.layout)
        out.append((m.dim, _GROUP.sub(lambda t: "X" if t.group(0) == g.name else "G", text)))
    return out


@dataclass(frozen=True)
class GroupClass:
    """Groups with the same role in every repeated block (Note [Expressible pruning]).

    Attributes:
        groups: the groups, in graph order.
        label: the first member with the layer index abstracted (``model.layers.*.mlp.up_proj.weight[0]``).
        role: size and layout patterns without names (classes of one role may be tied).
    """

    groups: tuple
    label: str
    role: tuple

    @property
    def size(self) -> int:
        return self.groups[0].size


def group_classes(dg: DependencyGraph) -> list:
    """The groups of ``dg`` by class, in graph order."""
    by_key: dict = {}
    for g in dg.groups:
        pats = _layouts(dg, g)
        key = (g.size, tuple(sorted({(_abstract(m.param), d, p) for m, (d, p) in zip(g.layouts, pats)})))
        by_key.setdefault(key, []).append(g)
    out = []
    for (size, _), groups in by_key.items():
        g = groups[0]
        role = (size, tuple(sorted(_PINNED.sub("G", p) for _, p in _layouts(dg, g))))
        out.append(GroupClass(tuple(groups), _label(g), role))
    return out


def _label(g: Group) -> str:
    """``model.layers.*.self_attn.{q_proj,k_proj,v_proj,o_proj}``: the modules of the members' producers."""
    mods = list(dict.fromkeys(_abstract(m.param).rpartition(".")[0] for m in (g.producers or g.layouts)))
    parts = [m.split(".") for m in mods]
    n = 0
    while all(len(p) > n + 1 for p in parts) and len({p[n] for p in parts}) == 1:
        n += 1
    head = ".".join(parts[0][:n])
    tails = list(dict.fromkeys(".".join(p[n:]) for p in parts))
    body = tails[0] if len(tails) == 1 else "{" + ",".join(tails[:4]) + (",..." if len(tails) > 4 else "") + "}"
    return f"{head}.{body}" if head else body


@dataclass
class ClassResult:
    """What the trials said about one class: ``status`` is "per layer", "uniform", "tied" or "left out"."""

    cls: GroupClass
    status: str
    reason: str = ""
    stock: Optional[bool] = None  # the uniform trial gave a stock config
    config: str = ""
    tie: int = -1  # index of the tie set
    align: int = 1  # kept counts must be multiples of this


@dataclass
class Expressible:
    """The classes in-place pruning may choose among, the ties between groups, and what was left out and why.

    Attributes:
        classes: one :class:`ClassResult` per class.
        uniform: whether every class keeps one count across its groups (and stock configs only).
        trials, seconds: how many in-place trials ran, and their wall time.
    """

    classes: list
    uniform: bool
    trials: int = 0
    seconds: float = 0.0
    ties_: list = field(default_factory=list)

    def allowed(self) -> set:
        """Indices of the groups selection may prune."""
        return {g.index for r in self.classes if r.status != "left out" for g in r.cls.groups}

    def ties(self) -> list:
        """Lists of groups that must keep the same count."""
        out = [list(r.cls.groups) for r in self.classes
               if r.status == "uniform" and r.tie < 0 and len(r.cls.groups) > 1]
        for members in self.ties_:
            out.append([g for r in members for g in r.cls.groups])
        return out

    def round_to(self) -> dict:
        """``{group: multiple}`` for the groups whose kept count must be a multiple (found by the trials)."""
        return {g: r.align for r in self.classes if r.status != "left out" and r.align > 1 for g in r.cls.groups}

    def left_out(self) -> dict:
        """``{group: why}`` for the groups in-place pruning does not touch."""
        return {g: r.reason for r in self.classes if r.status == "left out" for g in r.cls.groups}

    def report(self) -> str:
        rows = [[r.cls.label, len(r.cls.groups), r.cls.size, r.status + (f" #{r.tie}" if r.tie >= 0 else "")
                 + (f", x{r.align}" if r.align > 1 and r.status != "left out" else ""),
                 "-" if r.stock is None else "yes" if r.stock else "no", _clip(r.reason or r.config, 90)]
                for r in self.classes]
        head = (f"in-place pruning: {sum(r.status != 'left out' for r in self.classes)} of {len(self.classes)} "
                f"group classes expressible ({self.trials} trials, {self.seconds:.2f} s)")
        return head + "\n" + tabulate(rows, headers=["class (first member)", "groups", "size", "in place",
                                                     "stock config", "why / config"])

    def __str__(self) -> str:
        return self.report()


def _clip(s: str, n: int) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


# -- trials --------------------------------------------------------------------------------------------------

def _cut(g: Group, step: int = 1, fraction: float = 1 / 3) -> list:
    """The first coordinates, about ``1 - fraction`` of them: an odd multiple of ``step`` where one fits, so that
    a trial at ``step`` shows whether the forward needs a larger multiple (at least one removed, one kept)."""
    n = int((1 - fraction) * g.size) // step
    n = (n if n % 2 else n - 1) * step
    return list(range(n if 1 <= n < g.size else max(1, g.size - max(1, round(g.size * fraction)))))


def _steps(size: int) -> list:
    """Alignments to try: none, then 8 (or the largest power of two below it dividing the size): float32
    grouped GEMMs need rows of 16 bytes, configs refuse a hidden size no head count divides."""
    step = min(8, size & -size, size // 2)
    return [1, step] if step > 1 else [1]


class _Trials:
    def __init__(self, dg: DependencyGraph):
        self.dg, self.count, self.seconds = dg, 0, 0.0

    def run(self, keep: dict) -> tuple:
        """(problem or None, stock config?, config summary) of one in-place transaction, undone."""
        from ..api import apply
        from ..checks.inplace import default_steps, trial_inplace

        start = time.perf_counter()
        steps = default_steps(self.dg.model)
        try:
            problem = trial_inplace(self.dg.model, self.dg, apply(self.dg, keep, check=False), steps=steps)
        finally:
            self.count += 1
            self.seconds += time.perf_counter() - start
        result = getattr(steps[0], "result", None) if steps else None
        stock = None if result is None else result.uniform
        return problem, stock, steps[0].describe() if steps else ""


def _try_cuts(trials: _Trials, groups, uniform: bool) -> tuple:
    """(problem, stock, config, alignment) of the first cut that passes (and, with ``uniform``, is stock)."""
    first = None
    for step in _steps(groups[0].size):
        problem, stock, config = trials.run({g: _cut(g, step) for g in groups})
        if problem is None and (stock is not False or not uniform):
            return None, stock, config, step
        first = first or (problem, stock, config, step)
    return first


def _try_class(trials: _Trials, r: ClassResult, uniform: bool) -> None:
    groups = r.cls.groups
    problem, r.stock, r.config, r.align = _try_cuts(trials, groups, uniform)
    if problem:
        r.status, r.reason = "left out", problem
        return
    if uniform and r.stock is False:
        r.status, r.reason = "left out", f"no stock config describes it ({r.config})"
        return
    if uniform or len(groups) == 1:
        r.status = "uniform"
        return
    problem, _, _ = trials.run({g: _cut(g, r.align) for g in groups[::2]})
    r.status = "per layer" if problem is None else "uniform"
    r.reason = "" if problem is None else f"per-layer widths refused: {problem}"


def _try_ties(trials: _Trials, results: list, uniform: bool) -> list:
    """Tie refused classes of one role (same size and layout pattern) and try them together."""
    by_role: dict = {}
    for r in results:
        if r.status == "left out" and r.cls.size > 1:
            by_role.setdefault(r.cls.role, []).append(r)
    ties = []
    for members in by_role.values():
        if len(members) < 2:
            continue
        problem, stock, config, align = _try_cuts(trials, [g for r in members for g in r.cls.groups], uniform)
        if problem is None and not (uniform and stock is False):
            for r in members:
                r.status, r.reason, r.stock, r.config, r.tie, r.align = "tied", "", stock, config, len(ties), align
            ties.append(members)
    return ties


def _joint_keep(results: list, ties: list) -> dict:
    """Every accepted class at once, each unit with another cut (classes interact through the config:
    T5's head dim is stock only while its encoder and decoder keep one head count)."""
    keep, units = {}, [[r] for r in results if r.status in ("uniform", "per layer")] + ties
    for i, unit in enumerate(units):
        fraction = (1 / 3, 1 / 2)[i % 2]
        for r in unit:
            groups = r.cls.groups[::2] if r.status == "per layer" else r.cls.groups
            keep.update({g: _cut(g, r.align, fraction) for g in groups})
    return keep


def _try_joint(trials: _Trials, results: list, ties: list, uniform: bool) -> list:
    """Drop ties, then classes (last first), until every accepted class passes together."""
    if sum(r.status in ("uniform", "per layer") for r in results) + len(ties) < 2:
        return ties  # the class trial said it all
    while True:
        keep = _joint_keep(results, ties)
        if not keep:
            return ties
        problem, stock, _ = trials.run(keep)
        if problem is None and not (uniform and stock is False):
            return ties
        why = problem or "no stock config describes them together"
        if ties:
            for r in ties.pop():
                r.status, r.reason, r.tie = "left out", f"refused with the other accepted classes: {why}", -1
            continue
        last = [r for r in results if r.status in ("uniform", "per layer")][-1]
        last.status, last.reason = "left out", f"refused with the other accepted classes: {why}"


def expressible(dg: DependencyGraph, uniform: bool = False) -> Expressible:
    """Which groups of ``dg`` in-place pruning may choose (Note [Expressible pruning]); ``dg.model`` is
    left bit for bit as it was.

    Example::

        >>> import torch, fxprune
        >>> from fxprune.policy.expressible import expressible
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> ex = expressible(fxprune.analyze(net, (torch.randn(1, 4),)))
        >>> [r.status for r in ex.classes], ex.trials
        (['uniform'], 1)
    """
    trials = _Trials(dg)
    results = [ClassResult(c, "left out") for c in group_classes(dg)]
    for r in results:
        if r.cls.size < 2:
            r.reason = "a single coordinate"
            continue
        _try_class(trials, r, uniform)
    ties = _try_joint(trials, results, _try_ties(trials, results, uniform), uniform)
    return Expressible(results, uniform, trials.count, trials.seconds, ties)
