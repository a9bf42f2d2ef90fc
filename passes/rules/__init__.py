"""The rule table. Importing this package registers every rule."""
from . import attention, gather, index, linear, norm, pointwise, reduce, sequence, shape, sizes, spatial  # noqa: F401
from . import aten  # noqa: F401  (aliases onto the rules above: import last)
from .aliases import register_aliases

ALIASED = register_aliases()  # Note [Alias table] in passes/rules/aliases.py

__all__ = ["ALIASED", "attention", "aten", "gather", "index", "linear", "norm", "pointwise", "reduce", "sequence", "shape", "sizes",
           "spatial"]
