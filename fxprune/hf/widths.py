"""Per-layer widths of a transformer: heads, kv heads, head dim and MLP width of every block.

For reports only (the CLI's "what changed per layer" table): read from module attributes
under their conventional names, and from tensor shapes, never used to decide anything.
A block is an element of a ``ModuleList`` (``model.layers.3``, ``encoder.block.1``); its
attention modules are those with a head-dim attribute; its MLP width is the largest tensor
dim outside them that is not the hidden size (the size most of its 1-D tensors, the norms, have).
"""
from __future__ import annotations

from collections import Counter
from typing import Optional

import torch.nn as nn
from tabulate import tabulate

__all__ = ["layer_widths", "widths_table"]

_HEAD_DIM = ("head_dim", "attention_head_size", "key_value_proj_dim", "head_size")
_HEADS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
_KV = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
_Q = ("q_proj", "query", "q", "query_proj", "q_lin")


def _attr(m: nn.Module, names) -> Optional[int]:
    for n in names:
        v = vars(m).get(n)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _blocks(model: nn.Module) -> list:
    return [(f"{name}.{i}" if name else str(i), child) for name, m in model.named_modules()
            if isinstance(m, nn.ModuleList) for i, child in enumerate(m)
            if any(_attr(a, _HEAD_DIM) for a in child.modules())]


def _attention(block: nn.Module) -> tuple:
    """(heads, kv heads, head dim) of the block's first attention module."""
    attn = next(m for m in block.modules() if _attr(m, _HEAD_DIM))
    hd = _attr(attn, _HEAD_DIM)
    heads = _attr(attn, _HEADS)
    if heads is None:
        q = next((getattr(attn, n) for n in _Q if isinstance(getattr(attn, n, None), nn.Linear)), None)
        heads = q.out_features // hd if q is not None else None
    kv = _attr(attn, _KV)
    groups = vars(attn).get("num_key_value_groups")
    if kv is None and heads and isinstance(groups, int) and groups:
        kv = heads // groups
    return heads, kv if kv is not None else heads, hd


def _mlp(block: nn.Module) -> Optional[int]:
    inside = {id(p) for m in block.modules() if _attr(m, _HEAD_DIM) for p in m.parameters()}
    outside = [p for p in block.parameters() if id(p) not in inside]
    flat = Counter(p.shape[0] for p in outside if p.dim() == 1)
    if not flat:
        return None
    hidden = flat.most_common(1)[0][0]
    dims = [d for p in outside if p.dim() >= 2 for d in p.shape[-2:] if d != hidden]
    return max(dims) if dims else None


def layer_widths(model: nn.Module) -> list:
    """``[(block path, heads, kv heads, head dim, MLP width)]`` (None where it cannot be read)."""
    out = []
    for path, block in _blocks(model):
        out.append((path, *_attention(block), _mlp(block)))
    return out


def widths_table(before: nn.Module, after: nn.Module) -> str:
    """A table of every block's widths, ``before -> after`` where they differ."""
    b, a = layer_widths(before), dict((row[0], row[1:]) for row in layer_widths(after))

    def cell(x, y) -> str:
        x, y = "-" if x is None else x, "-" if y is None else y
        return f"{x}" if x == y else f"{x} -> {y}"
    rows = [[path, *(cell(x, y) for x, y in zip(vals, a.get(path, (None,) * 4)))] for path, *vals in b]
    return tabulate(rows, headers=["layer", "heads", "kv heads", "head dim", "MLP width"])
