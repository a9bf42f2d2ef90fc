"""Comparing model outputs: the one measure every check uses (a low module: capture, checks and the verbs import it)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

__all__ = ["relative_error", "plain_outputs"]


def relative_error(ref, out) -> float:
    """Largest ``max|a - b| / max|a|`` over the tensors of two output structures.

    Note [NaN and inf]: non-finite values are compared by position and value: a NaN, +inf or
    -inf of ``ref`` must be the same in ``out`` (else the error is inf), and the error is
    measured over the finite values only. Masked logits (-inf) still get a real check of the
    rest, and a NaN never hides an error (``max(x, nan)`` would drop it). The result is never NaN.

    Example::

        >>> import torch
        >>> a = torch.tensor([1.0, float("-inf"), float("nan")])
        >>> relative_error(a, a.clone()), relative_error(a, a * 2), relative_error(a, torch.ones(3))
        (0.0, 1.0, inf)
    """
    ra, sa = tree_flatten(plain_outputs(ref))
    rb, sb = tree_flatten(plain_outputs(out))
    if sa != sb or len(ra) != len(rb):
        return math.inf
    return max((_leaf_error(a, b) for a, b in zip(ra, rb)), default=0.0)


def _leaf_error(a, b) -> float:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            return math.inf
        same = a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
        return 0.0 if same else math.inf
    if a.shape != b.shape:
        return math.inf
    if not (a.is_floating_point() or a.is_complex()):
        return 0.0 if torch.equal(a, b) else math.inf
    if not a.numel():
        return 0.0
    a, b = a.detach(), b.detach().to(a.dtype)
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    if not torch.equal(fa, fb):
        return math.inf
    if not fa.all():  # the same NaN/inf positions: NaN against NaN, and each inf with its sign
        odd = ~fa
        if not torch.equal(torch.isnan(a[odd]), torch.isnan(b[odd])):
            return math.inf
        inf = odd & ~torch.isnan(a)
        if not torch.equal(a[inf], b[inf]):
            return math.inf
        a, b = a[fa], b[fa]
        if not a.numel():
            return 0.0
    scale = a.abs().max().item()
    diff = (a - b).abs().max().item()
    err = diff / scale if scale > 0 else diff
    return math.inf if math.isnan(err) else err


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
