"""ONNX Runtime: export with ``torch.onnx.export``, check against PyTorch, run.

Note [ONNX parity]
~~~~~~~~~~~~~~~~~~
A latency measured on ONNX Runtime is only worth reporting for the function the
PyTorch model computes: every export is run once on the example inputs and its
outputs compared with the eval-mode PyTorch model (float32: relative error at
most ``1e-4`` of the output scale); a mismatch raises instead of timing a
different model.
"""
from __future__ import annotations

import io
import warnings
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..errors import FxPruneError

__all__ = ["export_onnx", "ort_session", "ort_callable", "check_parity", "OnnxParityError"]


class OnnxParityError(FxPruneError):
    """The ONNX Runtime outputs differ from the PyTorch model's (see Note [ONNX parity])."""


def export_onnx(model: nn.Module, inputs: tuple, path=None) -> bytes:
    """The ONNX bytes of ``model`` (eval mode) traced on ``inputs``; also written to ``path`` if given.

    Example::

        >>> import torch
        >>> from fxprune.speed.onnx import export_onnx
        >>> export_onnx(torch.nn.Linear(4, 2), (torch.randn(1, 4),))[:2] != b""
        True
    """
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), tuple(inputs), buf, dynamo=False, opset_version=17)
    data = buf.getvalue()
    if path is not None:
        with open(path, "wb") as f:
            f.write(data)
    return data


def ort_session(data: bytes, threads: Optional[int] = None):
    """An ONNX Runtime CPU session over ``data`` with ``threads`` intra-op threads (0: ORT's default)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or 0
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _feeds(sess, inputs: tuple) -> dict:
    names = [i.name for i in sess.get_inputs()]
    return {n: t.detach().cpu().numpy() for n, t in zip(names, inputs)}


def check_parity(model: nn.Module, sess, inputs: tuple, rtol: float = 1e-4) -> float:
    """The largest error of ``sess`` against ``model`` on ``inputs``, relative to the output scale;
    raises :class:`OnnxParityError` above ``rtol``."""
    with torch.no_grad():
        ref = model(*inputs)
    refs = [ref] if isinstance(ref, torch.Tensor) else [r for r in torch.utils._pytree.tree_leaves(ref)
                                                         if isinstance(r, torch.Tensor)]
    outs = sess.run(None, _feeds(sess, inputs))
    worst = 0.0
    for r, o in zip(refs, outs):
        r = r.double()
        err = (torch.from_numpy(o).double() - r).abs().max().item() / max(r.abs().max().item(), 1e-12)
        worst = max(worst, err)
    if worst > rtol or len(outs) != len(refs):
        raise OnnxParityError(f"ONNX Runtime disagrees with PyTorch: relative error {worst:.3g} > {rtol:g} "
                              f"({len(outs)} outputs vs {len(refs)}); the export is not the same function, "
                              "so its latency is not reported. Try another opset or report the model")
    return worst


def ort_callable(model: nn.Module, inputs: tuple, threads: Optional[int] = None,
                 check: bool = False) -> Callable[[], object]:
    """A zero-argument callable running ``model`` exported to ONNX Runtime (parity checked if ``check``)."""
    sess = ort_session(export_onnx(model, inputs), threads)
    if check:
        check_parity(model, sess, inputs)
    feeds = _feeds(sess, inputs)
    return lambda: sess.run(None, feeds)
