"""The two passes as ``torch.fx.passes.infra`` passes, for ``PassManager`` pipelines.

No importance scores, no pruner: a *plan* says what to keep, either as a map
from group atom ids to kept coordinates or as a callable that reads the
analysis result and returns one.

Example::

    >>> import torch, torch.fx as fx
    >>> from torch.fx.passes.infra.pass_manager import PassManager
    >>> from fxprune.passes.infra import ChannelAnalysisPass, PruneRewritePass, keep_leading
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> x = torch.randn(3, 4)
    >>> pm = PassManager([ChannelAnalysisPass((x,)), PruneRewritePass(keep_leading(0.5))])
    >>> pm(fx.symbolic_trace(net)).graph_module.get_submodule("0").out_features
    4
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Union

import torch
import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from .analysis import AnalysisResult, analyze_graph
from .errors import MissingAnalysisError
from .meta import META_KEY
from .rewrite import rewrite_graph

__all__ = ["ChannelAnalysisPass", "PruneRewritePass", "keep_leading", "analysis_of"]

Plan = Union[Mapping[int, torch.Tensor], Callable[[AnalysisResult], Mapping[int, torch.Tensor]]]


def analysis_of(gm: fx.GraphModule) -> AnalysisResult:
    """The analysis result stored on ``gm.meta`` by :class:`ChannelAnalysisPass`."""
    try:
        return gm.meta[META_KEY]
    except (KeyError, AttributeError):
        raise MissingAnalysisError("this GraphModule has no fxprune analysis: run ChannelAnalysisPass "
                                   "on it first (in the same PassManager, before PruneRewritePass)") from None


class ChannelAnalysisPass(PassBase):
    """Annotates ``node.meta["fxprune"]`` on every node and stores the groups on ``gm.meta``.

    An analysis: returns the same module with ``modified=False``.
    """

    def __init__(self, example_inputs: tuple):
        super().__init__()
        self.example_inputs = tuple(example_inputs)

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        graph_module.meta[META_KEY] = analyze_graph(graph_module, self.example_inputs)
        return PassResult(graph_module, False)


class PruneRewritePass(PassBase):
    """Emits the pruned GraphModule for a plan (atom id -> kept coordinates)."""

    def __init__(self, plan: Plan):
        super().__init__()
        self.plan = plan

    def requires(self, graph_module: fx.GraphModule) -> None:
        analysis_of(graph_module)

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        """The plan's keep map, validated (``InvalidKeepError``, passes/validate.py), then the rewrite."""
        result = analysis_of(graph_module)
        keep = self.plan(result) if callable(self.plan) else self.plan
        return PassResult(rewrite_graph(graph_module, keep), True)


def keep_leading(ratio: float) -> Callable[[AnalysisResult], dict]:
    """A policy-free plan: remove the last ``ratio`` of every group's coordinates."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")

    def plan(result: AnalysisResult) -> dict:
        sizes = {a: result.axes.size(a) for a in result.group_atoms}
        return {a: torch.arange(max(1, n - math.floor(n * ratio))) for a, n in sizes.items()}

    return plan
