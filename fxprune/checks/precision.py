"""Running a check at a higher precision: cast the values, and the graph's own float32 casts with them.

Both oracles (``verify``) and the certificate compare outputs in float64, so that they measure couplings and
not float32 rounding. A model that upcasts to float32 inside (norms, softmax) would round there anyway; its
casts to float32 become casts to the check's dtype. Export's dtype assertions
(``aten._assert_tensor_metadata``) on tensors made without a dtype (``ones(n)``, which stay float32) stop
asserting the dtype.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.fx.node import map_aggregate

__all__ = ["cast_value", "promote_casts"]


def cast_value(x, dtype=torch.float64):
    """``x`` in ``dtype`` if it is a floating tensor (a parameter stays a parameter: it gets lifted)."""
    if isinstance(x, nn.Parameter) and x.is_floating_point():
        return nn.Parameter(x.detach().to(dtype), x.requires_grad)
    return x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def promote_casts(module: nn.Module, dtype=torch.float64, source: tuple = (torch.float32,)) -> None:
    """Casts to a ``source`` dtype (float32; add a bf16 model's own dtype, which its graph casts back to)
    inside every graph of ``module`` become casts to ``dtype``."""
    swap = lambda a: dtype if isinstance(a, torch.dtype) and a in source else a  # noqa: E731
    for gm in module.modules():
        if not isinstance(gm, torch.fx.GraphModule):
            continue
        for node in gm.graph.nodes:
            if node.target is torch.ops.aten._assert_tensor_metadata.default:
                node.kwargs = {**node.kwargs, "dtype": None}
                continue
            node.args, node.kwargs = map_aggregate(node.args, swap), map_aggregate(node.kwargs, swap)
        gm.recompile()
