"""Comparing model outputs: the one measure every check uses."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

__all__ = ["relative_error", "plain_outputs"]


def relative_error(ref, out) -> float:
    """Largest ``max|a - b| / max|a|`` over the tensors of two output structures."""
    ra, sa = tree_flatten(plain_outputs(ref))
    rb, sb = tree_flatten(plain_outputs(out))
    if sa != sb or len(ra) != len(rb):
        return math.inf
    worst = 0.0
    for a, b in zip(ra, rb):
        if not isinstance(a, torch.Tensor):
            worst = max(worst, 0.0 if a == b else math.inf)
            continue
        if a.shape != b.shape:
            return math.inf
        if not a.is_floating_point():
            worst = max(worst, 0.0 if torch.equal(a, b) else math.inf)
            continue
        scale = a.abs().max().item() if a.numel() else 0.0
        diff = (a - b).abs().max().item() if a.numel() else 0.0
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def plain_outputs(out: Any) -> Any:
    """Model outputs as plain containers (HF ModelOutput is a dict subclass; a dataclass becomes
    the dict of its fields)."""
    if dataclasses.is_dataclass(out) and not isinstance(out, (type, dict)):
        out = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
    if isinstance(out, dict):
        return {k: plain_outputs(v) for k, v in out.items() if v is not None}
    if isinstance(out, (tuple, list)):
        return type(out)(plain_outputs(v) for v in out) if type(out) in (tuple, list) else tuple(plain_outputs(v) for v in out)
    return out
