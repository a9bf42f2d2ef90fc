"""Channel axes: union-find with refinement.

Note [Channel axes]
~~~~~~~~~~~~~~~~~~~
Every prunable tensor dimension is described by a *layout*: a concatenation
of *segments*, each segment a row-major product of *axes*. An axis is a set of
interchangeable coordinates; keeping any subset of them, in any order, is a
legal edit of every tensor dimension that carries the axis.

Raw layouts are ``tuple[tuple[int, ...], ...]`` (segments of axis ids). A
dimension of size 1 is a single empty segment ``((),)``: it carries no axis.

Op rules state equalities between layouts (``AxisTable.unify``). Equal axes
are merged; when two layouts of one dimension are segmented differently, an
axis is *refined*: it gets a definition, a raw layout over fresh sub-axes,
either a product (one segment, several axes) or a sum (several segments).
Where no common refinement exists, every axis involved is *pinned*: it will
never be pruned. Pinning is how the analysis stays sound on what it does not
understand.

After analysis, ``resolve`` turns a raw layout into a frozen
:class:`~fxprune.passes.layout.Layout` over *atoms* (root axes without
definition; see passes/layout.py). Atoms that are not pinned and have at least
two coordinates are the pruning groups. ``embed`` is the way back: a resolved
layout over another table's atoms (a folded block's) as a raw layout here.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from .layout import Atom, Factor, Layout

__all__ = ["AxisTable", "RawLayout", "UNIT"]

RawLayout = tuple  # tuple[tuple[int, ...], ...]: segments of axis ids
UNIT: RawLayout = ((),)
_MAX_REASONS = 4


class AxisTable:
    """Union-find over axes with sum/product refinement and pinning."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._size: list[int] = []
        self._defn: list[RawLayout | None] = []
        self._pinned: list[list[str] | None] = []
        self._dynamic: list[bool] = []
        self._mixing: list[str | None] = []

    # -- creation ---------------------------------------------------------
    def new(self, size: int, *, pinned: str | None = None, dynamic: bool = False) -> int:
        a = len(self._parent)
        self._parent.append(a)
        self._size.append(size)
        self._defn.append(None)
        self._pinned.append([pinned] if pinned else None)
        self._dynamic.append(dynamic)
        self._mixing.append(None)
        return a

    def fresh(self, size: int, *, pinned: str | None = None, dynamic: bool = False) -> RawLayout:
        """A layout for a dimension of ``size`` fresh coordinates."""
        if size == 0:
            return ()
        if size == 1:
            return UNIT
        return ((self.new(size, pinned=pinned, dynamic=dynamic),),)

    def product(self, *layouts: RawLayout) -> RawLayout:
        """The row-major product of several dimensions (as ``flatten`` makes)."""
        segs: list = [()]
        for layout in layouts:
            if layout == UNIT:
                continue
            if len(layout) == 1:
                segs = [s + layout[0] for s in segs]
            elif segs == [()]:
                segs = list(layout)
            else:
                opaque = self.new(self.layout_size(layout))
                self._defn[opaque] = tuple(layout)
                segs = [s + (opaque,) for s in segs]
        return tuple(segs)

    # -- queries ----------------------------------------------------------
    def find(self, a: int) -> int:
        parent = self._parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return root

    def size(self, a: int) -> int:
        return self._size[a]

    def is_pinned(self, a: int) -> bool:
        return self._pinned[self.find(a)] is not None

    def pin_reasons(self, a: int) -> list[str]:
        return list(self._pinned[self.find(a)] or ())

    def is_dynamic(self, a: int) -> bool:
        return self._dynamic[self.find(a)]

    def mixing_reason(self, a: int) -> str | None:
        return self._mixing[self.find(a)]

    def segment_size(self, seg: Iterable[int]) -> int:
        n = 1
        for a in seg:
            n *= self._size[a]
        return n

    def layout_size(self, layout: RawLayout) -> int:
        return sum(self.segment_size(s) for s in layout)

    def atoms(self, layout: RawLayout) -> list[int]:
        """All atoms (roots without definition) a layout expands to."""
        out: list[int] = []
        for seg in layout:
            for a in seg:
                r = self.find(a)
                d = self._defn[r]
                if d is None:
                    out.append(r)
                else:
                    out.extend(self.atoms(d))
        return out

    # -- flags --------------------------------------------------------------
    def pin(self, layout: RawLayout, reason: str) -> None:
        for seg in layout:
            for a in seg:
                self._pin_axis(a, reason)

    def _pin_axis(self, a: int, reason: str) -> None:
        r = self.find(a)
        reasons = self._pinned[r]
        if reasons is None:
            self._pinned[r] = [reason]
        elif len(reasons) < _MAX_REASONS and reason not in reasons:
            reasons.append(reason)
        d = self._defn[r]
        if d is not None and reasons is None:
            self.pin(d, reason)

    def mark_dynamic(self, layout: RawLayout) -> None:
        for a in self.atoms(layout):
            self._dynamic[a] = True

    def mark_mixing(self, layout: RawLayout, reason: str) -> None:
        """Record that an op mixes the coordinates of these axes (norms, reductions)."""
        for a in self.atoms(layout):
            if self._mixing[a] is None:
                self._mixing[a] = reason

    # -- refinement -----------------------------------------------------------
    def _refine(self, a: int, sizes: list[int], as_sum: bool) -> list[int]:
        r = self.find(a)
        assert self._defn[r] is None, "refining an axis that already has a definition"
        reasons = self._pinned[r]
        subs = [self.new(n, dynamic=self._dynamic[r]) for n in sizes]
        for s in subs:
            if reasons is not None:
                self._pinned[s] = list(reasons)
            self._mixing[s] = self._mixing[r]
        self._defn[r] = tuple((s,) for s in subs) if as_sum else (tuple(subs),)
        return subs

    # -- expansion ------------------------------------------------------------
    def expand(self, layout: RawLayout) -> list[list[int]]:
        """Canonical sum-of-products form over roots, without size-1 factors.

        Product definitions are spliced in; a sum definition in the leading
        position of a product is distributed (``(A1 ++ A2) x B`` is
        ``A1 x B ++ A2 x B``); elsewhere it stays one opaque factor.
        """
        out: list[list[int]] = []
        for seg in layout:
            out.extend(self._expand_segment(seg))
        return out

    def _expand_segment(self, seg: Iterable[int]) -> list[list[int]]:
        parts: list[list[int]] = [[]]
        for a in seg:
            r = self.find(a)
            if self._size[r] == 1:
                continue
            d = self._defn[r]
            if d is None:
                for p in parts:
                    p.append(r)
                continue
            sub = self.expand(d)
            if len(sub) == 1:
                for p in parts:
                    p.extend(sub[0])
            elif len(parts) == 1 and not parts[0]:
                parts = [list(s) for s in sub]
            else:
                for p in parts:
                    p.append(r)
        return parts

    # -- unification ------------------------------------------------------------
    def unify(self, l1: RawLayout, l2: RawLayout, reason: str) -> bool:
        """State that two layouts describe the same coordinates, in order.

        Returns False (and pins every axis involved) where no common
        refinement exists.
        """
        if l1 == l2:
            return True
        if self.layout_size(l1) != self.layout_size(l2):
            self.pin(l1, reason)
            self.pin(l2, reason)
            return False
        pairs = self._align(self.expand(l1), self.expand(l2))
        ok = pairs is not None and all(self._unify_products(a, b) for a, b in pairs)
        if not ok:
            self.pin(l1, reason)
            self.pin(l2, reason)
        return ok

    def _align(self, s1: list[list[int]], s2: list[list[int]]):
        """Pair up segments of equal size, splitting segments where needed."""
        s1, s2 = list(reversed(s1)), list(reversed(s2))  # use as stacks
        pairs = []
        while s1 and s2:
            a, b = s1.pop(), s2.pop()
            na, nb = self.segment_size(a), self.segment_size(b)
            if na == nb:
                pairs.append((a, b))
                continue
            if na < nb:
                split = self._split_segment(b, na)
                if split is None:
                    return None
                pairs.append((a, split[0]))
                s2.append(split[1])
            else:
                split = self._split_segment(a, nb)
                if split is None:
                    return None
                pairs.append((split[0], b))
                s1.append(split[1])
        return pairs if not s1 and not s2 else None

    def _split_segment(self, seg: list[int], k: int):
        """Split a product segment after its first ``k`` coordinates."""
        if not seg:
            return None
        head = self.find(seg[0])
        inner = self.segment_size(seg[1:])
        if k % inner or self._defn[head] is not None:
            return None
        q = k // inner
        first, second = self._refine(head, [q, self._size[head] - q], as_sum=True)
        tail = list(seg[1:])
        return ([first] if q > 1 else []) + tail, ([second] if self._size[second] > 1 else []) + tail

    def _unify_products(self, a: list[int], b: list[int]) -> bool:
        a, b = list(a), list(b)
        i = j = 0
        while i < len(a) and j < len(b):
            x, y = self.find(a[i]), self.find(b[j])
            sx, sy = self._size[x], self._size[y]
            if x == y or sx == sy:
                if x != y and not self._union(x, y):
                    return False
                i += 1
                j += 1
            elif sx > sy and sx % sy == 0 and self._defn[x] is None:
                head, a[i] = self._refine(x, [sy, sx // sy], as_sum=False)
                self._union(head, y)
                j += 1
            elif sy > sx and sy % sx == 0 and self._defn[y] is None:
                head, b[j] = self._refine(y, [sx, sy // sx], as_sum=False)
                self._union(x, head)
                i += 1
            else:
                return False
        return i == len(a) and j == len(b)

    def _union(self, x: int, y: int) -> bool:
        x, y = self.find(x), self.find(y)
        if x == y:
            return True
        if self._defn[x] is None and self._defn[y] is not None:
            x, y = y, x
        dx, dy = self._defn[x], self._defn[y]
        self._parent[y] = x
        self._dynamic[x] = self._dynamic[x] or self._dynamic[y]
        self._mixing[x] = self._mixing[x] or self._mixing[y]
        px, py = self._pinned[x], self._pinned[y]
        if py is not None:
            for reason in py:
                self._pin_axis(x, reason)
                if dx is not None:
                    self.pin(dx, reason)
        elif px is not None and dy is not None:
            for reason in px:
                self.pin(dy, reason)
        if dy is not None:
            return self.unify(dx, dy, "conflicting refinements")
        return True

    # -- resolution -------------------------------------------------------------
    def resolve(self, layout: RawLayout) -> Layout:
        """Freeze a raw layout into segments of Atoms (and nested sums)."""
        return Layout(tuple(tuple(self._resolve_factor(r) for r in seg) for seg in self.expand(layout)))

    def _resolve_factor(self, r: int) -> Factor:
        d = self._defn[r]
        return Atom(r, self._size[r], self._pinned[r] is not None) if d is None else self.resolve(d)

    def embed(self, layout: Layout, amap: Mapping[int, int]) -> RawLayout:
        """A resolved layout over foreign atoms as a raw layout over this table's axes ``amap[atom id]``."""
        segs: list = []
        for seg in layout.segments:
            factors = [((amap[f.id],),) if isinstance(f, Atom) else self.embed(f, amap) for f in seg]
            segs.extend(self.product(*factors) if factors else [()])
        return tuple(segs)
