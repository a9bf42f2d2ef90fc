"""Folded blocks: analyse a repeated block once, instantiate it at every call site.

Note [Folded blocks]
~~~~~~~~~~~~~~~~~~~~
A deep model repeats one block (a decoder layer) N times. Capturing and
analysing N copies costs N times one. Instead the top-level graph calls an
opaque op, ``fxprune::folded_block(inputs, key)``, where each block ran, and
the block is captured once as its own graph.

* :func:`summarize` analyses the block graph with *open* boundaries
  (``analyze_block``): its inputs get fresh, unpinned axes and its outputs are
  not pinned. The resolved layouts of inputs, outputs and parameters over the
  block's atoms, and each atom's size, pins and flags, are the block's
  summary. The capture stores the summaries, and the block path of every call
  site, as a frozen ``FoldRegistry`` in ``gm.meta[FOLDS_KEY]`` (passes/folds.py).
* The rule of ``folded_block`` instantiates the summary in the top-level axis
  table: one new axis per block atom, the inputs unified with the call site,
  the outputs and parameter uses (under the instance's own names) expressed
  over the new axes. Cost per call site is the number of block atoms, not
  the number of block nodes. The analysis records the site as a frozen
  ``FoldSite`` in the node's ``ChannelMeta.fold``: the layout, in the
  top-level graph, of every block atom.
* The rewrite prunes the instance parameters like any others, then replaces
  each ``folded_block`` node by a call to the block graph rewritten with the
  instance's keep map (passes/rewrite.py, reading ``FoldSite`` only).

Identical summaries are only sound for identical blocks: ``fxprune.capture.folding``
checks module structure and call signature before it reuses one.
"""
from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.fx as fx

from . import registry
from .analysis import analyze_block
from .context import SV, TV, RuleContext, RuleError
from .folds import FOLDS_KEY, BlockAtom, BlockParam, BlockSummary, FoldInfo
from .meta import TensorLayout, get_channel_meta

__all__ = ["summarize", "register_outputs", "folded_block_rule"]

_OUTPUTS: dict = {}  # key -> [(shape, dtype)]: what folded_block returns, for fake/meta execution
_KEYS = itertools.count()


@torch.library.custom_op("fxprune::folded_block", mutates_args=())
def folded_block(xs: list[torch.Tensor], key: int) -> list[torch.Tensor]:
    """Stands for a block captured separately; never runs (the rewrite replaces it)."""
    raise RuntimeError("fxprune::folded_block is a placeholder for a folded block; run the pruned model "
                       "fxprune.apply returns, which calls the block itself")


@folded_block.register_fake
def _folded_block_fake(xs, key):
    device = xs[0].device if xs else torch.device("cpu")
    return [torch.empty(shape, dtype=dtype, device=device) for shape, dtype in _OUTPUTS[key]]


def register_outputs(outputs: list) -> int:
    """A new key whose ``folded_block`` returns tensors of these ``(shape, dtype)``."""
    key = next(_KEYS)
    _OUTPUTS[key] = [(tuple(shape), dtype) for shape, dtype in outputs]
    return key


def summarize(gm: fx.GraphModule, example_inputs: tuple, op_inputs: list, state: set) -> BlockSummary:
    """Analyse a block graph with open boundaries.

    ``example_inputs`` are the graph's flat placeholder values; ``op_inputs`` maps each
    ``folded_block`` input to its placeholder index; ``state`` names the block's own
    parameters and buffers (other tensor attributes are graph constants).
    """
    result = analyze_block(gm, example_inputs)
    outs = [o for o in result.outputs if not _is_constant(o)]
    if not all(isinstance(o, TensorLayout) for o in outs):
        raise RuleError("a folded block must return tensors and constants only")
    inputs = tuple(result.inputs[i].dims for i in op_inputs)
    outputs = tuple((o.shape, o.dims) for o in outs)
    params, seen = [], set()
    for n in gm.graph.nodes:
        for use in get_channel_meta(n).params:
            if use.target not in seen:
                seen.add(use.target)
                params.append(BlockParam(use.target, use.dims, use.consumer_dims, use.target in state))
    atoms: dict = {}
    for dims in (*inputs, *(d for _, d in outputs), *(p.dims for p in params)):
        for layout in dims:
            for a in layout.atoms():
                if a.id not in atoms:
                    axes = result.axes
                    atoms[a.id] = BlockAtom(a.size, tuple(axes.pin_reasons(a.id)), axes.is_dynamic(a.id),
                                            axes.mixing_reason(a.id))
    return BlockSummary(gm, inputs, outputs, tuple(params), tuple(atoms.items()), tuple(result.unknown))


def _is_constant(leaf: Any) -> bool:
    """Output leaves that are neither tensors nor numbers (a number may be a size of a pruned dim)."""
    return not isinstance(leaf, (TensorLayout, int, float, bool, torch.SymInt))


def _instantiate(ctx: RuleContext, info: FoldInfo, path: str, inputs: list) -> SV:
    axes, an, summary = ctx.axes, ctx.analyzer, info.summary
    amap: dict = {}  # block atom -> top-level axis
    for b, atom in summary.atoms:
        a = axes.new(atom.size, dynamic=atom.dynamic)
        for reason in atom.pins:
            axes.pin(((a,),), f"{reason} (in folded block {path})")
        if atom.mixing:
            axes.mark_mixing(((a,),), atom.mixing)
        amap[b] = a
    for tv, dims in zip(inputs, summary.inputs):
        for d, layout in zip(tv.dims, dims):
            ctx.unify(d, axes.embed(layout, amap))
    for p in summary.params:
        embedded = tuple(axes.embed(layout, amap) for layout in p.dims)
        if not p.is_state:  # a constant of the block graph: coupled to channels, never pruned
            for layout in embedded:
                ctx.pin(layout, f"constant tensor '{p.target}' of folded block {path}")
            continue
        full = f"{path}.{p.target}"
        tv = an.param_value(ctx.node, full, an.fetch_attr(full))
        for have, want in zip(tv.dims, embedded):
            ctx.unify(have, want)
        for d in p.consumer_dims:
            an.mark_consumer(tv.source, d)
    ctx.fold = (info, path, amap)
    return SV(tuple(TV(shape, tuple(axes.embed(layout, amap) for layout in dims)) for shape, dims in summary.outputs))


@registry.register(torch.ops.fxprune.folded_block)
def folded_block_rule(ctx: RuleContext):
    """A folded block: its summary instantiated at this call site (Note [Folded blocks])."""
    folds = getattr(ctx.node.graph.owning_module, "meta", {}).get(FOLDS_KEY)
    info = folds and folds.info(ctx.const(1, "key"))
    path = folds and folds.path(ctx.node.name)
    if info is None or path is None:
        raise RuleError("no block summary for this folded_block call")
    inputs = list(ctx.v(ctx.arg(0, "xs")).items)
    if not all(isinstance(x, TV) for x in inputs) or len(inputs) != len(info.summary.inputs):
        raise RuleError("folded_block inputs do not match the block summary")
    return _instantiate(ctx, info, path, inputs)
