"""``fxprune.passes.Layout``: every walker against a brute-force enumeration of the flat indices.

The reference enumerates, for every flat index of a layout, which coordinate of
which atom it carries (segments concatenated, products row-major), and derives
sizes, kept indices and coordinate maps from that list by counting, filtering
and sorting: a different algorithm from the walkers under test.
"""
import itertools
import pickle

import pytest
import torch
from hypothesis import given, settings, strategies as st

from fxprune.passes import Atom, AxisTable, Layout

SETTINGS = settings(derandomize=True, max_examples=80, deadline=None)


# -- reference -------------------------------------------------------------------------------
def entries(layout: Layout) -> list:
    """Per flat index: ((atom id, coordinate), ...) along the row-major path, nested factors inlined."""
    out = []
    for seg in layout.segments:
        per_factor = [[((f.id, c),) for c in range(f.size)] if isinstance(f, Atom) else entries(f) for f in seg]
        out.extend(sum(combo, ()) for combo in itertools.product(*per_factor))
    return out


def kept(entry: tuple, keep: dict) -> bool:
    return all(c in keep[a].tolist() for a, c in entry if a in keep)


def rank_key(layout: Layout, i: int, keep: dict) -> tuple:
    """Where flat index ``i`` lands after pruning: (segment, then each factor's position in its keep order)."""
    offset = 0
    for s, seg in enumerate(layout.segments):
        sizes = [f.size for f in seg]
        n = 1
        for size in sizes:
            n *= size
        if i < offset + n:
            local, key = i - offset, []
            for f, size in zip(seg, sizes):
                n //= size
                c, local = divmod(local, n)
                if isinstance(f, Atom):
                    key.append(keep[f.id].tolist().index(c) if f.id in keep else c)
                else:
                    order = sorted((j for j, e in enumerate(entries(f)) if kept(e, keep)),
                                   key=lambda j: rank_key(f, j, keep))
                    key.append(order.index(c))
            return (s, *key)
        offset += n
    raise IndexError(i)


# -- strategies ----------------------------------------------------------------------------------
ATOMS = [Atom(i, n) for i, n in enumerate([2, 3, 1, 4, 2])]


@st.composite
def layouts(draw, depth=2):
    segments = []
    for _ in range(draw(st.integers(0 if depth == 2 else 1, 3))):
        factors = draw(st.lists(st.sampled_from(ATOMS), max_size=3, unique=True))
        if depth and draw(st.booleans()):
            nested = draw(layouts(depth=depth - 1))
            used = {a.id for a in nested.atoms()}
            factors = [f for f in factors if f.id not in used]
            factors.insert(draw(st.integers(0, len(factors))), nested)
        segments.append(tuple(factors))
    return Layout(tuple(segments))


@st.composite
def keeps(draw):
    keep = {}
    for a in ATOMS:
        if draw(st.booleans()):
            n = draw(st.integers(1, a.size))
            keep[a.id] = torch.tensor(draw(st.permutations(range(a.size)))[:n])
    return keep


# -- the walkers -------------------------------------------------------------------------------
@SETTINGS
@given(layouts(), keeps())
def test_sizes_and_flat_indices_match_the_enumeration(layout, keep):
    flat = entries(layout)
    assert layout.size == len(flat)
    survivors = [i for i, e in enumerate(flat) if kept(e, keep)]
    assert layout.new_size(keep) == len(survivors)
    expected = sorted(survivors, key=lambda i: rank_key(layout, i, keep))
    assert layout.flat_indices(keep).tolist() == expected
    assert layout.flat_indices({}).tolist() == list(range(len(flat)))
    assert layout.touches(keep) == any(a in keep for e in flat for a, _ in e)


@SETTINGS
@given(layouts())
def test_coordinate_map_and_atoms_match_the_enumeration(layout):
    flat = entries(layout)
    for a in ATOMS:
        expected = [dict(e).get(a.id, -1) for e in flat]
        assert layout.coordinate_map(a.id).tolist() == expected
    assert {a.id for a in layout.atoms()} >= {i for e in flat for i, _ in e}


def test_products_positions_and_format():
    g, h, k = Atom(0, 2), Atom(1, 3), Atom(2, 4)
    inner = Layout(((h,), (k,)))
    lay = Layout(((g, inner), (k, h)))
    assert list(lay.products()) == [(g,), (h,), (k,), (k, h)]
    assert lay.positions(1) == ((0, 1, 0, 0), (1, 1))
    assert lay.format() == "[2] x ([3] ++ [4]) ++ [4] x [3]"
    assert lay.format(lambda a: f"G{a.id}") == "G0 x (G1 ++ G2) ++ G2 x G1"
    assert str(Layout(((),))) == "[1]" and str(Layout(())) == "[0]"


def test_layouts_are_frozen_hashable_values():
    a = Layout(((Atom(0, 2), Atom(1, 3)),))
    b = Layout(((Atom(0, 2), Atom(1, 3)),))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    with pytest.raises(AttributeError):
        a.segments = ()
    assert pickle.loads(pickle.dumps(a)) == a and pickle.loads(pickle.dumps(a)).size == 6


def test_resolve_gives_layouts_with_pins_and_embed_inverts_it():
    t = AxisTable()
    c, hw = t.fresh(4), t.fresh(9)
    flat = t.product(c, hw)
    t.pin(hw, "computed")
    lay = t.resolve(flat)
    assert isinstance(lay, Layout) and lay.size == 36
    (ca, hwa), = lay.segments
    assert (ca.size, ca.pinned, hwa.size, hwa.pinned) == (4, False, 9, True)
    other = AxisTable()
    amap = {ca.id: other.new(4), hwa.id: other.new(9)}
    assert other.resolve(other.embed(lay, amap)).format() == "[4] x [9]"
