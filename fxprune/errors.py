"""Exceptions raised by fxprune. Each message names the problem and the fix.

They build on the passes' errors: ``FxPruneError`` is a
``fxprune.passes.PassError``, and ``KeepIndicesError`` is the passes'
``InvalidKeepError`` as the public verbs report it (naming groups ``G<i>``).
"""
from __future__ import annotations

from fxprune.passes.errors import InvalidKeepError, PassError

__all__ = ["FxPruneError", "CaptureError", "KeepIndicesError", "GroupMismatchError", "OracleMismatchError"]


class FxPruneError(PassError):
    """Base class of fxprune's errors."""


class CaptureError(FxPruneError):
    """The model could not be captured into an FX graph."""


class KeepIndicesError(FxPruneError, InvalidKeepError):
    """Keep-indices for a group are empty, out of range, duplicated or not integers."""


class GroupMismatchError(FxPruneError, ValueError):
    """A group was passed to a DependencyGraph it does not belong to."""


class OracleMismatchError(FxPruneError, AssertionError):
    """A pruned model does not compute what the original computes."""


class TrainModeError(FxPruneError):
    """A pruned graph froze a mode-dependent branch in eval mode and cannot run in train mode."""


class ExampleInputError(FxPruneError, ValueError):
    """The model does not run on the example inputs, or they (or its outputs) are of an unsupported kind."""


class MetaDeviceError(FxPruneError, ValueError):
    """An operation needs tensor values, but the model's parameters are on the meta device."""


class SaveError(FxPruneError, OSError):
    """A model could not be saved to, or loaded from, a file."""


__all__ += ["TrainModeError", "ExampleInputError", "MetaDeviceError", "SaveError"]
