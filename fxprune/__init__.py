"""fxprune: structural (channel) pruning for PyTorch as a torch.fx compiler pass.

    >>> import torch, fxprune
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> dg = fxprune.analyze(net, (torch.randn(1, 4),))
    >>> small = fxprune.apply(dg, {dg.groups[0]: [0, 3, 5]})
    >>> small(torch.randn(2, 4)).shape
    torch.Size([2, 2])
"""
from . import passes
from .api import analyze, apply
from .errors import CaptureError, FxPruneError, GroupMismatchError, KeepIndicesError, OracleMismatchError
from .graph import DependencyGraph, Group
from .oracles import VerifyReport, relative_error, verify

__version__ = "0.1.0"

__all__ = [
    "analyze", "apply", "verify", "DependencyGraph", "Group", "VerifyReport", "relative_error",
    "FxPruneError", "CaptureError", "KeepIndicesError", "GroupMismatchError", "OracleMismatchError",
    "passes",
]
