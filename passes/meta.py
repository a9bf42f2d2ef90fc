"""Channel metadata the analysis pass writes on ``fx.Node.meta``.

Analysis and rewrite talk only through these frozen records, stored under
``node.meta[META_KEY]`` and read through :func:`get_channel_meta`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Optional

import torch.fx as fx

from .axes import DimLayout

__all__ = [
    "META_KEY",
    "TensorLayout",
    "ParamUse",
    "ArgEdit",
    "ChannelMeta",
    "SizeRead",
    "get_channel_meta",
    "MissingAnalysisError",
]

META_KEY = "fxprune"


@dataclass(frozen=True, slots=True)
class TensorLayout:
    """The resolved layout of every dimension of one tensor value."""

    shape: tuple
    dims: tuple  # tuple[DimLayout, ...]


@dataclass(frozen=True, slots=True)
class ParamUse:
    """A parameter, buffer or tensor attribute read by a node.

    ``target`` is the attribute's qualified name on the root module;
    ``consumer_dims`` are the dimensions contracted against an activation
    (the removal oracle zeroes them).
    """

    target: str
    dims: tuple  # tuple[DimLayout, ...]
    consumer_dims: frozenset = frozenset()


@dataclass(frozen=True, slots=True)
class ArgEdit:
    """A size literal the rewrite recomputes.

    ``path`` indexes into ``(node.args, node.kwargs)``: ``("args", 1, 2)`` is
    the third element of the second positional argument. ``layouts`` is one
    DimLayout (the new value is its new size) or a tuple of them (a list of
    sizes, or a slice's (before, inside) layouts).
    """

    path: tuple
    layouts: Any
    kind: str = "size"  # "size" | "sizes" | "slice" | "constant"
    value: Any = None  # for "constant": what the argument becomes where the layouts are pruned


@dataclass(frozen=True, slots=True)
class SizeRead:
    """A size read at run time (``x.shape[1]``): the dimension and its original value."""

    layout: DimLayout
    value: int


@dataclass(frozen=True)
class ChannelMeta:
    """Everything the rewrite needs to know about one node.

    ``value`` (the TensorLayout of the output, a tuple of them, or None for
    Python values) is resolved on first access; ``produces_tensor`` says
    whether there is one without resolving it.
    """

    rule: str
    produces_tensor: bool = False
    params: tuple = ()  # tuple[ParamUse, ...]
    arg_edits: tuple = ()  # tuple[ArgEdit, ...]
    attr_edits: tuple = ()  # tuple[(attr name, DimLayout | tuple[DimLayout]), ...]
    retarget: Optional[Any] = None
    size_read: Optional[SizeRead] = None
    notes: tuple = field(default=())
    resolver: Optional[Callable[[], Any]] = field(default=None, repr=False, compare=False)

    @cached_property
    def value(self) -> Any:
        return None if self.resolver is None else self.resolver()


class MissingAnalysisError(RuntimeError):
    pass


def get_channel_meta(node: fx.Node) -> ChannelMeta:
    """The analysis metadata of ``node``; raises if the analysis pass has not run."""
    try:
        return node.meta[META_KEY]
    except KeyError:
        raise MissingAnalysisError(
            f"node {node.format_node()} has no '{META_KEY}' metadata: run the channel "
            "analysis pass (fxprune.passes.ChannelAnalysis or fxprune.analyze) on this "
            "exact graph before the rewrite pass"
        ) from None
