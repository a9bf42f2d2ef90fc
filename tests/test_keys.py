"""One spelling of each fxprune metadata key: the constants of fxprune.passes.keys, never string literals."""
import ast
import pathlib
import re

import torch

import fxprune
from fxprune.passes import keys

ROOT = pathlib.Path(__file__).resolve().parents[1]
_NAME = re.compile(r"_?fxprune[._][a-z_]+")


def _docstrings(tree) -> set:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def _stray_literals(bases=(ROOT / "fxprune", ROOT / "passes")) -> list:
    found = []
    for base in bases:
        for path in sorted(base.rglob("*.py")):
            if path == ROOT / "passes" / "keys.py":
                continue
            tree = ast.parse(path.read_text())
            docs = _docstrings(tree)
            for node in ast.walk(tree):
                if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
                        and _NAME.fullmatch(node.value)):
                    found.append(f"{path.relative_to(base.parent)}:{node.lineno}: {node.value!r}")
    return found


def test_no_key_is_spelled_outside_keys_module():
    assert _stray_literals() == [], "use the constants of fxprune.passes.keys"


def test_the_finder_sees_a_stray_literal_but_not_a_docstring(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text('"""Reads ``meta["fxprune.example"]``."""\nx = {}\nx["fxprune_folds"] = 1\n')
    assert _stray_literals([tmp_path / "pkg"]) == ["pkg/m.py:3: 'fxprune_folds'"]


def test_keys_are_distinct_and_documented():
    names = [n for n in keys.__all__]
    values = [getattr(keys, n) for n in names]
    assert len(set(values)) == len(values)
    text = (ROOT / "passes" / "keys.py").read_text()
    for n in names:
        line = next(line for line in text.splitlines() if line.startswith(f"{n} = "))
        assert "  # " in line, f"{n} has no one-line documentation"


def test_results_carry_the_keys():
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = (torch.randn(2, 4),)
    dg = fxprune.analyze(net, x)
    small = fxprune.apply(dg, {dg.groups[0]: [0, 3, 5]})
    assert small.meta[keys.CERTIFICATE] is getattr(small, keys.CERTIFICATE_ATTR)
    args, kwargs = small.meta[keys.EXAMPLE]
    assert torch.equal(args[0], x[0]) and kwargs == {}
