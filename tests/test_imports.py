"""No import cycle between the rooms of fxprune, nor between the modules of passes/rules.

A room is a sub-package (``calib``, ``capture``, ``checks``, ``hf``, ``policy``, ``tools``,
``passes``), a top-level module (``fxprune.api``, ``fxprune.io``, ...), or the package
facade ``fxprune/__init__.py``. Every import counts, function-level and ``TYPE_CHECKING``
ones included: a lazy import hides an edge from the interpreter, not from the design.
``from pkg import name`` is an edge to the module ``pkg.name`` when there is one, else to ``pkg``.
"""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Edges allowed to close a cycle: none. (The test still checks each listed edge closes a cycle, so
# an entry can never outlive its reason.)
KNOWN_EDGES: set = set()


def _modules() -> dict:
    mods = {}
    for base, pkg in ((ROOT / "fxprune", "fxprune"), (ROOT / "passes", "fxprune.passes")):
        for path in base.rglob("*.py"):
            parts = [p for p in path.relative_to(base).with_suffix("").parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = path
    return mods


def _targets(mods: dict, name: str, path: pathlib.Path, node) -> set:
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in mods}
    base = node.module or ""
    if node.level:
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        here = here[: len(here) - (node.level - 1)]
        base = ".".join(here + ([node.module] if node.module else []))
    out = set()
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in mods:
            out.add(sub)
        elif base in mods:
            out.add(base)
    return out


def module_edges() -> dict:
    mods = _modules()
    edges = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges[name] |= _targets(mods, name, path, node) - {name}
    return edges


def room(mod: str) -> str:
    parts = mod.split(".")
    if len(parts) == 1:
        return "fxprune (facade)"
    if (ROOT / "fxprune" / parts[1]).is_dir() or parts[1] == "passes":
        return parts[1]
    return mod


def _cycles(edges: set) -> list:
    """Strongly connected components (more than one node) of the graph ``{(a, b)}``."""
    succ: dict = {}
    for a, b in edges:
        succ.setdefault(a, set()).add(b)
        succ.setdefault(b, set())
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(succ):
        if v not in index:
            visit(v)
    return out


def _reaches(edges: set, start: str, goal: str) -> bool:
    seen, todo = {start}, [start]
    while todo:
        v = todo.pop()
        if v == goal:
            return True
        for a, b in edges:
            if a == v and b not in seen:
                seen.add(b)
                todo.append(b)
    return False


def _room_edges(mod_edges: dict, skip=frozenset()) -> dict:
    """``{(room a, room b): [module edges]}`` for every import across rooms."""
    out: dict = {}
    for a, targets in mod_edges.items():
        for b in targets:
            if (a, b) not in skip and room(a) != room(b):
                out.setdefault((room(a), room(b)), []).append(f"{a} -> {b}")
    return out


def _report(comps: list, edges: dict) -> str:
    lines = []
    for comp in comps:
        lines.append(f"cycle through {sorted(comp)}:")
        lines += [f"    {e}" for (a, b), es in sorted(edges.items()) if a in comp and b in comp for e in sorted(es)]
    return "\n".join(lines)


def test_no_cycle_between_rooms():
    by_room = _room_edges(module_edges(), skip=KNOWN_EDGES)
    comps = _cycles(set(by_room))
    assert not comps, "import cycle between rooms (move what both need to a room below both):\n" + \
        _report(comps, by_room)


def test_no_cycle_between_rule_modules():
    edges = module_edges()
    rules = {m for m in edges if m.startswith("fxprune.passes.rules.")}
    within = {(a, b) for a in rules for b in edges[a] if b in rules}
    comps = _cycles(within)
    assert not comps, "import cycle in passes/rules:\n" + "\n".join(
        f"    {a} -> {b}" for a, b in sorted(within) if any(a in c and b in c for c in comps))


def test_known_edges_are_still_needed():
    edges = module_edges()
    rooms = set(_room_edges(edges))
    for a, b in sorted(KNOWN_EDGES):
        assert b in edges[a], f"{a} no longer imports {b}: remove the edge from KNOWN_EDGES"
        assert _reaches(rooms, room(b), room(a)), \
            f"{a} -> {b} no longer closes a cycle ({room(b)} does not reach {room(a)}): remove it from KNOWN_EDGES"


def test_passes_import_nothing_above_them():
    edges = module_edges()
    above = sorted(f"{a} -> {b}" for a, ts in edges.items() if room(a) == "passes" for b in ts if room(b) != "passes")
    assert above == [], "fxprune.passes must not import the layers above it"


def test_the_walk_sees_function_level_imports_and_a_planted_cycle(tmp_path):
    edges = module_edges()
    assert "fxprune.checks.inplace" in edges["fxprune.api"]  # imported inside apply()
    assert "fxprune.policy.pruner" in edges["fxprune.tools.cli"]  # imported inside _prune()
    planted = _room_edges({"fxprune.calib.x": {"fxprune.policy.y"}, "fxprune.policy.y": {"fxprune.calib.x"}})
    assert _cycles(set(planted)) == [{"calib", "policy"}]
