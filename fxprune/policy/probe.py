"""The probes of a target search, counted on the meta device.

Note [Meta probes]
~~~~~~~~~~~~~~~~~~
A target search (Note [Targets and schedules] in ``policy/pruner.py``) counts
the MACs or parameters of the pruned model at every ratio it tries. Counts
depend on shapes only: FlopCounterMode's formulas read the operands' sizes,
``numel`` reads a shape. So a probe rewrites a meta-device copy of the
analysed graph (the same graph and channel metadata, tensors without storage:
no ``index_select`` copies) and runs it on meta inputs: no arithmetic, no
weight memory, and no re-capture or re-analysis per probe. The chosen keep is
then applied once, for real, by the caller.

Where the graph does not run on meta tensors (data-dependent Python, lifted
parameters of a ``torch.compile`` graph), the probe counts the real rewrite as
before; that decision is made once, at the first probe.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.utils._pytree import tree_map

from fxprune.passes import meta_clone, rewrite_graph, runnable

from ..api import apply
from ..capture.modes import on_meta
from ..profile import phase
from .counting import count_macs, count_params

__all__ = ["TargetProbe"]


def _meta(x):
    return torch.empty_like(x, device="meta") if isinstance(x, torch.Tensor) else x


class TargetProbe:
    """``probe(keep)``: the count (MACs or parameters) of ``dg`` pruned to ``keep`` (``{group: indices}``;
    ``{}`` for the unpruned graph).

    Args:
        dg: the analysed model.
        counter: the real count, ``model -> int`` (used where the meta graph cannot run).
        macs: count MACs on the example inputs (else parameters).
    """

    def __init__(self, dg, counter: Callable, macs: bool):
        self.dg, self.counter, self.macs = dg, counter, macs
        self.gm: Optional[torch.nn.Module] = None
        if not dg.lifted and not on_meta(dg.gm, (dg.example_args, dg.example_kwargs)):
            self.gm = meta_clone(dg.gm)  # shares the graph and its channel metadata
            self.args, self.kwargs = tree_map(_meta, tuple(dg.example_args)), tree_map(_meta, dict(dg.example_kwargs))

    def __call__(self, keep: dict) -> int:
        if self.gm is not None:
            try:
                return self._meta_count(keep)
            except Exception:  # the graph does not run on meta tensors: count real rewrites from now on
                self.gm = None
        model = apply(self.dg, keep, check=False) if keep else runnable(self.dg.gm)
        return self.counter(model)

    def _meta_count(self, keep: dict) -> int:
        with phase("rewrite"):
            pruned = rewrite_graph(self.gm, {g.atom: idx for g, idx in keep.items()}) if keep else runnable(self.gm)
        with phase("counting"):
            return count_macs(pruned, self.args, self.kwargs) if self.macs else count_params(pruned)
