"""fxprune.passes: the channel-dependency analysis pass and the pruning rewrite pass.

These import nothing from the policy layer (importance, pruners): a compile
pipeline can use them on their own. The contract between the two passes is
data: frozen ``ChannelMeta`` on every node (``get_channel_meta``), whose
layouts are :class:`Layout`\\ s over :class:`Atom`\\ s, and a keep map
``{atom id: indices}`` checked by :func:`validate_keep` where the rewrite is
entered.

Example::

    >>> import torch, torch.fx as fx
    >>> from fxprune.passes import analyze_graph, rewrite_graph
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> result = analyze_graph(fx.symbolic_trace(net), (torch.randn(1, 4),))
    >>> [result.axes.size(g) for g in result.group_atoms]
    [8]
    >>> pruned = rewrite_graph(result.gm, {result.group_atoms[0]: torch.tensor([0, 2, 5])})
    >>> pruned(torch.randn(3, 4)).shape
    torch.Size([3, 2])
"""
from . import keys  # noqa: F401  (the metadata key constants)
from . import rules  # noqa: F401  (registers the rule table)
from . import blocks  # noqa: F401  (registers the folded_block rule)
from .analysis import AnalysisResult, analyze_block, analyze_graph, meta_clone
from .axes import AxisTable
from .errors import (InvalidKeepError, MissingAnalysisError, PassError, RuleBugError, ShapePropagationError, is_strict,
                     strict)
from .folds import FOLDS_KEY, FoldRegistry, FoldSite, fold_registry
from .layout import Atom, Layout
from .meta import (CONSUMES, META_KEY, PRODUCES, ArgEdit, AttrEdit, ChannelMeta, ParamUse, SizeRead, TensorLayout,
                   get_channel_meta)
from .registry import method, register
from .rewrite import cut_tensor, rewrite_graph, runnable
from .depth import Block, Branch, find_blocks, find_branches, remove_branches, silence_branches
from .validate import graph_atoms, keep_indices, validate_keep

__all__ = [
    "analyze_graph", "analyze_block", "rewrite_graph", "runnable", "cut_tensor", "AnalysisResult", "meta_clone",
    "Atom", "Layout", "AxisTable", "META_KEY", "ArgEdit", "AttrEdit", "ChannelMeta", "ParamUse", "SizeRead",
    "TensorLayout", "get_channel_meta", "PRODUCES", "CONSUMES",
    "FOLDS_KEY", "FoldRegistry", "FoldSite", "fold_registry",
    "PassError", "ShapePropagationError", "MissingAnalysisError", "InvalidKeepError", "RuleBugError",
    "strict", "is_strict", "graph_atoms", "validate_keep", "keep_indices",
    "method", "register", "keys",
    "Block", "Branch", "find_blocks", "find_branches", "remove_branches", "silence_branches",
]
