"""Segment helpers shared by the indexing rules (``index.py``, ``gather.py``, ``aten.py``).

A third module so that the rules that split an axis into explicit segments do not import
each other for a private helper.
"""
from __future__ import annotations

from ..context import TV, RuleContext

__all__ = ["pieces"]


def pieces(ctx: RuleContext, x: TV, d: int, sizes: list) -> list:
    """Split ``x``'s dim ``d`` into fresh consecutive segments of ``sizes`` (they must sum to its size)."""
    out = [ctx.fresh(n) for n in sizes]
    ctx.unify(x.dims[d], tuple(seg for p in out for seg in p))
    return out
