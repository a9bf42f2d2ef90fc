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
from .errors import (CaptureError, ExampleInputError, FxPruneError, GroupMismatchError, KeepIndicesError,
                     MetaDeviceError, OracleMismatchError, SaveError, TrainModeError)
from .graph import DependencyGraph, Group
from .io import load, save
from .checks import Certificate, VerifyReport, certify, relative_error
from .verify import verify
from .calib import OBS, Fluctuation, RepairReport, Wanda, calibrate, repair, repair_report
from .policy.counting import Count, compare, count, count_macs, count_params, group_table, latency
from .policy.importance import (BNScale, Criterion, Elementwise, FPGM, Hessian, Magnitude, Random, Taylor, get_importance,
                                importance_names, register_importance)
from .policy.depth import BLOCK_CRITERIA, removable_blocks, score_blocks, select_blocks
from .policy.pruner import PruneConfig, PruneStep, plan, prune, prune_step, score_groups
from .policy.selection import factor_roles, ignored_groups
from .policy.sparsity import GroupSparsity
from .policy.stats import collect_stats
from .tools.torch_compile import backend
from .hf import inplace as _hf_inplace  # noqa: F401 - registers the HF in-place steps (Note [In-place steps])

__version__ = "0.1.0"

__all__ = [
    "analyze", "apply", "verify", "save", "load", "DependencyGraph", "Group", "VerifyReport", "relative_error",
    "FxPruneError", "CaptureError", "KeepIndicesError", "GroupMismatchError", "OracleMismatchError",
    "TrainModeError", "ExampleInputError", "MetaDeviceError", "SaveError", "Certificate", "certify",
    "passes",
    "prune", "prune_step", "PruneStep", "PruneConfig", "plan", "score_groups", "backend", "collect_stats", "GroupSparsity",
    "Criterion", "Elementwise", "Magnitude", "BNScale", "Taylor", "Hessian", "FPGM", "Random",
    "register_importance", "get_importance", "importance_names", "factor_roles", "ignored_groups",
    "Count", "count", "count_macs", "count_params", "compare", "group_table", "latency",
    "Wanda", "Fluctuation", "OBS", "calibrate", "repair", "repair_report", "RepairReport",
    "removable_blocks", "score_blocks", "select_blocks", "BLOCK_CRITERIA",
]
