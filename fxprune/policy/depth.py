"""Depth pruning: which whole blocks go (Note [Removable branches] in passes/depth.py).

Block importance (higher: more important, kept first):

* ``"angular"`` (calibrated, ShortGPT / Gromov et al.): the angular distance
  ``arccos(cos(h_in, h_out)) / pi`` between the residual stream entering a block and
  leaving it, per token (per position for ``N, C, H, W`` maps), averaged over the
  calibration data. A block that barely turns the stream does little.
* ``"cosine"``: ``1 - cos(h_in, h_out)``, the same ranking in another scale.
* ``"loss"``: the increase of ``loss_fn`` when the block is silenced (its branches'
  outputs zeroed, exactly what removing it computes), on the calibration data.
* ``"last"``: the last blocks go first (the usual hand-picked baseline); ``"random"``.

The choice is global: the ``k`` lowest-scored blocks of the whole model go.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Sequence, Union

import torch
import torch.fx as fx

from fxprune.passes import runnable
from fxprune.passes.depth import Block, find_blocks, silence_branches

from ..calib.collect import _flat_inputs, batch_inputs
from .stats import default_loss

__all__ = ["BLOCK_CRITERIA", "removable_blocks", "score_blocks", "select_blocks", "check_depth"]

DepthSpec = Union[None, float, int, Sequence[str]]


def removable_blocks(dg) -> list:
    """The removable blocks of an analysed model, in graph order (computed once per ``dg``)."""
    blocks = getattr(dg, "_blocks", None)
    if blocks is None:
        blocks = dg._blocks = find_blocks(dg.gm)
    return blocks


def check_depth(depth: DepthSpec) -> DepthSpec:
    """Validate a ``depth_ratio`` option: a fraction in ``[0, 1)``, a block count, or block names."""
    if depth is None or isinstance(depth, bool):
        if isinstance(depth, bool):
            raise ValueError("depth_ratio must be a fraction, a count or block names, not a bool")
        return None
    if isinstance(depth, float):
        if not 0.0 <= depth < 1.0:
            raise ValueError(f"depth_ratio must be in [0, 1) (the fraction of removable blocks removed), got {depth}")
        return depth
    if isinstance(depth, int):
        if depth < 0:
            raise ValueError(f"a block count must be >= 0, got {depth}")
        return depth
    names = (depth,) if isinstance(depth, str) else tuple(depth)
    if not all(isinstance(n, str) for n in names):
        raise TypeError("depth_ratio names blocks by strings (see fxprune.removable_blocks(dg))")
    return names


def _tokens(t: torch.Tensor) -> torch.Tensor:
    """Rows of the vectors compared: the channel dim of ``N, C, H, W`` maps, the last dim otherwise."""
    t = t.detach().double()
    if t.ndim == 4:
        t = t.movedim(1, -1)
    return t.reshape(-1, t.shape[-1]) if t.ndim > 1 else t.reshape(1, -1)


class _StreamRecorder(fx.Interpreter):
    """Runs the graph and accumulates, per block, the distance of the stream in and out."""

    def __init__(self, gm: fx.GraphModule, blocks: list, angular: bool, sums: dict):
        super().__init__(gm)
        self.angular, self.sums, self.held = angular, sums, {}
        self.starts = {b.branches[0].skip for b in blocks}
        self.ends = {b.branches[-1].add: (b.branches[0].skip, b.name) for b in blocks}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.name in self.starts:  # held until its block's end (the interpreter frees dead values)
            self.held[n.name] = out
        hit = self.ends.get(n.name)
        if hit is not None:
            src, name = hit
            cos = torch.nn.functional.cosine_similarity(_tokens(self.held[src]), _tokens(out), dim=-1)
            d = torch.arccos(cos.clamp(-1, 1)) / math.pi if self.angular else 1 - cos
            total, count = self.sums.get(name, (0.0, 0))
            self.sums[name] = (total + float(d.sum()), count + d.numel())
        return out


def _batches(dg, data) -> list:
    """``(args, kwargs)`` per batch; the example's non-tensor keywords (``use_cache=False``) as calibration has them."""
    if data is None:
        return [(tuple(dg.example_args), dict(dg.example_kwargs))]
    consts = {k: v for k, v in dg.example_kwargs.items() if not isinstance(v, torch.Tensor)}
    return [(a, {**consts, **k}) for a, k in (batch_inputs(b, len(dg.example_args)) for b in data)]


@torch.no_grad()
def _stream_scores(dg, blocks: list, data, angular: bool) -> dict:
    gm = runnable(dg.gm)
    sums: dict = {}
    for args, kwargs in _batches(dg, data):
        try:
            flat = _flat_inputs(gm, args, kwargs)
        except TypeError as e:
            raise ValueError(f"a calibration batch does not fit the captured graph ({e}); batches are model "
                             "inputs like the example inputs") from e
        _StreamRecorder(gm, blocks, angular, sums).run(*flat)
    return {b.name: sums[b.name][0] / max(1, sums[b.name][1]) for b in blocks}


@torch.no_grad()
def _loss_scores(dg, blocks: list, data, loss_fn: Optional[Callable]) -> dict:
    if data is None:
        raise ValueError("block_importance='loss' needs data=[batch, ...] and a loss_fn=lambda model, batch: loss "
                         "(or (inputs, labels) batches for cross-entropy)")
    loss_fn = loss_fn or default_loss
    gm = runnable(dg.gm)
    data = list(data)

    def loss(model) -> float:
        return sum(float(loss_fn(model, b)) for b in data) / max(1, len(data))
    base = loss(gm)
    return {b.name: loss(silence_branches(gm, b.branches)) - base for b in blocks}


BLOCK_CRITERIA = {
    "angular": lambda dg, blocks, data, loss_fn, seed: _stream_scores(dg, blocks, data, True),
    "cosine": lambda dg, blocks, data, loss_fn, seed: _stream_scores(dg, blocks, data, False),
    "loss": lambda dg, blocks, data, loss_fn, seed: _loss_scores(dg, blocks, data, loss_fn),
    "last": lambda dg, blocks, data, loss_fn, seed: {b.name: -float(i) for i, b in enumerate(blocks)},
    "random": lambda dg, blocks, data, loss_fn, seed: dict(zip(
        [b.name for b in blocks], torch.rand(len(blocks), generator=torch.Generator().manual_seed(seed)).tolist())),
}


def score_blocks(dg, criterion: str = "angular", *, data: Optional[Iterable] = None, loss_fn=None,
                 seed: int = 0) -> dict:
    """``{block name: importance}`` for every removable block of ``dg`` (higher: kept first).

    Args:
        dg: a :class:`fxprune.DependencyGraph`.
        criterion: a name in ``BLOCK_CRITERIA`` (see the module docstring).
        data: calibration batches (as for calibrated channel criteria); default: the example inputs.
        loss_fn: ``(model, batch) -> loss`` for ``"loss"``.

    Example::

        >>> import torch, fxprune
        >>> class Res(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))
        ...     def forward(self, x):
        ...         for b in self.blocks:
        ...             x = x + b(x)
        ...         return x
        >>> dg = fxprune.analyze(Res(), (torch.randn(2, 4),))
        >>> sorted(score_blocks(dg, "last").items())
        [('blocks.0', -0.0), ('blocks.1', -1.0), ('blocks.2', -2.0)]
    """
    if criterion not in BLOCK_CRITERIA:
        raise ValueError(f"unknown block_importance {criterion!r}; choose one of {sorted(BLOCK_CRITERIA)}")
    return BLOCK_CRITERIA[criterion](dg, removable_blocks(dg), data, loss_fn, seed)


def select_blocks(dg, depth: DepthSpec, scores: Optional[dict] = None) -> list:
    """The blocks to remove: the ``depth`` (a fraction of the removable blocks, or a count) lowest-scored
    ones, or the blocks named."""
    depth = check_depth(depth)
    blocks = removable_blocks(dg)
    if depth is None:
        return []
    if isinstance(depth, tuple):
        by_name = {b.name: b for b in blocks}
        missing = [n for n in depth if n not in by_name]
        if missing:
            raise ValueError(f"{missing} are not removable blocks of {dg.source_name}; removable: "
                             f"{list(by_name) or 'none (no residual branch was found)'}")
        return [by_name[n] for n in depth]
    k = int(round(depth * len(blocks))) if isinstance(depth, float) else depth
    if k > len(blocks):
        raise ValueError(f"cannot remove {k} blocks: {dg.source_name} has {len(blocks)} removable blocks")
    if k == 0:
        return []
    if scores is None:
        raise ValueError("select_blocks needs scores for a ratio or a count (see score_blocks)")
    order = sorted(range(len(blocks)), key=lambda i: (scores[blocks[i].name], -i))
    return sorted((blocks[i] for i in order[:k]), key=blocks.index)
