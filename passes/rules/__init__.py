"""The rule table. Importing this package registers every rule."""
from . import attention, index, linear, norm, pointwise, reduce, sequence, shape, sizes, spatial  # noqa: F401

__all__ = ["attention", "index", "linear", "norm", "pointwise", "reduce", "sequence", "shape", "sizes", "spatial"]
