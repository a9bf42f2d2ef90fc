"""Channel metadata the analysis pass writes on ``fx.Node.meta``.

Analysis and rewrite talk only through these frozen records, stored under
``node.meta[META_KEY]`` and read through :func:`get_channel_meta`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch.fx as fx

from . import keys
from .errors import MissingAnalysisError
from .layout import Layout

__all__ = [
    "META_KEY",
    "TensorLayout",
    "ParamUse",
    "ArgEdit",
    "AttrEdit",
    "ChannelMeta",
    "SizeRead",
    "get_channel_meta",
    "MissingAnalysisError",
    "PRODUCES",
    "CONSUMES",
]

META_KEY = keys.META
PRODUCES, CONSUMES = "produces", "consumes"


@dataclass(frozen=True, slots=True)
class TensorLayout:
    """The resolved layout of every dimension of one tensor value."""

    shape: tuple
    dims: tuple  # tuple[Layout, ...]


@dataclass(frozen=True, slots=True)
class ParamUse:
    """A parameter, buffer or tensor attribute read by a node.

    ``target`` is the attribute's qualified name on the root module;
    ``consumer_dims`` are the dimensions contracted against an activation
    (the removal oracle zeroes them).
    """

    target: str
    dims: tuple  # tuple[Layout, ...]
    consumer_dims: frozenset = frozenset()

    def role(self, dim: int) -> str:
        """``"consumes"`` where dim ``dim`` is contracted against an activation that carries its
        coordinates (conv in-channels, linear columns), else ``"produces"`` (out-channels, rows,
        biases, norm parameters: removing a coordinate removes what it produces)."""
        return CONSUMES if dim in self.consumer_dims else PRODUCES


_EDIT_ARITY = {"size": 1, "constant": 1, "slice": 2}  # "sizes" and "stop": any number


@dataclass(frozen=True, slots=True)
class ArgEdit:
    """A size literal the rewrite recomputes.

    ``path`` indexes into ``(node.args, node.kwargs)``: ``("args", 1, 2)`` is
    the third element of the second positional argument. ``layouts`` is
    always a tuple of Layouts; ``kind`` says what the argument becomes:

    * ``"size"``: the new size of the one layout;
    * ``"sizes"``: the list of the new sizes of each layout;
    * ``"stop"``: an end offset, the sum of the new sizes;
    * ``"slice"``: a slice over (before, inside) layouts;
    * ``"constant"``: ``value``, where the one layout is pruned.
    """

    path: tuple
    layouts: tuple  # tuple[Layout, ...]
    kind: str = "size"
    value: Any = None

    def __post_init__(self) -> None:
        n = _EDIT_ARITY.get(self.kind)
        if self.kind not in ("sizes", "stop") and n is None:
            raise ValueError(f"unknown ArgEdit kind {self.kind!r}")
        if n is not None and len(self.layouts) != n:
            raise ValueError(f"an ArgEdit of kind {self.kind!r} holds {n} layout(s), got {len(self.layouts)}")


@dataclass(frozen=True, slots=True)
class AttrEdit:
    """A module attribute the rewrite recomputes from the new sizes of ``layouts``.

    ``many`` says the attribute is a sequence of sizes (``normalized_shape``);
    otherwise ``layouts`` holds one layout and the attribute is its new size.
    """

    name: str
    layouts: tuple  # tuple[Layout, ...]
    many: bool = False

    def __post_init__(self) -> None:
        if not self.many and len(self.layouts) != 1:
            raise ValueError(f"attribute {self.name!r}: a single size needs one layout, got {len(self.layouts)}")


@dataclass(frozen=True, slots=True)
class SizeRead:
    """A size read at run time (``x.shape[1]``): the dimension and its original value; ``dynamic``
    where the dimension also holds run-time axes (batch x heads: Note [Run-time sizes] in
    passes/rules/common.py), so its original value is rescaled at run time, not frozen."""

    layout: Layout
    value: int
    dynamic: bool = False


@dataclass(frozen=True)
class ChannelMeta:
    """Everything the rewrite needs to know about one node: plain frozen data.

    ``value`` is the TensorLayout of the output, a tuple of them, or None for
    Python values; ``produces_tensor`` says whether there is one. ``fold`` is
    set on a folded block's call site (a ``FoldSite``, passes/folds.py).
    """

    rule: str
    produces_tensor: bool = False
    params: tuple = ()  # tuple[ParamUse, ...]
    arg_edits: tuple = ()  # tuple[ArgEdit, ...]
    attr_edits: tuple = ()  # tuple[AttrEdit, ...]
    retarget: Optional[Any] = None
    size_read: Optional[SizeRead] = None
    fold: Optional[Any] = None
    notes: tuple = field(default=())
    value: Any = field(default=None, repr=False)


def get_channel_meta(node: fx.Node) -> ChannelMeta:
    """The analysis metadata of ``node``; raises if the analysis pass has not run."""
    try:
        return node.meta[META_KEY]
    except KeyError:
        raise MissingAnalysisError(
            f"node {node.format_node()} has no '{META_KEY}' metadata: run the channel "
            "analysis pass (fxprune.passes.analyze_graph, fxprune.passes.infra.ChannelAnalysisPass "
            "or fxprune.analyze) on this exact graph before the rewrite pass"
        ) from None
