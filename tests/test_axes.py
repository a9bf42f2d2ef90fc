"""``AxisTable`` on its own: union, refinement into sums and products, pinning, resolution.

Each test states couplings directly on a table, as op rules do, and reads the
outcome through ``resolve`` (the frozen ``Layout`` the rewrite sees).
"""
from fxprune.passes import Atom, AxisTable, Layout


def atoms(table: AxisTable, raw) -> list:
    return list(table.resolve(raw).atoms())


def shape(layout: Layout) -> list:
    """Segments as lists of factor sizes; nested layouts as their own shape."""
    return [[f.size if isinstance(f, Atom) else shape(f) for f in seg] for seg in layout.segments]


def test_fresh_layouts_and_unit_dims():
    t = AxisTable()
    assert t.fresh(0) == () and t.fresh(1) == ((),)
    assert t.resolve(t.fresh(1)) == Layout(((),)) and t.resolve(t.fresh(1)).size == 1
    assert t.resolve(t.fresh(0)).size == 0
    (a,) = atoms(t, t.fresh(5))
    assert a.size == 5 and not a.pinned


def test_union_merges_equal_axes_and_keeps_others_apart():
    t = AxisTable()
    a, b, c = t.fresh(4), t.fresh(4), t.fresh(4)
    assert t.unify(a, b, "add")
    assert atoms(t, a) == atoms(t, b) != atoms(t, c)
    assert t.find(a[0][0]) == t.find(b[0][0]) != t.find(c[0][0])


def test_unequal_sizes_pin_both_sides():
    t = AxisTable()
    a, b, c = t.fresh(4), t.fresh(6), t.fresh(4)
    assert not t.unify(a, b, "mismatch")
    assert t.is_pinned(a[0][0]) and t.is_pinned(b[0][0]) and not t.is_pinned(c[0][0])
    assert t.pin_reasons(a[0][0]) == ["mismatch"]


def test_refinement_into_a_product():
    t = AxisTable()
    embed, heads, head_dim = t.fresh(6), t.fresh(2), t.fresh(3)
    assert t.unify(embed, t.product(heads, head_dim), "reshape")
    lay = t.resolve(embed)
    assert shape(lay) == [[2, 3]]
    assert list(lay.atoms()) == atoms(t, heads) + atoms(t, head_dim)


def test_refinement_into_a_sum_at_every_split_point():
    t = AxisTable()
    x = t.fresh(6)
    left, right = t.fresh(2), t.fresh(4)
    assert t.unify(x, left + right, "cat")  # x = [2] ++ [4]
    first, second = t.fresh(4), t.fresh(2)
    assert t.unify(x, first + second, "split")  # x = [4] ++ [2] as well: 2 ++ 2 ++ 2
    assert shape(t.resolve(x)) == [[2], [2], [2]]
    assert shape(t.resolve(right)) == [[2], [2]] and shape(t.resolve(first)) == [[2], [2]]
    assert atoms(t, right)[0] == atoms(t, first)[1]  # the middle piece is one axis


def test_sum_inside_a_product_stays_nested_and_distributes_in_front():
    t = AxisTable()
    x, c = t.fresh(6), t.fresh(3)
    t.unify(x, t.fresh(2) + t.fresh(4), "cat")
    behind = t.resolve(t.product(c, x))  # C x (X1 ++ X2): one segment, a nested concatenation
    assert shape(behind) == [[3, [[2], [4]]]] and behind.size == 18
    in_front = t.resolve(t.product(x, c))  # (X1 ++ X2) x C = X1 x C ++ X2 x C
    assert shape(in_front) == [[2, 3], [4, 3]]


def test_pinning_propagates_through_unions_and_refinements():
    t = AxisTable()
    a, b, other = t.fresh(6), t.fresh(6), t.fresh(6)
    t.unify(a, b, "add")
    t.pin(b, "graph output")
    assert all(x.pinned for x in atoms(t, a)) and not any(x.pinned for x in atoms(t, other))
    c = t.fresh(6)
    t.unify(c, t.product(t.fresh(2), t.fresh(3)), "reshape")
    t.pin(c, "unknown op")  # pinning a refined axis pins its parts
    assert [x.pinned for x in atoms(t, c)] == [True, True]
    d = t.fresh(4)
    t.pin(d, "graph input")
    t.unify(d, t.fresh(2) + t.fresh(2), "split")  # refining a pinned axis: the parts stay pinned
    assert [x.pinned for x in atoms(t, d)] == [True, True]
    assert t.pin_reasons(atoms(t, d)[0].id) == ["graph input"]


def test_a_product_and_a_sum_without_common_refinement_pin():
    t = AxisTable()
    x = t.fresh(6)
    t.unify(x, t.product(t.fresh(2), t.fresh(3)), "heads")  # 2 x 3
    assert not t.unify(x, t.fresh(2) + t.fresh(4), "cat")  # 2 ++ 4 splits a head in two
    assert all(a.pinned for a in atoms(t, x))


def test_conflicting_refinements_met_in_a_union_pin():
    t = AxisTable()
    x, y = t.fresh(6), t.fresh(6)
    x_tail = t.fresh(4)
    t.unify(x, t.fresh(2) + x_tail, "cat")  # x = 2 ++ 4
    t.unify(x_tail, t.product(t.fresh(2), t.fresh(2)), "reshape")  # ... ++ (2 x 2)
    t.unify(y, t.fresh(3) + t.fresh(3), "cat")  # y = 3 ++ 3: cuts a 2 x 2 block after one coordinate
    c1, c2 = t.fresh(5), t.fresh(5)
    assert not t.unify(t.product(c1, x), t.product(c2, y), "mul")  # x and y meet as whole factors
    assert all(a.pinned for a in atoms(t, x)) and all(a.pinned for a in atoms(t, y))
    reasons = {r for a in atoms(t, x) + atoms(t, y) for r in t.pin_reasons(a.id)}
    assert "conflicting refinements" in reasons
    assert atoms(t, c1) == atoms(t, c2)  # what did agree stays unified


def test_flags_survive_unions():
    t = AxisTable()
    a, b = t.fresh(4), t.fresh(4, dynamic=True)
    t.mark_mixing(a, "softmax")
    t.unify(a, b, "add")
    root = atoms(t, a)[0].id
    assert t.is_dynamic(root) and t.mixing_reason(root) == "softmax"
