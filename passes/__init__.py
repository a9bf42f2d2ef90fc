"""fxprune.passes: the channel-dependency analysis pass and the pruning rewrite pass.

These import nothing from the policy layer (importance, pruners): a compile
pipeline can use them on their own.

Example::

    >>> import torch, torch.fx as fx
    >>> from fxprune.passes import analyze_graph, rewrite_graph
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> result = analyze_graph(fx.symbolic_trace(net), (torch.randn(1, 4),))
    >>> [result.axes.size(g) for g in result.groups]
    [8]
    >>> pruned = rewrite_graph(result.gm, {result.groups[0]: torch.tensor([0, 2, 5])})
    >>> pruned(torch.randn(3, 4)).shape
    torch.Size([3, 2])
"""
from . import rules  # noqa: F401  (registers the rule table)
from .analysis import AnalysisResult, ShapePropagationError, analyze_graph, meta_clone
from .axes import Atom, AxisTable, flat_indices, new_size
from .meta import META_KEY, ArgEdit, ChannelMeta, MissingAnalysisError, ParamUse, SizeRead, TensorLayout, get_channel_meta
from .registry import method, register
from .rewrite import rewrite_graph, runnable

__all__ = [
    "analyze_graph", "rewrite_graph", "AnalysisResult", "ShapePropagationError", "meta_clone",
    "Atom", "AxisTable", "flat_indices", "new_size", "META_KEY", "ArgEdit", "ChannelMeta",
    "MissingAnalysisError", "ParamUse", "SizeRead", "TensorLayout", "get_channel_meta",
    "method", "register", "runnable",
]
