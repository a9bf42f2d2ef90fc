"""Resolved layouts: what one tensor dimension is made of, once the analysis is done.

Note [Resolved layouts]
~~~~~~~~~~~~~~~~~~~~~~~
A :class:`Layout` is a concatenation of *segments*; a segment is a row-major
product of *factors*; a factor is an :class:`Atom` (an indivisible axis: its
``id`` names its group) or, for a concatenation nested inside a product, a
``Layout`` itself. A dimension of size 1 is one empty segment; a dimension of
size 0 has no segment.

Layouts are frozen and hashable. Everything that reads a layout goes through
its methods: sizes before and after pruning, the flat indices a pruned tensor
keeps, the coordinate of a group each flat index carries, the atoms, and a
printable form. A *keep* map is ``{atom id: 1-D LongTensor of kept
coordinates, in order}``; atoms it does not name keep every coordinate.

    >>> g, h = Atom(0, 2), Atom(1, 3)
    >>> lay = Layout(((g, h), (Atom(2, 4),)))          # (G0 x G1) ++ [4]
    >>> lay.size, lay.new_size({1: torch.tensor([2, 0])})
    (10, 8)
    >>> lay.flat_indices({1: torch.tensor([2, 0])}).tolist()
    [2, 0, 5, 3, 6, 7, 8, 9]
    >>> lay.coordinate_map(1).tolist()
    [0, 1, 2, 0, 1, 2, -1, -1, -1, -1]
    >>> lay.format(lambda a: f"G{a.id}" if a.id < 2 else f"[{a.size}]")
    'G0 x G1 ++ [4]'
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Union

import torch

__all__ = ["Atom", "Layout", "Factor"]


@dataclass(frozen=True, slots=True)
class Atom:
    """One indivisible axis of the final analysis.

    ``id`` names its group; ``pinned`` says the analysis forbids pruning it
    (a graph input or output, an op without a rule, ...).
    """

    id: int
    size: int
    pinned: bool = False


def _default_name(a: Atom) -> str:
    return f"[{a.size}]"


@dataclass(frozen=True, slots=True)
class Layout:
    """Segments (concatenated) of factors (multiplied, row-major). See Note [Resolved layouts]."""

    segments: tuple  # tuple[tuple[Factor, ...], ...]
    size: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", sum(_product(f.size for f in seg) for seg in self.segments))

    # -- structure -------------------------------------------------------------------
    def atoms(self) -> Iterator[Atom]:
        """Every atom occurrence, nested layouts included, in order."""
        for seg in self.segments:
            for f in seg:
                if isinstance(f, Atom):
                    yield f
                else:
                    yield from f.atoms()

    def products(self) -> Iterator[tuple]:
        """The atom factors of every segment (nested layouts' segments too): the products of atoms."""
        for seg in self.segments:
            yield tuple(f for f in seg if isinstance(f, Atom))
            for f in seg:
                if not isinstance(f, Atom):
                    yield from f.products()

    def positions(self, atom: int, prefix: tuple = ()) -> tuple:
        """Where ``atom`` sits: ``(segment, factor, segment, factor, ...)`` paths, one per occurrence."""
        out = []
        for i, seg in enumerate(self.segments):
            for j, f in enumerate(seg):
                if isinstance(f, Atom):
                    if f.id == atom:
                        out.append(prefix + (i, j))
                else:
                    out.extend(f.positions(atom, prefix + (i, j)))
        return tuple(out)

    # -- pruning -----------------------------------------------------------------------
    def touches(self, keep: Mapping) -> bool:
        """Whether ``keep`` edits any atom of this layout."""
        return any(a.id in keep for a in self.atoms())

    def new_size(self, keep: Mapping) -> int:
        """The size once ``keep`` is applied."""
        return sum(_product(_new_size(f, keep) for f in seg) for seg in self.segments)

    def flat_indices(self, keep: Mapping) -> torch.Tensor:
        """Flat original indices of the kept coordinates, in their new order.

        Segments in order, products row-major.
        """
        pieces, offset = [], 0
        for seg in self.segments:
            idx = torch.zeros(1, dtype=torch.long)
            for f in seg:
                kept = _kept(f, keep)
                idx = (idx[:, None] * f.size + kept[None, :]).reshape(-1)
            pieces.append(idx + offset)
            offset += _product(f.size for f in seg)
        return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)

    def coordinate_map(self, atom: int) -> torch.Tensor:
        """For each flat index, the coordinate of ``atom`` it belongs to (-1: none)."""
        pieces = []
        for seg in self.segments:
            total = _product(f.size for f in seg)
            idx, stride = torch.arange(total), total
            coord = torch.full((total,), -1, dtype=torch.long)
            for f in seg:
                stride //= f.size
                local = (idx // stride) % f.size
                if isinstance(f, Atom):
                    if f.id == atom:
                        coord = local
                else:
                    sub = f.coordinate_map(atom)
                    if (sub >= 0).any():
                        coord = sub[local]
            pieces.append(coord)
        return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)

    # -- printing ------------------------------------------------------------------------
    def format(self, name: Callable[[Atom], str] = _default_name) -> str:
        """``++`` concatenates segments, ``x`` multiplies factors; ``name`` prints an atom."""
        segs = []
        for seg in self.segments:
            parts = [name(f) if isinstance(f, Atom) else f"({f.format(name)})" for f in seg]
            segs.append(" x ".join(parts) if parts else "[1]")
        return " ++ ".join(segs) if segs else "[0]"

    def __str__(self) -> str:
        return self.format()


Factor = Union[Atom, Layout]


def _product(sizes) -> int:
    n = 1
    for s in sizes:
        n *= s
    return n


def _new_size(f: Factor, keep: Mapping) -> int:
    if isinstance(f, Atom):
        return len(keep[f.id]) if f.id in keep else f.size
    return f.new_size(keep)


def _kept(f: Factor, keep: Mapping) -> torch.Tensor:
    if isinstance(f, Atom):
        kept = keep.get(f.id)
        return torch.arange(f.size) if kept is None else kept
    return f.flat_indices(keep)
