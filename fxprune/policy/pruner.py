"""``fxprune.prune``: score, select and remove channels in one call.

Note [Targets and schedules]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~
A step scores every group once, then turns one number into keep-indices: the
uniform ratio (``scope="local"``) or the share of all coordinates removed
(``scope="global"``). With ``target_macs``/``target_params`` that number is
found by bisection on the *real* pruned model (rewrite + one forward pass per
probe) until the count is within ``tolerance`` of the target.

``iterative_steps=N`` repeats analyse -> score -> prune N times on the
shrinking model, calling ``callback(step, model)`` after every step (fine-tune
there). ``schedule(k, N, final)`` gives the cumulative fraction removed after
step k: of each group for a ratio, of the MACs/params for a target. The ratio
of a step is taken relative to what is left, so the schedule is followed with
respect to the original model.

One step on an analysed model is :func:`prune_step` (score, select, search the
target, rewrite, certify); :func:`prune` is analyse + ``prune_step`` per step.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Union

import torch.fx as fx
import torch.nn as nn
from tqdm.auto import tqdm

from fxprune.passes import keys, runnable

from ..api import analyze, apply, name_list
from ..calib import REPAIRS, calibrate
from ..capture.modes import on_meta
from ..calib.pipeline import calibration_for, needs_calibration, repair_plan
from ..calib.allocation import coordinate_costs
from .objective import split_by_objective
from ..calib.sequential import sequential_repair
from ..errors import MetaDeviceError
from ..profile import attach_profile, phase, profiling
from .budget import measured_plan
from .counting import count_macs, count_params
from .depth import BLOCK_CRITERIA, check_depth, score_blocks, select_blocks
from .expressible import expressible
from .importance import Random, Taylor, get_importance
from .probe import TargetProbe
from .selection import group_ratios, select_global, select_local
from .stats import collect_stats
from ..speed.runtimes import RUNTIMES
from ..speed.search import check_speed, search_count, search_latency, snapper

__all__ = ["PruneConfig", "PruneStep", "prune", "prune_step", "score_groups", "plan", "SCHEDULES"]

_SNAP_TOLERANCE = 0.05  # the MACs/params tolerance when counts snap to fast widths

SCHEDULES: dict = {
    "linear": lambda k, n, final: final * k / n,
    "geometric": lambda k, n, final: 1.0 - (1.0 - final) ** (k / n),
}


@dataclass(frozen=True)
class PruneConfig:
    """Every choice of :func:`prune`.

    Args:
        ratio: fraction of each group's coordinates to remove (``scope="local"``), or of all
            coordinates together (``"global"``); in ``[0, 1)``. Ignored when a target is set.
        importance: a registered name (``fxprune.importance_names()``), a ``Criterion``, or a
            callable ``(dg, group, stats) -> scores``.
        scope: ``"local"`` (every group loses ``ratio``) or ``"global"`` (one ranking of all
            normalized scores).
        ratios: per-module overrides ``{module name: ratio}``; a group takes the override of the
            longest module name matching a parameter that produces it (a member dim that is not
            contracted against the group: a conv's out-channels, not its in-channels); a cap
            under ``"global"``.
        max_ratio: the largest fraction removed from any group.
        min_keep: the fewest coordinates a group keeps.
        round_to: kept counts are rounded up to a multiple of this (hardware friendliness).
        ignore: modules/parameters whose groups are never pruned (see ``fxprune.selection``).
        factors: ``"all"``, ``"outer"`` (heads) or ``"inner"`` (head dims), see Note [Product factors].
        target_macs, target_params: reach this count; ``<= 1`` is a fraction of the original.
        tolerance: relative tolerance of the target search.
        iterative_steps: prune in this many steps; ``schedule``: name in ``SCHEDULES`` or callable.
        leaf_modules: passed to :func:`fxprune.analyze`.
        repair: ``None``, ``"bias"`` or ``"lstsq"``: refit every consumer of removed channels on the
            calibration ``data`` (Note [Repair] in ``fxprune/calib/repair.py``); opt-in, reported in
            ``fxprune.repair_report(result)``.
        budget: what ``ratio`` counts under ``scope="global"``: ``"coordinates"``, ``"params"`` or
            ``"macs"``: the share of the parameters (MACs) of every tensor a candidate group prunes,
            measured on the pruned layouts, the same for every criterion (Note [Honoured budgets] in
            ``fxprune/policy/budget.py``); coordinates are ranked weighing what they remove (FLAP).
        uniform: with ``inplace=True``: every class of equivalent groups keeps one count across layers,
            and only what a stock config describes is pruned, so that plain ``from_pretrained`` loads the
            saved model (Note [Expressible pruning] in ``fxprune/policy/expressible.py``).
        depth_ratio: whole blocks removed as well (``fxprune/policy/depth.py``): a fraction of the removable
            blocks, a count, or block names (``fxprune.removable_blocks(dg)``); ``None``: none. Combine with
            ``ratio=0`` for depth pruning alone.
        block_importance: how blocks are ranked: ``"angular"`` (calibrated on ``data``, default the example
            inputs), ``"cosine"``, ``"loss"`` (needs ``data`` and ``loss_fn``), ``"last"`` or ``"random"``.
        sequential: with ``repair``: refit each consumer, in graph order, on the inputs the pruned and
            already repaired model feeds it, not on the dense model's (SparseGPT-style; Note [Sequential
            repair] in ``fxprune/calib/sequential.py``); two forward passes per repaired layer and batch.
        split: how a local ratio is shared between head groups and the other groups: ``"ratio"`` (each
            group loses ``ratio``), ``"objective"`` (the share of heads, head dims and MLP channels with
            the least calibration output error after ``repair``, the parameters removed matched; needs
            ``data``; Note [Width split by objective] in ``fxprune/policy/objective.py``), ``"auto"``:
            ``"objective"`` with ``uniform=True`` when ``data`` calibrates, else ``"ratio"``.
        target_latency: reach this latency on ``runtime``: a fraction of the dense latency, or a time
            (``"12ms"``); see Note [Latency targets] in ``fxprune/speed/search.py``.
        runtime: ``"eager"``, ``"inductor"`` or ``"onnxruntime"``: the deploy runtime whose measured
            latency table chooses widths (fast widths only, unless ``exact_widths``) and on which the
            result is timed beside dense (``result.fxprune_latency``); default None (no timing), or
            ``"eager"`` with ``target_latency``.
        threads: CPU threads of ``runtime`` (None: torch's current count).
        exact_widths: keep the exact counts the ratio/target gives instead of the fast widths.
        latency_tolerance: relative tolerance of ``target_latency`` on the measured latency.
    """

    ratio: float = 0.5
    importance: Union[str, Callable] = "l2"
    scope: str = "local"
    ratios: dict = field(default_factory=dict)
    max_ratio: float = 1.0
    min_keep: int = 1
    round_to: int = 1
    ignore: tuple = ()
    factors: str = "all"
    target_macs: Optional[float] = None
    target_params: Optional[float] = None
    tolerance: float = 0.01
    iterative_steps: int = 1
    schedule: Union[str, Callable] = "linear"
    leaf_modules: tuple = ()
    repair: Optional[str] = None
    budget: str = "coordinates"
    uniform: bool = False
    # -- depth (whole blocks) --
    depth_ratio: Union[None, float, int, tuple] = None
    block_importance: str = "angular"
    # sequential repair (Note [Sequential repair] in fxprune/calib/sequential.py); the width split of a local
    # ratio (Note [Width split by objective] in fxprune/policy/objective.py)
    sequential: bool = False
    split: str = "auto"
    # latency (fxprune/speed): Note [Latency targets]
    target_latency: Union[float, str, None] = None
    runtime: Optional[str] = None
    threads: Optional[int] = None
    exact_widths: bool = False
    latency_tolerance: float = 0.05

    def __post_init__(self):
        for name, r in [("ratio", self.ratio)] + [(f"ratios[{k!r}]", v) for k, v in self.ratios.items()]:
            if not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
                raise ValueError(f"{name} must be in [0, 1), the fraction of coordinates to remove; got {r!r}")
        _check(0.0 < self.max_ratio <= 1.0, f"max_ratio must be in (0, 1], got {self.max_ratio}")
        _check(self.scope in ("local", "global"), f"scope must be 'local' or 'global', got {self.scope!r}")
        _check(self.factors in ("all", "outer", "inner"), f"factors must be all/outer/inner, got {self.factors!r}")
        _check(self.min_keep >= 1 and self.round_to >= 1, "min_keep and round_to must be >= 1")
        _check(self.iterative_steps >= 1, f"iterative_steps must be >= 1, got {self.iterative_steps}")
        _check(callable(self.schedule) or self.schedule in SCHEDULES,
               f"schedule must be one of {sorted(SCHEDULES)} or a callable (k, n, final) -> cumulative")
        _check(self.target_macs is None or self.target_params is None, "set target_macs or target_params, not both")
        for t in (self.target_macs, self.target_params):
            _check(t is None or t > 0, f"targets must be positive, got {t}")
        _check(0.0 < self.tolerance < 0.5, f"tolerance must be in (0, 0.5), got {self.tolerance}")
        _check(self.repair is None or self.repair in REPAIRS, f"repair must be None or one of {REPAIRS}, "
               f"got {self.repair!r}")
        _check(self.budget in ("coordinates", "params", "macs"), "budget must be 'coordinates', 'params' or 'macs', "
               f"got {self.budget!r}")
        _check(not self.sequential or self.repair, "sequential=True refits layers one after the other: "
               "set repair='lstsq' (or 'bias') too")
        _check(self.split in ("auto", "ratio", "objective"), f"split must be auto/ratio/objective, got {self.split!r}")
        self._check_latency()
        object.__setattr__(self, "ignore", name_list(self.ignore, "ignore"))
        object.__setattr__(self, "leaf_modules", name_list(self.leaf_modules, "leaf_modules"))
        get_importance(self.importance)  # unknown names fail here, not after analysis
        object.__setattr__(self, "depth_ratio", check_depth(self.depth_ratio))
        _check(self.block_importance in BLOCK_CRITERIA, f"block_importance must be one of {sorted(BLOCK_CRITERIA)}, "
               f"got {self.block_importance!r}")
        _check(self.depth_ratio is None or self.iterative_steps == 1, "depth_ratio removes blocks in one step: "
               "use iterative_steps=1")


    def _check_latency(self) -> None:
        if self.target_latency is not None and self.runtime is None:
            object.__setattr__(self, "runtime", "eager")
        _check(self.runtime is None or self.runtime in RUNTIMES, f"runtime must be one of {RUNTIMES}, "
               f"got {self.runtime!r}")
        _check(self.target_latency is None or (self.target_macs is None and self.target_params is None),
               "set one target: target_latency, target_macs or target_params")
        _check(self.target_latency is None or self.iterative_steps == 1, "target_latency prunes in one step: "
               "use iterative_steps=1")
        _check(isinstance(self.target_latency, (str, type(None))) or 0 < self.target_latency < 1,
               f"target_latency is a fraction in (0, 1) of the dense latency or a time like '12ms', "
               f"got {self.target_latency!r}")
        _check(self.threads is None or self.threads >= 1, f"threads must be >= 1, got {self.threads}")
        _check(0.0 < self.latency_tolerance < 0.5, f"latency_tolerance must be in (0, 0.5), "
               f"got {self.latency_tolerance}")


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


def score_groups(dg, importance="l2", *, data: Optional[Iterable] = None, loss_fn=None, stats=None) -> dict:
    """``{group: scores}`` for every group of ``dg`` (None where the criterion has no opinion).

    Example::

        >>> import torch, fxprune
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> dg = fxprune.analyze(net, (torch.randn(1, 4),))
        >>> [s.shape for s in fxprune.score_groups(dg, "l1").values()]
        [torch.Size([8])]
    """
    crit = get_importance(importance)
    if getattr(crit, "needs_calibration", False) and stats is None:
        stats = calibrate(dg, data, gram=crit.needs_gram)
    elif crit.needs_data and stats is None:
        if data is None:
            raise ValueError(f"importance {importance!r} needs gradients: pass data=[(inputs, labels), ...] "
                             "(and loss_fn=lambda model, batch: loss if batches are not (x, y) for cross-entropy)")
        stats = collect_stats(runnable(dg.gm), data, loss_fn, fisher=getattr(crit, "needs_fisher", False),
                              per_batch=isinstance(crit, Taylor) and not crit.elementwise)
    return crit.score_all(dg, stats)


def plan(dg, scores: dict, cfg: PruneConfig, ratio: Optional[float] = None, only=None) -> dict:
    """Keep-indices ``{group: indices}`` for one ratio (``cfg.ratio`` by default); ``only``: an
    :class:`~fxprune.policy.expressible.Expressible` restricting the groups and tying their counts."""
    ratio = cfg.ratio if ratio is None else ratio
    allowed, ties, rounding = (None, (), None) if only is None else (only.allowed(), only.ties(), only.round_to())
    if cfg.scope == "global":
        ratios = group_ratios(dg, cfg, cfg.max_ratio, allowed)
        if cfg.budget == "coordinates":
            return select_global(scores, ratios, ratio, cfg, None, ties, rounding)
        costs = coordinate_costs(dg, ratios)
        return measured_plan(dg, lambda r: select_global(scores, ratios, r, cfg, costs, ties, rounding),
                             ratios, ratio, cfg.budget)
    return select_local(scores, group_ratios(dg, cfg, ratio, allowed), cfg, ties, rounding, dg)


def _counter(cfg: PruneConfig, inputs, kwargs: Optional[dict] = None) -> Optional[Callable]:
    if cfg.target_macs is not None:
        return _timed(lambda m: count_macs(m, inputs, kwargs))
    if cfg.target_params is not None:
        return _timed(count_params)
    return None


def _timed(count: Callable) -> Callable:
    def counted(m):
        with phase("counting"):
            return count(m)
    return counted


def _planned(dg, scores, cfg, ratio, only, snap) -> dict:
    keep = plan(dg, scores, cfg, ratio, only)
    return snap(keep, scores) if snap is not None else keep


def _search(dg, scores, cfg, counter, target: float, progress: bool = False, only=None, snap=None) -> dict:
    """Bisection on the ratio until ``counter(pruned)`` is within ``tolerance`` of ``target``; probes are
    counted on the meta device (Note [Meta probes] in ``fxprune/policy/probe.py``); ``snap`` moves each
    count to a fast width (Note [Latency table])."""
    probe = TargetProbe(dg, counter, cfg.target_macs is not None)
    if probe({}) <= target * (1 + cfg.tolerance):
        return {}
    lo, hi = 0.0, 1.0 - 1e-6
    floor = probe(_planned(dg, scores, cfg, hi, only, snap))
    if floor > target * (1 + cfg.tolerance):
        raise ValueError(f"target {target:.4g} is unreachable: pruning every prunable group as far as the "
                         f"limits allow (max_ratio, min_keep, round_to, ignore) leaves {floor}; "
                         "relax the limits or raise the target")
    closest = None
    with tqdm(total=40, desc="target search", unit="probe", leave=False, disable=not progress) as bar:
        for _ in range(40):
            mid = (lo + hi) / 2
            best = _planned(dg, scores, cfg, mid, only, snap)
            got = probe(best)
            bar.update(1)
            bar.set_postfix_str(f"ratio {mid:.3f}: {got:.4g} for {target:.4g}")
            if abs(got - target) <= cfg.tolerance * target:
                return best
            closest = min(closest or (got, mid, best), (got, mid, best), key=lambda t: abs(t[0] - target))
            lo, hi = (mid, hi) if got > target else (lo, mid)
            if snap is not None and hi - lo < 1e-3:
                break
    if snap is not None:  # fast widths are coarser than exact counts (Note [Latency table])
        if abs(closest[0] - target) > _SNAP_TOLERANCE * target:
            warnings.warn(f"target {target:.4g}: the closest count on fast widths is {closest[0]:.4g} "
                          f"({closest[0] / target - 1:+.1%}); pass exact_widths=True for exact counts", stacklevel=4)
        return closest[2]
    raise ValueError(f"target {target:.4g} is not reachable within {cfg.tolerance:.0%}: the closest count is "
                     f"{closest[0]} (ratio {closest[1]:.3f}); the groups are too coarse, try scope='global', "
                     "round_to=1 or a larger tolerance")


def _step_ratio(cfg: PruneConfig, k: int) -> Callable:
    sched = SCHEDULES.get(cfg.schedule, cfg.schedule) if isinstance(cfg.schedule, str) else cfg.schedule
    n = cfg.iterative_steps

    def rel(final: float) -> float:
        done, now = sched(k - 1, n, final), sched(k, n, final)
        return min(max(1.0 - (1.0 - now) / (1.0 - done), 0.0), 1.0 - 1e-6)
    return rel


def _step_config(cfg: PruneConfig, k: int, sched: Callable, original: Optional[int]) -> tuple:
    """(config for step k, its target count or None)."""
    if original is not None:
        final = 1.0 - _absolute(cfg.target_macs or cfg.target_params, original) / original
        return cfg, original * (1.0 - sched(k, cfg.iterative_steps, final))
    rel = _step_ratio(cfg, k)
    return dataclasses.replace(cfg, ratio=rel(cfg.ratio), ratios={m: rel(r) for m, r in cfg.ratios.items()},
                               max_ratio=max(rel(min(cfg.max_ratio, 1 - 1e-6)), 1e-6)), None


def _absolute(target: float, original: int) -> float:
    t = target * original if target <= 1.0 else target
    if t >= original:
        raise ValueError(f"target {target} is not below the model's current count {original}: nothing to prune")
    return t


@dataclass
class PruneStep:
    """What one :func:`prune_step` did.

    Attributes:
        model: the pruned ``fx.GraphModule``.
        keep: ``{group: kept indices}`` for the groups that lost coordinates.
        target: the absolute MACs/parameter count aimed at, or None for a ratio.
        certificate: the :class:`~fxprune.checks.Certificate` (None with ``check=False``).
        expressible: with ``inplace=True``, the :class:`~fxprune.policy.expressible.Expressible`: the groups
            the model's own forward can follow, and those left out and why.
        blocks: the names of the whole blocks removed (``depth_ratio``).
    """

    model: fx.GraphModule
    keep: dict
    target: Optional[float] = None
    certificate: Optional[object] = None
    expressible: Optional[object] = None
    blocks: tuple = ()


def prune_step(dg, config: Optional[PruneConfig] = None, *, target: Optional[float] = None, data=None, loss_fn=None,
               scores: Optional[dict] = None, check: bool = True, progress: bool = False, inplace: bool = False,
               **options) -> PruneStep:
    """One pruning step on an analysed model: score, select (search the target), rewrite, certify.

    Args:
        dg: a :class:`fxprune.DependencyGraph` from :func:`fxprune.analyze`.
        config: a :class:`PruneConfig`; keyword ``options`` override its fields.
            ``iterative_steps`` is ignored (use :func:`prune`).
        target: the absolute MACs/parameter count to reach; default: ``target_macs``/``target_params``
            of the config, relative to the analysed model.
        data, loss_fn: for data-driven criteria and repairs, see :func:`prune`.
        scores: ``{group: scores}`` computed already (skips scoring).
        inplace: resize (and repair) the analysed model itself (see :func:`fxprune.apply`).
        check: certify with the permutation oracle (see :func:`fxprune.apply`).
        progress: show a tqdm bar over the target search probes (stderr).
        inplace: resize ``dg.model`` itself, choosing only among the groups its own forward can follow
            (Note [Expressible pruning] in ``fxprune/policy/expressible.py``); ``.model`` is ``dg.model``.

    Returns:
        A :class:`PruneStep`.

    Example::

        >>> import torch, fxprune
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        >>> dg = fxprune.analyze(net, (torch.randn(1, 4),))
        >>> step = fxprune.prune_step(dg, ratio=0.25)
        >>> step.model.get_submodule("0").out_features, [len(k) for k in step.keep.values()]
        (12, [12])
        >>> step.certificate.passed
        True
    """
    cfg = dataclasses.replace(config, **options) if config is not None else PruneConfig(**options)
    crit = get_importance(cfg.importance)
    _refuse_meta(dg.model if isinstance(dg.model, nn.Module) else dg.gm, crit)
    with phase("calibration" if needs_calibration(crit, cfg.repair) else "scoring"):
        cal = calibration_for(dg, crit, cfg.repair, data, group_ratios(dg, cfg, cfg.max_ratio))
    if scores is None:
        with phase("scoring"):
            scores = score_groups(dg, crit, data=data, loss_fn=loss_fn,
                                  stats=cal if getattr(crit, "needs_calibration", False) else None)
    counter = _counter(cfg, dg.example_args, dg.example_kwargs)
    if counter is not None and target is None:
        source = dg.model if isinstance(dg.model, nn.Module) and not dg.lifted else runnable(dg.gm)
        target = _absolute(cfg.target_macs or cfg.target_params, counter(source))
    if cfg.uniform and not inplace:
        raise ValueError("uniform=True chooses widths a stock config describes, for in-place pruning: pass inplace=True")
    with phase("in-place trials" if inplace else "selection"):
        only = expressible(dg, cfg.uniform) if inplace else None
    with phase("selection"):
        keep, speed = _choose(dg, scores, cfg, counter, target, progress, only, cal, data)
        blocks = _depth(dg, cfg, data, loss_fn)
    if cfg.sequential and blocks:
        raise ValueError("sequential repair together with depth pruning is not supported yet: prune the blocks "
                         "first (depth_ratio, sequential=False), then prune widths with sequential=True")
    if cfg.sequential:  # refit on a certified pruned copy; in place, its edits go into the user's model
        model = apply(dg, keep, check=check and not inplace)
        with phase("repair"):
            fix = sequential_repair(dg, keep, model, data, cfg.repair, inplace_model=dg.model if inplace else None)
        if inplace:
            model = apply(dg, keep, check=check, inplace=True, repair=fix)
    else:
        with phase("repair" if cfg.repair else "selection"):
            fix = repair_plan(dg, keep, cal, cfg.repair, inplace)
        model = apply(dg, keep, check=check, inplace=inplace, repair=fix, blocks=blocks)
    if cfg.runtime is not None:
        model.__dict__[keys.LATENCY_ATTR] = check_speed(dg, model, cfg, *speed)
    if only is not None:
        model.__dict__[keys.EXPRESSIBLE_ATTR] = only
    return PruneStep(model, keep, target, getattr(model, keys.CERTIFICATE_ATTR, None), only,
                     tuple(b.name for b in blocks))


def _depth(dg, cfg: PruneConfig, data, loss_fn) -> list:
    """The blocks ``cfg.depth_ratio`` removes, ranked by ``cfg.block_importance``."""
    if cfg.depth_ratio is None:
        return []
    scores = None if isinstance(cfg.depth_ratio, tuple) else \
        score_blocks(dg, cfg.block_importance, data=data, loss_fn=loss_fn)
    return select_blocks(dg, cfg.depth_ratio, scores)


def _by_objective(dg, scores: dict, cfg: PruneConfig, cal, data, only) -> Optional[dict]:
    """The keep-indices of the least-objective width split, or None where the plain ratio applies."""
    if cfg.scope != "local" or cfg.split == "ratio" or (cfg.split == "auto" and not (cfg.uniform and data)):
        return None
    if data is None:
        raise ValueError("split='objective' measures the calibration output error: pass data=[batch, ...]")
    allowed, ties, rounding = (None, (), None) if only is None else (only.allowed(), only.ties(), only.round_to())
    ratios = group_ratios(dg, cfg, cfg.max_ratio, allowed)  # caps: the split chooses each group's ratio
    if cal is None or not cal.gram:
        cal = calibrate(dg, data, gram=True, groups=list(ratios))
    return split_by_objective(dg, scores, ratios, cfg.ratio, cfg, cal, ties, rounding, cfg.repair)


def _choose(dg, scores, cfg, counter, target, progress, only, cal=None, data=None) -> tuple:
    """``(keep, (latency report, latency table))``: the latency search; with a ``runtime``, a MACs/params
    target on the latency knapsack (Note [Counts on the latency knapsack] in ``fxprune/speed/search.py``)
    or a ratio whose counts snap to fast widths; else the plain plan (Note [Latency targets])."""
    if cfg.target_latency is not None:
        if only is not None and only.ties():
            raise ValueError("target_latency chooses one width per group: it cannot keep uniform=True's "
                             "tied widths; use target_macs with uniform=True")
        allowed = group_ratios(dg, cfg, cfg.max_ratio, None if only is None else only.allowed())
        keep, report = search_latency(dg, scores, cfg, allowed)
        return keep, (report, None)
    if counter is not None and cfg.runtime is not None and not cfg.exact_widths and only is None:
        allowed = group_ratios(dg, cfg, cfg.max_ratio)
        keep, table = search_count(dg, scores, cfg, allowed, counter, target)
        return keep, (None, table)
    snap, table = snapper(dg, cfg) if cfg.runtime is not None and not cfg.exact_widths else (None, None)
    if counter is not None:
        return _search(dg, scores, cfg, counter, target, progress, only, snap), (None, table)
    if snap is None:
        by_objective = _by_objective(dg, scores, cfg, cal, data, only)
        if by_objective:
            return by_objective, (None, table)
    return _planned(dg, scores, cfg, None, only, snap), (None, table)


def _refuse_meta(model: nn.Module, crit) -> None:
    if isinstance(crit, Random) or not on_meta(model):
        return
    raise MetaDeviceError(
        f"{type(model).__name__}'s parameters are on the meta device and carry no values, so the importance "
        f"criterion {type(crit).__name__} has nothing to score. fxprune.analyze works on meta models; to prune, "
        "materialize the weights first (model.to_empty(device='cpu') and load a state dict), or use "
        "importance='random' for a plan without scores")


def prune(model: nn.Module, example_inputs, config: Optional[PruneConfig] = None, *,
          example_kwargs: Optional[dict] = None, data=None, loss_fn=None, callback: Optional[Callable] = None,
          check: bool = True, progress: bool = False, inplace: bool = False, profile: bool = False,
          **options) -> fx.GraphModule:
    """Prune ``model`` structurally: score groups, pick channels, rewrite, certify. ``model`` is not modified,
    unless ``inplace=True``.

    Args:
        model: an ``nn.Module`` or ``fx.GraphModule`` (see :func:`fxprune.analyze`), in any mode.
        example_inputs: tuple of positional inputs (also used to count MACs and to certify).
        config: a :class:`PruneConfig`; keyword ``options`` override its fields.
        example_kwargs: keyword inputs, passed to the analysis, the MAC count and the check.
        data: batches for data-driven criteria and repairs, re-read at every step: ``(x, y)`` for
            gradient criteria (``taylor``, ``hessian``); model inputs for calibrated ones (``wanda``,
            ``fluctuation``, ``obs``) and ``repair`` (a tensor, a tuple of positional inputs or a
            dict of keyword inputs per batch; an ``(x, y)`` pair gives ``x``).
        loss_fn: ``(model, batch) -> loss``; default cross-entropy on ``(x, y)`` batches.
        callback: ``callback(step, model)`` after every step (1-based); may return a replacement model.
        inplace: resize (and repair) the user's own modules, as one transaction (see
            :func:`fxprune.apply`), and return ``model``; one step only.
        check: certify every step with the permutation oracle in float64 (Note [Certified by default]
            in ``fxprune/checks/certificate.py``); the result's ``.fxprune_certificate`` says what was
            checked. ``False`` skips it.
        progress: tqdm bars over the steps and the target search probes (stderr).
        inplace: resize ``model`` itself (its class kept, e.g. for HF ``save_pretrained``), choosing only
            among the groups its own forward, and for an HF model its saved config, can follow; the groups
            left out and why are in ``model.fxprune_expressible`` (Note [Expressible pruning] in
            ``fxprune/policy/expressible.py``). ``uniform=True`` keeps one width per class across layers
            and a stock config.
        profile: time the call by phase (capture, checked trace, analysis, scoring, selection, rewrite,
            certificate, in-place trials, counting; Note [Phase timer] in ``fxprune/profile.py``): the
            result carries the :class:`~fxprune.profile.Profile` as ``.fxprune_profile`` (and, for a
            GraphModule, ``.meta["fxprune.profile"]``).

    Returns:
        The pruned ``fx.GraphModule`` (``model`` itself with ``inplace=True``): it trains like
        ``model`` or refuses ``train()`` (Note [Training mode] in ``fxprune/capture/modes.py``).

    Raises:
        OracleMismatchError: the certificate failed (a rule misses a coupling; please report it).

    Example::

        >>> import torch, fxprune
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3))
        >>> x = (torch.randn(1, 3, 16, 16),)
        >>> small = fxprune.prune(net, x, ratio=0.5, importance="l1", round_to=4)
        >>> small.get_submodule("0").out_channels
        8
        >>> small.fxprune_certificate.passed
        True
        >>> half = fxprune.prune(net, x, target_macs=0.5, scope="global")
        >>> abs(fxprune.count_macs(half, x) / fxprune.count_macs(net, x) - 0.5) <= 0.01
        True
    """
    from ..checks.guard import explain_copy_failure

    with profiling(profile) as prof, explain_copy_failure(model):
        result = _prune(model, example_inputs, config, example_kwargs, data, loss_fn, callback, check, progress,
                        inplace, options)
    attach_profile(result, prof)
    return result


def _prune(model, example_inputs, config, example_kwargs, data, loss_fn, callback, check, progress, inplace,
           options) -> fx.GraphModule:
    from ..api import _as_inputs
    from ..checks.guard import own_inputs, refuse_unsupported, unwrap_compiled

    model = unwrap_compiled(model)  # Note [Models fxprune refuses] in fxprune/checks/guard.py
    refuse_unsupported(model)
    example_inputs, example_kwargs, _ = own_inputs(model, _as_inputs(example_inputs), example_kwargs)
    cfg = dataclasses.replace(config, **options) if config is not None else PruneConfig(**options)
    crit = get_importance(cfg.importance)
    if crit.needs_data and data is None:
        raise ValueError(f"importance {cfg.importance!r} needs gradients: pass data=[(inputs, labels), ...] "
                         "and, unless batches are (x, y) for cross-entropy, loss_fn=lambda model, batch: loss")
    if needs_calibration(crit, cfg.repair) and data is None:
        raise ValueError(f"importance {cfg.importance!r} / repair {cfg.repair!r} read activations: pass "
                         "data=[batch, ...] of model inputs (the calibration set)")
    if inplace and cfg.iterative_steps > 1:
        raise ValueError("inplace=True prunes in one step: use iterative_steps=1, or prune a copy iteratively")
    _refuse_meta(model, crit)
    counter = _counter(cfg, example_inputs, example_kwargs)
    original = counter(model) if counter else None
    sched = SCHEDULES.get(cfg.schedule, cfg.schedule) if isinstance(cfg.schedule, str) else cfg.schedule
    current = model
    n = cfg.iterative_steps
    for k in tqdm(range(1, n + 1), desc="pruning steps", unit="step", leave=False, disable=not progress or n == 1):
        step_cfg, target = _step_config(cfg, k, sched, original)
        dg = analyze(current, example_inputs, example_kwargs, leaf_modules=cfg.leaf_modules)
        step = prune_step(dg, step_cfg, target=target, data=data, loss_fn=loss_fn, check=check, progress=progress,
                          inplace=inplace)
        current = step.model
        if callback is not None:
            current = callback(k, current) or current
    return current
