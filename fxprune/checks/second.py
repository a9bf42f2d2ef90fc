"""The second size every check also runs at (Note [Second size]).

Note [Second size]
~~~~~~~~~~~~~~~~~~
An analysis runs at the example's sizes; a size that mixes the batch with heads or channels
(``q.reshape(B * heads, d, -1)``, Note [Run-time sizes] in passes/rules/common.py) can be
right there and wrong at every other batch. So the certificate and ``verify`` run their
oracles again at a second batch size, and a failure there (different outputs, or a pruned
graph that no longer runs) is a mismatch like any other.

The second batch is the example's batch minus one (a batch of one where the example has
two: the size where a batch axis vanishes from the layouts), or two where the example has
one. Images (float inputs of rank 4 with at least 8 x 8 pixels) are tried at half their
height and width first: a second resolution checked too, and for the common batch-1 CNN
example the second size then costs half its forwards instead of twice (resnet18 at 224 px:
the check took 2.4x as long at batch 2 full size). Many models fix their resolution
(position tables, ``_assert(H == ...)``): where the captured graph does not run at half
size, the second batch is tried at full size. Sequence lengths are left as they are. Where
the captured graph does not run at the second batch at all (a static capture, a model
written for one batch size), nothing can be compared there and the check says so.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.utils._pytree import tree_flatten, tree_map

__all__ = ["second_batch", "second_sizes"]


def _batch(args: tuple, kwargs: dict) -> Optional[int]:
    leaves = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and t.ndim >= 1]
    return int(leaves[0].shape[0]) if leaves else None


def second_batch(args: tuple, kwargs: dict) -> Optional[tuple]:
    """``(batch, args, kwargs)`` at the second batch size, or None where the inputs have no batch.

    Example::

        >>> import torch
        >>> b, args, _ = second_batch((torch.ones(1, 3),), {})
        >>> b, tuple(args[0].shape)
        (2, (2, 3))
    """
    n = _batch(args, kwargs)
    if n is None:
        return None
    m = 2 if n == 1 else n - 1

    def resize(t):
        if not isinstance(t, torch.Tensor) or t.ndim < 1 or t.shape[0] != n:
            return t
        if m < n:
            return t[:m].clone()
        other = t.flip(-1) if t.ndim >= 2 and t.is_floating_point() else t  # a second, different sample
        return torch.cat([t, other], 0)

    return m, tree_map(resize, tuple(args)), tree_map(resize, dict(kwargs))


def _halved(t):
    if isinstance(t, torch.Tensor) and t.ndim == 4 and t.is_floating_point() and min(t.shape[-2:]) >= 8:
        return t[..., : t.shape[-2] // 2, : t.shape[-1] // 2].contiguous()
    return t


def second_sizes(args: tuple, kwargs: dict) -> list:
    """The second sizes to try, first that runs wins: ``[(what, args, kwargs), ...]`` (Note [Second size])."""
    second = second_batch(args, kwargs)
    if second is None:
        return []
    batch, args2, kwargs2 = second
    out = [(f"batch {batch}", args2, kwargs2)]
    before = [t for t in tree_flatten((args2, kwargs2))[0]]
    small = tree_map(_halved, args2), tree_map(_halved, kwargs2)
    changed = [t for t, u in zip(tree_flatten(small)[0], before) if t is not u]
    if changed:
        h, w = changed[0].shape[-2:]
        out.insert(0, (f"batch {batch} at {h}x{w}", *small))
    return out
