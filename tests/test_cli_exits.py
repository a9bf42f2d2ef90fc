"""The CLI's exit codes, messages, --debug, --plot, progress bars, and the load/analyse/prune/report split."""
from __future__ import annotations

import ast
import pathlib
import textwrap

import pytest
import torch

from fxprune.tools import cli
from fxprune.tools.cli import EXIT_CODES, main

FAST = ["--latency-runs", "0", "--no-tables"]

MODELS = textwrap.dedent('''
    import dataclasses
    import torch
    import torch.nn as nn

    def conv():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3)).eval(), (torch.randn(2, 3, 12, 12),)

    class KW(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 16), nn.Linear(16, 2)

        def forward(self, x, scale=1.0):
            return self.b(torch.relu(self.a(x))) * scale

    def keywords():
        torch.manual_seed(0)
        return KW().eval(), {"x": torch.randn(2, 4), "scale": torch.tensor(2.0)}

    @dataclasses.dataclass
    class Out:
        logits: torch.Tensor

    class DC(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 16), nn.Linear(16, 2)

        def forward(self, x):
            return Out(self.b(torch.relu(self.a(x))))

    def dataclass_out():
        return DC().eval(), (torch.randn(2, 4),)

    class Gate(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # data-dependent: only as a leaf

    class WithLeaf(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.gate, self.b = nn.Linear(4, 16), Gate(), nn.Linear(16, 2)

        def forward(self, x):
            return self.b(self.gate(torch.relu(self.a(x))))

    def with_leaf():
        torch.manual_seed(0)
        return WithLeaf().eval(), (torch.randn(2, 4),)
''')


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli_models") / "cli_models.py"
    path.write_text(MODELS)
    return str(path)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_documents_every_exit_code(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for k, text in EXIT_CODES.items():
        assert f"  {k:<3} {text.split(':')[0]}" in out, k
    assert len(set(EXIT_CODES)) == len(EXIT_CODES) == 10  # 7: --in-memory does not fit (issue 25)


def test_wrong_input_rank_exits_4_with_one_message(capsys, models):
    code, out, err = run(capsys, "-q", f"{models}:conv", "--input-shape", "2,3,12", *FAST)
    assert code == 4, err
    assert "does not run on the example inputs ((2, 3, 12) float32)" in err and "Traceback" not in err
    assert out.startswith("fxprune: failed (exit 4):") and len(out.splitlines()) == 1


def test_dict_inputs_from_a_factory_are_keywords(capsys, models):
    code, out, err = run(capsys, "-q", f"{models}:keywords", *FAST)
    assert code == 0, err
    assert "oracles exact" in out


def test_dataclass_output_is_verified(capsys, models):
    code, out, err = run(capsys, "-q", f"{models}:dataclass_out", *FAST)
    assert code == 0, err
    assert "oracles exact" in out


def test_missing_save_directory_fails_first_with_exit_5(capsys, models, tmp_path):
    code, out, err = run(capsys, f"{models}:conv", "--save", str(tmp_path / "no" / "such" / "dir" / "m.pt2"), *FAST)
    assert code == 5 and "does not exist" in err and "Traceback" not in err
    assert "capturing" not in err  # refused before the run, not after it


def test_internal_error_exits_70_and_debug_shows_the_traceback(capsys, models, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("boom")
    monkeypatch.setattr(cli, "_analyse", boom)
    code, _, err = run(capsys, f"{models}:conv", *FAST)
    assert code == 70 and "internal error: RuntimeError: boom" in err and "--debug" in err
    assert "Traceback" not in err
    code, _, err = run(capsys, f"{models}:conv", "--debug", *FAST)
    assert code == 70 and "Traceback" in err and "boom" in err


def test_plot_writes_a_png_of_widths(capsys, models, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "widths.png"
    code, _, err = run(capsys, f"{models}:conv", "--plot", str(png), "--ratio", "0.5", *FAST)
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "plotted 2 layers" in err
    from fxprune.tools.plot import layer_widths
    import fxprune
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3))
    pruned = fxprune.prune(model, (torch.randn(1, 3, 8, 8),), ratio=0.5)
    assert layer_widths(model, pruned) == [("0.weight", 16, 8), ("2.weight", 8, 8)]


def test_plot_without_matplotlib_exits_6(capsys, models, tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    code, _, err = run(capsys, f"{models}:conv", "--plot", str(tmp_path / "w.png"), *FAST)
    assert code == 6 and "pip install 'fxprune[plot]'" in err


def test_progress_bars_stay_off_a_non_tty(capsys, models):
    code, _, err = run(capsys, f"{models}:conv", "--target-macs", "0.5", "--tolerance", "0.1", *FAST)
    assert code == 0, err
    assert "\r" not in err and "probe" not in err  # tqdm only draws on a terminal
    assert "searching the ratio" in err and "certifying" in err


def test_progress_bars_on_a_terminal(capsys, models, monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    code = main([f"{models}:conv", "--target-macs", "0.5", "--tolerance", "0.1", *FAST])
    assert code == 0
    assert "target search" in term.getvalue() and "probe" in term.getvalue()


def test_leaf_module_model_saves_and_loads(capsys, models, tmp_path):
    import fxprune
    path = tmp_path / "leaf.pt2"
    code, _, err = run(capsys, f"{models}:with_leaf", "--leaf", "gate", "--save", str(path), *FAST)
    assert code == 0, err
    assert "saved as pickle" in err  # torch.export cannot capture the data-dependent leaf either
    with pytest.raises(fxprune.SaveError, match="weights_only=False"):
        fxprune.load(path)
    assert fxprune.load(path, weights_only=False)(torch.randn(3, 4)).shape == (3, 2)


def test_cli_uses_only_public_steps():
    tree = ast.parse(pathlib.Path(cli.__file__).read_text())
    private = [a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for a in node.names
               if a.name.startswith("_")]
    assert private == []
    steps = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    for name in ("_load", "_analyse", "_prune", "_report"):
        assert name in steps
    long = [(k, n.end_lineno - n.lineno) for k, n in steps.items() if n.end_lineno - n.lineno >= 40]
    assert long == [("_parser", long[0][1])] if long else True  # the option table is data
