"""The ``fxprune`` command: exit codes, quiet output, --save, file:factory models, targets, the default run."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fxprune
from fxprune.tools.cli import main

FAST = ["--latency-runs", "2", "--no-tables"]

MODEL_FILE = textwrap.dedent('''
    import torch
    import torch.nn as nn

    def make():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 5))
        return net.eval(), (torch.randn(2, 3, 16, 16),)

    def bare():
        return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            h = self.a(x)
            if h.sum() > 0:  # data-dependent Python: neither symbolic_trace nor torch.export captures it
                h = h * 2
            return self.b(h)

    def untraceable():
        return Branchy(), (torch.randn(2, 4),)

    def not_a_model():
        return 42

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

        def forward(self, x):
            return x + self.fc2(torch.relu(self.fc1(x)))

    def deep():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), *[Block() for _ in range(6)], nn.Linear(16, 3)).eval(), \
            (torch.randn(2, 8),)
''')


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "user_models.py"
    path.write_text(MODEL_FILE)
    return str(path)


def user_models(model_file):
    import importlib.util
    spec = importlib.util.spec_from_file_location("user_models_for_tests", model_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv", [["--ratio", "1.5"], ["--ratio", "-0.1"], ["--round-to", "0"],
                                  ["--importance", "no-such-criterion"], ["--input-shape", "1,three"],
                                  ["--iterative-steps", "0"], ["--ratio", "0.3", "--target-macs", "0.5"],
                                  ["--no-such-flag"], ["--importance", "taylor"]])
def test_bad_usage_exits_2(capsys, argv):
    code, out, err = run(capsys, "-q", *argv)
    assert code == 2, (out, err)
    assert "Traceback" not in err


def test_help_documents_exit_codes(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "exit codes" in out and "capture failure" in out and "--no-verify" in out


def test_unknown_model_and_missing_factory_exit_2(capsys, model_file, tmp_path):
    code, _, err = run(capsys, "-q", f"{model_file}:nope")
    assert code == 2 and "no callable 'nope'" in err and "make" in err
    code, _, err = run(capsys, "-q", f"{tmp_path / 'missing.py'}:make")
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "-q", f"{model_file}:not_a_model")
    assert code == 2 and "nn.Module" in err
    code, _, err = run(capsys, "-q", f"{model_file}:bare")  # no inputs returned, no --input-shape
    assert code == 2 and "--input-shape" in err
    code, _, err = run(capsys, "-q", "timm:certainly_not_a_model_name")
    assert code == 2 and "Traceback" not in err


def test_untraceable_model_exits_3(capsys, model_file):
    code, out, err = run(capsys, "-q", f"{model_file}:untraceable")
    assert code == 3
    assert "cannot capture" in err and "if h.sum() > 0" in err
    assert len(out.strip().splitlines()) == 1


def test_quiet_prints_one_line_and_no_progress(capsys, model_file):
    code, out, err = run(capsys, "-q", f"{model_file}:make", "--ratio", "0.5", "--latency-runs", "2")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "oracles exact" in lines[0] and "latency" in lines[0]
    assert err == ""


def test_progress_goes_to_stderr(capsys, model_file):
    code, out, err = run(capsys, f"{model_file}:make", *FAST, "--iterative-steps", "2")
    assert code == 0
    for stage in ("building", "capturing and analysing", "pruning step 1/2", "pruning step 2/2", "verifying",
                  "timing CPU latency"):
        assert stage in err, err
    assert "capturing" not in out and "per layer" not in out  # --no-tables
    assert out.strip().splitlines()[-1].endswith("oracles exact")


def test_tables_and_file_model(capsys, model_file):
    code, out, err = run(capsys, f"{model_file}:make", "--ratio", "0.5", "--latency-runs", "2", "--ignore", "0")
    assert code == 0
    assert "per group" in out and "per layer" in out and "owner MACs" in out
    assert "CPU latency ms" in out and "exactness oracles" in out
    assert "(user_models.py)" in out.strip().splitlines()[-1]


def test_save_writes_a_pt2_that_loads_in_a_fresh_process(capsys, model_file, tmp_path):
    out_path = tmp_path / "pruned.pt2"
    code, out, err = run(capsys, f"{model_file}:make", "--ratio", "0.5", "--save", str(out_path),
                         "--latency-runs", "0", "--seed", "0", "--no-tables")
    assert code == 0 and out_path.exists(), err
    assert "saved as pt2 (dynamic dims input[0]" in err
    loaded = fxprune.load(out_path)
    # the same pruning through the API gives the same function
    torch.manual_seed(0)
    model, inputs = user_models(model_file).make()
    expected = fxprune.prune(model, inputs, ratio=0.5)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(x), expected(x), atol=1e-6)
    assert fxprune.count_params(loaded) < fxprune.count_params(model)
    # loading works in a fresh process too, without the user's file and without unpickling code
    code = (f"import torch, fxprune; m = fxprune.load({str(out_path)!r}); "
            "print(tuple(m(torch.randn(1, 3, 16, 16)).shape))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "(1, 5)" in res.stdout, res.stderr


def test_target_params_is_reached(capsys, model_file, tmp_path):
    out_path = tmp_path / "half.pt2"
    code, out, _ = run(capsys, "-q", f"{model_file}:make", "--target-params", "0.5", "--tolerance", "0.03",
                       "--save", str(out_path), "--latency-runs", "0", "--no-verify")
    assert code == 0, out
    assert "oracles not run" in out
    pruned = fxprune.load(out_path)
    original = fxprune.count_params(user_models(model_file).make()[0])
    assert abs(fxprune.count_params(pruned) / original - 0.5) <= 0.03 * 0.5 + 1e-9


def test_unreachable_target_exits_2(capsys, model_file):
    code, _, err = run(capsys, "-q", f"{model_file}:make", "--target-params", "10", "--no-verify",
                       "--latency-runs", "0")
    assert code == 2 and "unreachable" in err


def test_gradient_importance_with_calibration_batches(capsys, model_file):
    code, out, err = run(capsys, f"{model_file}:make", "--importance", "taylor", "--calib-batches", "2", *FAST)
    assert code == 0, err
    assert "importance: batch 2/2" in err


def test_default_run_subprocess():
    """``python -m fxprune`` with no argument: DemoNet, exact, well under a minute."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "fxprune", "--latency-runs", "5"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("DemoNet:") and last.endswith("oracles exact")
    assert "per layer" in res.stdout and "per group" in res.stdout


def test_fold_captures_the_repeated_block_once(capsys, model_file):
    code, out, err = run(capsys, f"{model_file}:deep", "--fold", "--ratio", "0.5", "--latency-runs", "2")
    assert code == 0, err
    assert "6 repeated blocks folded: 1 distinct" in out
    assert out.strip().splitlines()[-1].endswith("oracles exact")
    code, _, err = run(capsys, f"{model_file}:deep", "--fold", "--iterative-steps", "2")
    assert code == 2 and "--fold" in err


def test_calibrated_criterion_and_repair(capsys, model_file, tmp_path):
    out_path = tmp_path / "fixed.pt"
    code, out, _ = run(capsys, f"{model_file}:make", "--importance", "obs", "--calib", "3", "--repair", "lstsq",
                       "--save", str(out_path), *FAST)
    assert code == 0, out
    assert "repair 'lstsq'" in out and "rel. error before" in out
    fixed = dict(fxprune.load(out_path).named_parameters())
    torch.manual_seed(0)
    model, inputs = user_models(model_file).make()
    plain = dict(fxprune.prune(model, inputs, importance="obs",
                               data=fxprune.calib.random_batches(inputs, 3, 1)).named_parameters())
    assert {k: p.shape for k, p in fixed.items()} == {k: p.shape for k, p in plain.items()}
    assert any(not torch.equal(fixed[k], plain[k]) for k in plain)  # repaired
    for argv in (["--importance", "wanda"], ["--repair", "bias"]):  # both read activations: --calib N is needed
        code, _, err = run(capsys, f"{model_file}:make", *argv, *FAST)
        assert code == 2 and "--calib N" in err


def test_sequential_repair_and_the_allocation_table(capsys, model_file):
    code, out, _ = run(capsys, f"{model_file}:make", "--importance", "wanda", "--calib", "3", "--repair", "lstsq",
                       "--sequential", "--latency-runs", "0")  # with the tables
    assert code == 0, out
    assert "repair 'lstsq (sequential)'" in out
    assert "allocation per layer" in out and "removed" in out
    code, _, err = run(capsys, f"{model_file}:make", "--sequential", *FAST)  # needs a repair
    assert code == 2 and "repair" in err
