"""Shims for the environment fxprune runs in, usable from every room (nothing here imports fxprune).

Example::

    >>> from fxprune.compat import import_torchvision
    >>> callable(import_torchvision)
    True
"""
from __future__ import annotations

import sys
import warnings

import torch

__all__ = ["import_torchvision"]


# Note [torchvision on a CPU torch]
# The registry's torchvision wheel is a CUDA build. Beside the CPU torch its C++ extension does not
# load, so the schemas ``torchvision::nms``/``qnms`` are never defined and ``import torchvision``
# fails while registering their fake kernels. Only for that exact failure we define the two schemas
# (no kernels: detection ops would still fail, classification models do not call them) and import again.
_SHIM_SCHEMAS = {name: "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor" for name in ("nms", "qnms")}


def import_torchvision():
    """``import torchvision``, defining its two C-op schemas first when, and only when, its import
    fails because its C++ extension does not match this torch (see Note [torchvision on a CPU torch])."""
    try:
        import torchvision  # noqa: F401
        return sys.modules["torchvision"]
    except RuntimeError as e:
        if "torchvision::nms" not in str(e) and "torchvision::qnms" not in str(e):
            raise
    for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[mod]
    for name, schema in _SHIM_SCHEMAS.items():
        try:
            torch.library.define(f"torchvision::{name}", schema)
        except RuntimeError:  # defined already
            pass
    warnings.warn("torchvision's C++ ops do not load with this torch build; fxprune defined the schemas of "
                  "torchvision::nms/qnms so that its models import (detection ops will not run)", stacklevel=2)
    import torchvision  # noqa: F401, F811
    return sys.modules["torchvision"]
