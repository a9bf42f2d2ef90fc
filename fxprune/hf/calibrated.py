"""Calibrated criteria and repairs on a checkpoint, block by block (fxprune.calib fed by the block runner).

Note [Streamed calibration]
~~~~~~~~~~~~~~~~~~~~~~~~~~~
The statistics are :mod:`fxprune.calib`'s (``ConsumerStats`` per consumer site,
a ``Calibration`` the criteria and ``plan_repair`` read); what changes is where
the activations come from. Sites are the modules that contract a candidate
group (``nn.Linear`` columns, HF ``Conv1D`` rows, un-grouped convolutions: the
table :data:`MODULE_SITES`), observed by forward pre-hooks while the
:class:`~fxprune.hf.blockwise.BlockRunner` pushes the batches through one
block at a time. After block ``i``:

1. groups whose consumers have all been observed get their scores (the
   criterion reads the consumers' weights from the checkpoint, through
   ``Calibration.weight``), and with ``scope="local"`` their decision;
2. block ``i``'s tensors go through the streamed rewrite (magnitude scores,
   if that is the criterion, are added there);
3. the repairs of block ``i``'s sites whose groups are decided are computed
   (``plan_repair`` on the sites of the block) and written in place of their
   tensors; a bias a repair adds is a new tensor ``<module>.bias``; their Gram
   matrices are dropped.

So memory holds one block's weights and statistics, not the model's. With
``scope="global"`` decisions (and repairs) wait for the last block, and the
Gram matrices of every repaired site stay until then.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn as nn

from ..calib.pipeline import needs_calibration
from .blockwise import BlockRunner
from .engine import Engine, TensorScores
from .plan import CheckpointPlan

__all__ = ["MODULE_SITES", "consumer_sites", "run_calibrated", "needs_calibration"]

# module type name (along the MRO) -> (kind, contracted weight dim, output weight dim), as fxprune.calib's
# site kinds; a module's forward is y = f(W, x) + b with x its first positional input
MODULE_SITES = {
    "Linear": ("linear", 1, 0),
    "Conv1d": ("conv", 1, 0), "Conv2d": ("conv", 1, 0), "Conv3d": ("conv", 1, 0),
    "Conv1D": ("matmul", 0, 1),  # transformers.pytorch_utils.Conv1D: x @ W + b, W is (in, out)
}


def _kind(mod: nn.Module) -> Optional[tuple]:
    if getattr(mod, "groups", 1) != 1 or getattr(mod, "transposed", False):
        return None
    for base in type(mod).__mro__:
        if base.__name__ in MODULE_SITES:
            return MODULE_SITES[base.__name__]
    return None


def consumer_sites(plan: CheckpointPlan, groups) -> dict:
    """``{module path: Site}`` for the modules whose weight contracts a member dim of ``groups``."""
    from ..calib.sites import Site

    members = {(m.param, m.dim) for g in groups for m in g.consumers}
    out = {}
    for path, mod in plan.model.named_modules():
        kind = _kind(mod)
        w = f"{path}.weight"
        if kind is None or (w, kind[1]) not in members:
            continue
        bias = f"{path}.bias" if getattr(mod, "bias", None) is not None else None
        out[path] = Site(("", path), kind[0], w, kind[1], kind[2], 0, bias)
    return out


class _Weights:
    """Checkpoint tensors by analysis name, kept until :meth:`clear` (one block's consumers)."""

    def __init__(self, plan: CheckpointPlan, engine: Engine):
        self.plan, self.engine, self.cache = plan, engine, {}

    def __call__(self, name: str) -> torch.Tensor:
        stored = self.plan.aliases.get(name, name)
        if stored not in self.cache:
            held = self.engine.held.get(stored)
            self.cache[stored] = held if held is not None else self.engine.read(stored)
        return self.cache[stored]

    def clear(self) -> None:
        self.cache.clear()


def _calibration(plan: CheckpointPlan, sites: dict, gram: bool, weights: _Weights):
    from ..calib.collect import Calibration, ConsumerStats
    from ..calib.sites import param_uses
    from fxprune.passes import runnable

    class Streamed(Calibration):
        def weight(self, site):  # the original weight, from the checkpoint (the analysis is on meta)
            return weights(site.weight)

    by_key = {s.key: s for s in sites.values()}
    return Streamed(plan.dg, by_key, {k: ConsumerStats() for k in by_key}, param_uses(runnable(plan.dg.gm)), gram)


@contextlib.contextmanager
def _on_graph(plan: CheckpointPlan, names: list, weights: _Weights):
    """``names`` (biases ``plan_repair`` reads from ``dg.gm``) materialised there for the call, then meta again."""
    from accelerate.utils import set_module_tensor_to_device

    gm = plan.dg.gm
    names = [n for n in names if n and n in dict(gm.named_parameters())]
    for n in names:
        set_module_tensor_to_device(gm, n, "cpu", value=weights(n))
    try:
        yield
    finally:
        for n in names:
            set_module_tensor_to_device(gm, n, "meta")


class _Driver:
    """The order of Note [Streamed calibration]: calibrate, score, rewrite and repair block by block."""

    def __init__(self, plan, crit, engine: Engine, sites: dict, repair, damping, gram: bool):
        self.plan, self.crit, self.eng, self.repair, self.damping = plan, crit, engine, repair, damping
        self.weights = _Weights(plan, engine)
        self.cal = _calibration(plan, sites, gram, self.weights)
        self.calibrated_scores = getattr(crit, "needs_calibration", False)
        self.block_of = {k: plan.block_of(s.weight) for k, s in self.cal.sites.items()}
        self.waiting = {g: {self.block_of[s.key] for s, _ in self._consumers(g)} for g in engine.ratios}
        self.pending = set(self.cal.sites) if repair else set()
        self.report = None
        for k in self.pending:
            self.eng.gated.update(self._names(self.cal.sites[k]))

    def _consumers(self, g):
        members = set(g.members)
        return [(s, None) for s in self.cal.sites.values() if (s.weight, s.dim) in members]

    def _names(self, site) -> set:
        return {self.plan.aliases.get(n, n) for n in (site.weight, site.bias) if n}

    def observers(self) -> dict:
        def observe(site):
            st = self.cal.stats[site.key]
            return lambda mod, x: st.add(site.rows(x, mod.weight), self.cal.gram)
        return {path: observe(s) for path, s in self._by_path().items()}

    def _by_path(self) -> dict:
        return {s.key[1]: s for s in self.cal.sites.values()}

    def done(self, block: Optional[str]) -> None:
        """Block ``block`` (None: the modules outside the blocks) has all its statistics."""
        if self.calibrated_scores:
            for g, blocks in self.waiting.items():
                blocks.discard(block)
                if not blocks and g not in self.eng.raw:
                    self.eng.complete(g, self.crit(self.plan.dg, g, self.cal))
        for name in [n for n in self.plan.checkpoint.tensors if self.plan.block_of(n) == block]:
            self.eng.step(name)
        self.repair_ready()
        self.weights.clear()

    def repair_ready(self, everything: bool = False) -> None:
        """Repair the pending sites whose groups are all decided; write their tensors."""
        if not self.pending:
            return
        keys = [k for k in self.pending if everything or
                all(g in self.eng.decided for g in self.eng.groups_of(self.plan.aliases.get(
                    self.cal.sites[k].weight, self.cal.sites[k].weight)))]
        if not keys:
            return
        from ..calib.repair import RepairReport, plan_repair

        sub = type(self.cal)(self.plan.dg, {k: self.cal.sites[k] for k in keys}, self.cal.stats, self.cal.uses,
                             self.cal.gram)
        with _on_graph(self.plan, [self.cal.sites[k].bias for k in keys], self.weights):
            fix = plan_repair(self.plan.dg, self.eng.keep, sub, self.repair, damping=self.damping)
        self.report = self.report or RepairReport(self.repair)
        self.report.layers.extend(fix.report.layers)
        for e in fix.edits:
            if e.weight is not None:
                self.eng.replaced[self.plan.aliases.get(e.site.weight, e.site.weight)] = e.weight
            if e.bias is not None and e.site.bias is not None:
                self.eng.replaced[self.plan.aliases.get(e.site.bias, e.site.bias)] = e.bias
            elif e.bias is not None:
                self.eng.add(f"{e.site.key[1]}.bias", e.bias)
        for k in keys:
            self.pending.discard(k)
            self.eng.gated.difference_update(self._names(self.cal.sites[k]))
            self.cal.stats[k].gram = None
        self.eng.flush()


def run_calibrated(plan: CheckpointPlan, crit, engine: Engine, data, *, repair: Optional[str] = None,
                   damping: Optional[float] = None, dtype: torch.dtype = torch.float32, progress: bool = False):
    """Calibrate block by block and stream the rewrite along (Note [Streamed calibration]).

    Returns ``(RepairReport or None, BlockRunner)``.
    """
    from ..calib.criteria import DAMPING

    sites = consumer_sites(plan, list(engine.ratios))
    gram = bool(repair) or getattr(crit, "needs_gram", False)
    if engine.scores is None and not getattr(crit, "needs_calibration", False):
        engine.scores = TensorScores(plan, crit, list(engine.ratios))
        for g in engine.scores.ready():
            engine.complete(g)
    drv = _Driver(plan, crit, engine, sites, repair, DAMPING if damping is None else damping, gram)
    runner = BlockRunner(plan, data, dtype=dtype)
    outside = any(drv.block_of[k] is None for k in drv.cal.sites)
    runner.run(drv.observers(), on_block=lambda i, path: drv.done(path), tail=outside, progress=progress)
    drv.done(None)
    engine.finish(before_flush=lambda: drv.repair_ready(everything=True))
    if drv.report is not None:
        drv.report.layers.sort(key=lambda r: r.layer)
    return drv.report, runner
