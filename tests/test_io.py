"""fxprune.save / fxprune.load: every pruned model saves and loads in a fresh process, atomically."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune

USER_FILE = textwrap.dedent('''
    import torch
    import torch.nn as nn

    class Gate(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # neither symbolic_trace nor torch.export captures this

    class WithLeaf(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.gate, self.b = nn.Linear(4, 16), Gate(), nn.Linear(16, 2)

        def forward(self, x):
            return self.b(self.gate(torch.relu(self.a(x))))
''')


class Branchy(nn.Module):
    """Export-captured (a branch on a size): its graph holds torch.export's unpicklable guards."""

    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.bn(self.a(x))
        if y.shape[0] > 0:
            y = F.relu(y)
        return self.b(y)


def _user_model(tmp_path):
    from fxprune.tools.zoo import load_model
    path = tmp_path / "user_leaf.py"
    path.write_text(USER_FILE + "\ndef make():\n    torch.manual_seed(0)\n    return WithLeaf(), (torch.randn(2, 4),)\n")
    loaded = load_model(f"{path}:make")  # imported as a module a fresh process cannot import by name
    return loaded.model, loaded.inputs


def test_every_kind_of_pruned_model_loads_in_a_fresh_process(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    traced = fxprune.prune(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval(), (x,), ratio=0.5)
    exported = fxprune.prune(Branchy().eval(), (x,), ratio=0.5)
    with pytest.raises(Exception, match="pickle"):
        torch.save(exported, tmp_path / "raw.pt")  # what --save used to do
    leaf_model, leaf_x = _user_model(tmp_path)
    leafy = fxprune.prune(leaf_model, leaf_x, ratio=0.5, leaf_modules=["gate"])
    cases = [("traced", traced, (x,), "pt2 (dynamic dims"), ("exported", exported, (x,), "pt2"),
             ("leaf", leafy, leaf_x, "pickle")]
    lines = ["import torch, fxprune"]
    for name, model, inputs, form in cases:
        path = tmp_path / f"{name}.pt2"
        assert fxprune.save(model, path).startswith(form), name
        torch.save(inputs, tmp_path / f"{name}.in")
        with torch.no_grad():
            torch.save(model(*inputs), tmp_path / f"{name}.out")
        trusted = "weights_only=False" if form == "pickle" else ""
        lines.append(f"m = fxprune.load({str(path)!r}, {trusted}); i = torch.load({str(tmp_path / (name + '.in'))!r})")
        lines.append(f"torch.testing.assert_close(m(*i), torch.load({str(tmp_path / (name + '.out'))!r})); "
                     f"print({name!r}, 'ok')")
    res = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["traced", "ok", "exported", "ok", "leaf", "ok"]


def test_loaded_pt2_evaluates_and_refuses_train_clearly(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    path = tmp_path / "m.pt2"
    pruned = fxprune.prune(model, (torch.randn(1, 4),), ratio=0.5)  # batch 1: export would freeze it
    assert fxprune.save(pruned, path).startswith("pt2 (dynamic dims input[0]")
    loaded = fxprune.load(path)
    assert loaded.eval() is loaded  # torch's own ep.module() raises NotImplementedError here
    assert loaded(torch.randn(7, 4)).shape == (7, 2)  # dynamic batch
    with pytest.raises(fxprune.TrainModeError, match=r"\.pt2"):
        loaded.train()


def test_failed_save_leaves_no_file_and_keeps_the_old_one(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    path = tmp_path / "m.pt2"
    path.write_bytes(b"previous")

    class Unpicklable(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = lambda x: x  # noqa: E731

        def forward(self, x):
            return model(self.f(x))

    with pytest.raises(fxprune.SaveError, match="cannot pickle"):
        fxprune.save(Unpicklable(), path, (torch.randn(2, 4),), format="pickle")
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["m.pt2"]
    with pytest.raises(fxprune.SaveError, match="does not exist"):
        fxprune.save(model, tmp_path / "missing" / "m.pt2", (torch.randn(2, 4),))
    with pytest.raises(ValueError, match="example_inputs"):
        fxprune.save(model, path)  # a plain module remembers no example
    with pytest.raises(fxprune.SaveError, match="no such file"):
        fxprune.load(tmp_path / "nothing.pt2")
