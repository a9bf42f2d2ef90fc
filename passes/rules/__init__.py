"""The rule table. Importing this package registers every rule."""
from . import index, linear, norm, pointwise, reduce, shape, sizes, spatial  # noqa: F401

__all__ = ["index", "linear", "norm", "pointwise", "reduce", "shape", "sizes", "spatial"]
