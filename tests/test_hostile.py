"""Hostile inputs and files: crafted archives, full disks, models that write their inputs, wrapped models.

Each test names the promise it keeps: no code runs from data, no file is left
half-written, the user's model, state and example stay as they were, and every
refusal is a clear error (README "Security and files").
"""
import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.errors import SaveError


# -- crafted .pt2 archives ---------------------------------------------------------------------------------------

class _Evil:
    """Unpickles by evaluating Python that writes ``marker`` and then returns ``ret``: a loader that runs it ran code."""

    def __init__(self, marker, ret="((), {})"):
        self.marker, self.ret = str(marker), ret

    def __reduce__(self):
        return (eval, (f"(open({self.marker!r}, 'w').write('pwned'), {self.ret})[1]",))


def _evil(marker, ret="((), {})") -> bytes:
    buf = io.BytesIO()
    torch.save(_Evil(marker, ret), buf)
    return buf.getvalue()


def _rewrite(src, dst, replace: dict, add: dict = None):
    """Copy the zip ``src`` to ``dst``, entries ending with a key of ``replace`` passed through its function."""
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zo:
        root = zi.namelist()[0].split("/")[0]
        for info in zi.infolist():
            data = zi.read(info.filename)
            for suffix, fn in replace.items():
                if info.filename.endswith(suffix):
                    data = fn(data)
            zo.writestr(info.filename, data)
        for name, data in (add or {}).items():
            zo.writestr(f"{root}/{name}", data)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    small = fxprune.prune(net, (torch.randn(2, 4),), ratio=0.5)
    path = tmp_path_factory.mktemp("pt2") / "small.pt2"
    fxprune.save(small, path)
    return path, small


def test_a_clean_archive_still_loads(saved):
    path, small = saved
    x = torch.randn(3, 4)
    assert torch.equal(fxprune.load(path)(x), small(x))


def test_sample_inputs_that_run_code_are_refused_before_unpickling(saved, tmp_path):
    path, _ = saved
    marker, bad = tmp_path / "marker", tmp_path / "evil.pt2"
    _rewrite(path, bad, {"data/sample_inputs/model.pt": lambda _: _evil(marker)})
    with pytest.raises(SaveError, match=r"sample_inputs/model.pt is a pickle .*weights_only=True.*eval"):
        fxprune.load(bad)
    assert not marker.exists()  # torch.export.load alone retries with weights_only=False and writes it


def test_a_use_pickle_weight_that_runs_code_is_refused(saved, tmp_path):
    path, _ = saved
    marker, bad = tmp_path / "marker", tmp_path / "evil.pt2"

    def pickled(config: bytes) -> bytes:
        data = json.loads(config)
        data["config"]["0.weight"]["use_pickle"] = True
        return json.dumps(data).encode()
    _rewrite(path, bad, {"model_weights_config.json": pickled,
                         "data/weights/weight_0": lambda _: _evil(marker, "__import__('torch').zeros(4, 4)")})
    with pytest.raises(SaveError, match="weights/weight_0 is a pickle"):
        fxprune.load(bad)
    assert not marker.exists()


def test_a_use_pickle_weight_of_plain_tensors_loads(saved, tmp_path):
    path, small = saved
    ok = tmp_path / "ok.pt2"
    w = dict(small.named_parameters())

    def pickled(config: bytes) -> bytes:
        data = json.loads(config)
        data["config"]["0.weight"]["use_pickle"] = True
        return json.dumps(data).encode()
    buf = io.BytesIO()
    torch.save(nn.Parameter(w["0.weight"].detach().clone()), buf)
    _rewrite(path, ok, {"model_weights_config.json": pickled, "data/weights/weight_0": lambda _: buf.getvalue()})
    x = torch.randn(3, 4)
    assert torch.equal(fxprune.load(ok)(x), small(x))


@pytest.mark.parametrize("entry,why", [
    ("data/aotinductor/model/evil.so", "compiled code"),
    ("data/weights/model.pt", "legacy pickled payload"),
    ("../escape", "unsafe name"),
])
def test_archive_entries_fxprune_never_writes_are_refused(saved, tmp_path, entry, why):
    path, _ = saved
    bad = tmp_path / "bad.pt2"
    _rewrite(path, bad, {}, add={entry: b"\x00" * 8})
    with pytest.raises(SaveError, match=why):
        fxprune.load(bad)


def test_a_foreign_zip_gets_a_clear_error(tmp_path):
    bad = tmp_path / "foreign.pt2"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("stuff/models/readme.txt", "not a model")
        z.writestr("stuff/archive_format", "pt2")
    with pytest.raises(SaveError, match="not a .pt2 archive of one exported program"):
        fxprune.load(bad)
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(SaveError, match="was not written by fxprune.save"):
        fxprune.load(plain)


# -- fxprune.save: directories and full disks --------------------------------------------------------------------

def test_save_to_an_existing_directory_is_a_clear_error(saved, tmp_path):
    _, small = saved
    with pytest.raises(SaveError, match="it is a directory"):
        fxprune.save(small, tmp_path)
    assert os.listdir(tmp_path) == []


_FULL_DISK = textwrap.dedent("""
    import os, resource, signal, sys, torch, torch.nn as nn, fxprune
    from fxprune.errors import SaveError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
    net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 8)).eval()
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    try:
        fxprune.save(net, os.path.join(sys.argv[1], "small.pt2"), (torch.randn(2, 64),))
    except SaveError as e:
        print("SaveError:", e)
        sys.exit(0)
    sys.exit(3)
""")


def test_save_on_a_full_disk_is_a_clear_error_and_leaves_nothing(tmp_path):
    """A file-size limit in a child process stands in for a full disk: torch's zip writer used to abort
    the process (SIGABRT) from its destructor."""
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "SaveError: cannot write" in proc.stdout and "small.pt2" in proc.stdout
    assert os.listdir(tmp_path) == []  # no stray temporary file


# -- models fxprune must not change or mis-prune (Note [Models fxprune refuses]) ---------------------------------

def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def _bitwise_same(model, state) -> bool:
    now = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) and now[k].dtype == state[k].dtype
                                              for k in state)


def test_a_qat_model_is_refused_before_any_forward_and_its_observers_stay():
    import torch.ao.quantization as q

    m = nn.Sequential(q.QuantStub(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), q.DeQuantStub()).train()
    m.qconfig = q.get_default_qat_qconfig("fbgemm")
    m = q.prepare_qat(m)
    m(torch.randn(3, 4))  # observers have seen data: min_val/max_val/scale are set
    m.eval()
    state = _state(m)
    for call in (lambda: fxprune.prune(m, (torch.randn(2, 4) * 50,), ratio=0.5),
                 lambda: fxprune.analyze(m, (torch.randn(2, 4) * 50,))):
        with pytest.raises(fxprune.errors.CaptureError, match="quantization-aware.*prune the float model"):
            call()
    assert _bitwise_same(m, state)


@pytest.mark.parametrize("how", ["weight_norm", "spectral_norm", "orthogonal", "parametrize"])
def test_parametrized_modules_get_an_error_naming_the_fix(how):
    from torch.nn.utils import parametrizations, parametrize

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
    {"weight_norm": lambda: parametrizations.weight_norm(m[0]),
     "spectral_norm": lambda: parametrizations.spectral_norm(m[0]),
     "orthogonal": lambda: parametrizations.orthogonal(m[2]),
     "parametrize": lambda: parametrize.register_parametrization(m[0], "weight", Double())}[how]()
    state = _state(m)
    with pytest.raises(fxprune.errors.CaptureError, match="parametrized.*remove_parametrizations"):
        fxprune.prune(m, (torch.randn(2, 4),), ratio=0.5)
    assert _bitwise_same(m, state)


def test_a_dynamically_quantized_model_gets_an_error_naming_the_fix():
    m = torch.ao.quantization.quantize_dynamic(_mlp(), {nn.Linear}, dtype=torch.qint8)
    with pytest.raises(fxprune.errors.CaptureError, match="quantized.*prune the float model, then quantize"):
        fxprune.prune(m, (torch.randn(2, 4),), ratio=0.5)


def test_a_model_writing_its_input_is_named_and_the_users_tensor_stays():
    from fxprune.checks.guard import InputMutationError

    class Scales(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            x.mul_(2)
            return self.b(torch.relu(self.a(x)))
    x = torch.randn(2, 4)
    before = x.clone()
    with pytest.raises(InputMutationError, match=r"writes its positional input 0 in place.*x = x \* 2"):
        fxprune.prune(Scales().eval(), (x,), ratio=0.5)
    assert torch.equal(x, before) and x._version == 0


def test_a_compiled_model_is_pruned_as_the_model_it_wraps():
    net, x = _mlp(), torch.randn(2, 4)
    state = _state(net)
    small = fxprune.prune(torch.compile(net), (x,), ratio=0.5)
    plain = fxprune.prune(net, (x,), ratio=0.5)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(small) == n(plain) < n(net)  # not a certified no-op
    assert small.fxprune_certificate.passed and torch.equal(small(x), plain(x))
    assert _bitwise_same(net, state)


# -- the CLI ------------------------------------------------------------------------------------------------------

def test_ctrl_c_wrapped_by_a_library_still_exits_130(monkeypatch, capsys):
    """An interrupt during start-up imports arrives wrapped (transformers' lazy modules re-raise it as
    a RuntimeError): still 130, not an internal error."""
    from fxprune.tools import cli

    def interrupted(args, say):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise RuntimeError("Failed to import transformers.models.llama") from e
    monkeypatch.setattr(cli, "_run", interrupted)
    assert cli.main(["demo", "-q"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_help_says_a_model_file_runs_its_code(capsys):
    from fxprune.tools.cli import main

    assert main(["--help"]) == 0
    assert "RUNS the file's code" in capsys.readouterr().out
