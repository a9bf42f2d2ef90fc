"""Running graphs on the meta device: shapes without weight memory or arithmetic."""
from __future__ import annotations

import copy
from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn as nn

__all__ = ["meta_clone", "meta_call", "to_meta"]


def meta_clone(module: nn.Module, memo: Optional[dict] = None) -> nn.Module:
    """A structural copy of ``module`` whose tensors live on the meta device."""
    memo = {} if memo is None else memo
    if id(module) in memo:
        return memo[id(module)]
    clone = copy.copy(module)
    memo[id(module)] = clone
    clone.__dict__ = dict(module.__dict__)
    clone._parameters = {k: _meta_tensor(p, memo) for k, p in module._parameters.items()}
    clone._buffers = {k: _meta_tensor(b, memo) for k, b in module._buffers.items()}
    clone._modules = {k: (None if m is None else meta_clone(m, memo)) for k, m in module._modules.items()}
    for k, v in module.__dict__.items():
        if isinstance(v, torch.Tensor):
            clone.__dict__[k] = _meta_tensor(v, memo)
    return clone


def _meta_tensor(t: Optional[torch.Tensor], memo: dict):
    if t is None:
        return None
    if id(t) not in memo:
        m = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(m, t.requires_grad) if isinstance(t, nn.Parameter) else m
    return memo[id(t)]


def to_meta(x: Any) -> Any:
    return torch.empty_like(x, device="meta") if isinstance(x, torch.Tensor) else x


def _to_meta_device(args: tuple, kwargs: dict) -> tuple:
    """On meta, devices named in the graph (``.to("cpu")``, factories with ``device=``) become meta."""
    def swap(a):
        if isinstance(a, torch.device) or (isinstance(a, str) and a.split(":")[0] in ("cpu", "cuda", "mps", "xpu")):
            return torch.device("meta")
        return a

    kwargs = dict(kwargs)
    if kwargs.get("device") is not None:
        kwargs["device"] = torch.device("meta")
    return tuple(swap(a) for a in args), kwargs


class _MetaRunner(fx.Interpreter):
    """Runs a subgraph (of a higher-order op) on meta tensors, devices swapped like the main graph."""

    def call_function(self, target, args, kwargs):
        return meta_call(super().call_function, target, args, kwargs)

    def call_method(self, target, args, kwargs):
        return meta_call(super().call_method, target, args, kwargs)


def meta_call(call, target, args, kwargs):
    args, kwargs = _to_meta_device(args, kwargs)
    if getattr(target, "__name__", "") == "wrap_with_set_grad_enabled":  # (enabled, subgraph, *inputs)
        enabled, sub, *inputs = args
        with torch.set_grad_enabled(enabled):
            return _MetaRunner(sub).run(*inputs)
    return call(target, args, kwargs)
