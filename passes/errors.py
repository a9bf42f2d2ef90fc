"""The passes' errors, and strict mode for rule bugs.

Every error the passes raise on purpose derives from :class:`PassError`;
``fxprune.errors.FxPruneError`` builds on it, so ``except PassError`` catches
both layers.

Note [Strict mode]
~~~~~~~~~~~~~~~~~~
A rule that meets an argument form it does not handle raises ``RuleError``:
the node's axes are pinned and the report lists it (sound, smaller). A rule
that raises anything else (``IndexError``, ``TypeError``, ...) has a bug; by
default the analysis pins the node all the same, so users still get a correct
model. In strict mode it raises :class:`RuleBugError` instead, so tests see
the bug. Strict mode is on inside ``with strict():``, or where the environment
sets ``FXPRUNE_STRICT=1``; ``analyze_graph(..., strict=True)`` asks for it per
call. The test suite runs strict.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator, Optional

from . import keys

__all__ = ["PassError", "ShapePropagationError", "MissingAnalysisError", "InvalidKeepError", "RuleBugError",
           "strict", "is_strict"]


class PassError(Exception):
    """Base class of the errors the passes raise."""


class ShapePropagationError(PassError, RuntimeError):
    """The graph could not run on meta (nor real) tensors, so its shapes are unknown."""


class MissingAnalysisError(PassError, RuntimeError):
    """The rewrite met a graph (or node) the analysis pass has not annotated."""


class InvalidKeepError(PassError, ValueError):
    """Keep-indices that are not distinct, in-range integers for an unpinned atom of the graph."""


class RuleBugError(PassError, RuntimeError):
    """In strict mode: a rule raised something other than ``RuleError`` (Note [Strict mode])."""


_STRICT: contextvars.ContextVar = contextvars.ContextVar(keys.STRICT_VAR, default=None)


@contextlib.contextmanager
def strict(enabled: bool = True) -> Iterator[None]:
    """Within the block, rule bugs raise :class:`RuleBugError` (or, with ``enabled=False``, pin).

    Example::

        >>> import torch, torch.fx as fx
        >>> from fxprune.passes import analyze_graph, strict
        >>> with strict():
        ...     result = analyze_graph(fx.symbolic_trace(torch.nn.Linear(4, 2)), (torch.randn(1, 4),))
    """
    token = _STRICT.set(bool(enabled))
    try:
        yield
    finally:
        _STRICT.reset(token)


def is_strict(override: Optional[bool] = None) -> bool:
    """Whether rule bugs raise: ``override`` if given, else the innermost ``strict()``, else FXPRUNE_STRICT."""
    if override is not None:
        return override
    current = _STRICT.get()
    if current is not None:
        return current
    return os.environ.get("FXPRUNE_STRICT", "").strip().lower() in ("1", "true", "yes", "on")
