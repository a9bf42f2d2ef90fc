"""Exceptions raised by fxprune. Each message names the problem and the fix."""
from __future__ import annotations

__all__ = ["FxPruneError", "CaptureError", "KeepIndicesError", "GroupMismatchError", "OracleMismatchError"]


class FxPruneError(Exception):
    """Base class of fxprune's errors."""


class CaptureError(FxPruneError):
    """The model could not be captured into an FX graph."""


class KeepIndicesError(FxPruneError, ValueError):
    """Keep-indices for a group are empty, out of range, duplicated or not integers."""


class GroupMismatchError(FxPruneError, ValueError):
    """A group was passed to a DependencyGraph it does not belong to."""


class OracleMismatchError(FxPruneError, AssertionError):
    """A pruned model does not compute what the original computes."""
