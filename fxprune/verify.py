"""The verb ``fxprune.verify``: analyse a float64 copy of a model and run both oracles on it.

It sits above ``api`` (it analyses), the checks (it runs the oracles) and the depth policy (it picks
blocks to remove): ``fxprune.checks`` stays below the verbs, with no import back up.
"""
from __future__ import annotations

import copy
from typing import Iterable, Optional

import torch
import torch.nn as nn
from torch.utils._pytree import tree_map

from fxprune.passes import fold_registry

from .api import analyze
from .checks.guard import explain_copy_failure
from .checks.oracles import VerifyReport, _check_folded_capture, _refuse_meta, run_oracles
from .checks.precision import cast_value, promote_casts

__all__ = ["verify"]

def _depth_blocks(dg, depth, seed: int) -> list:
    """The blocks the oracles remove: ``depth`` chosen at random (seeded) unless names are given."""
    if depth is None:
        return []
    from .policy.depth import score_blocks, select_blocks

    return select_blocks(dg, depth, score_blocks(dg, "random", seed=seed))

def verify(model: nn.Module, example_inputs, example_kwargs: Optional[dict] = None, *, seed: int = 0,
           removal: float = 1 / 3, rtol: float = 1e-9, leaf_modules: Iterable = (),
           raise_on_mismatch: bool = True, fold: bool = False, depth=None) -> VerifyReport:
    """Run the permutation and removal oracles on a float64 copy of ``model`` (in eval mode).

    Args:
        model: the model to check (not modified).
        example_inputs: tuple of positional inputs.
        seed: seeds the random permutations and removals.
        removal: fraction of each group the removal oracle removes.
        rtol: largest relative error accepted (float64 rounding is ~1e-15).
        fold: analyse with repeated blocks folded (see :func:`fxprune.analyze`).
        depth: also remove whole blocks in both oracles (a fraction of the removable blocks chosen at
            random with ``seed``, a count, or block names; see :func:`fxprune.removable_blocks`): the
            reference is then the model with those blocks' branch outputs zeroed.

    Returns:
        A :class:`VerifyReport`; raises :class:`OracleMismatchError` on a mismatch.

    Example::

        >>> import torch, fxprune
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
        >>> fxprune.verify(net, (torch.randn(2, 3, 12, 12),)).passed
        True
    """
    _refuse_meta(model, example_inputs)
    with explain_copy_failure(model):
        model64 = copy.deepcopy(model).double().eval()
    inputs = tree_map(cast_value, tuple(example_inputs) if not isinstance(example_inputs, torch.Tensor)
                      else (example_inputs,))
    kwargs = tree_map(cast_value, dict(example_kwargs or {}))
    dg = analyze(model64, inputs, kwargs, leaf_modules=leaf_modules, fold=fold)
    folds = fold_registry(dg.gm)
    if folds is not None:
        _check_folded_capture(model64, dg.gm, inputs, kwargs)
    for gm in (dg.gm, *(info.summary.gm for _, info in (folds.blocks if folds else ()))):
        promote_casts(gm)
    inputs = tuple(x for i, x in enumerate(inputs) if i not in set(dg.lifted))  # now graph attributes
    return run_oracles(dg, inputs, kwargs, _depth_blocks(dg, depth, seed), seed=seed, removal=removal, rtol=rtol,
                       raise_on_mismatch=raise_on_mismatch, name=type(model).__name__)
