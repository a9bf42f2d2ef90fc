"""Capture: an ``nn.Module`` (or a dynamo/export graph) becomes the ``GraphModule`` the passes analyse.

``frontends`` holds ``symbolic_trace``, ``torch.export`` and dynamo-graph capture;
``folding`` captures each distinct repeated block once (``fold=True``).
"""
from .folding import IDENTITY_ATTRS, capture_folded
from .frontends import Captured, capture

__all__ = ["capture", "Captured", "capture_folded", "IDENTITY_ATTRS"]
