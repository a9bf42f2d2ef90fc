"""Hostile Hugging Face checkpoints and output directories, in both hf paths (in memory and streamed).

A crafted index must not make fxprune read outside the checkpoint; ``--out`` must never destroy the
input or another checkpoint; outputs appear whole or not at all (a full disk is exit 5); an unknown
architecture or a checkpoint that does not hold exactly the model's tensors is refused (exit 2).
"""
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from zoo import import_torchvision  # noqa: E402

import_torchvision()
T = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
pytest.importorskip("accelerate")
T.logging.set_verbosity_error()
from safetensors.torch import load_file, save_file  # noqa: E402

import fxprune.hf  # noqa: E402
from fxprune.hf.checkpoint import Checkpoint  # noqa: E402
from fxprune.hf.load import CheckpointError  # noqa: E402
from fxprune.hf.stream import prune_checkpoint  # noqa: E402
from fxprune.tools.cli import main  # noqa: E402

V = 64
QUIET = ["-q", "--latency-runs", "0", "--no-verify"]
PATHS = {"memory": [], "stream": ["--stream"]}


def _config(**kw):
    return T.LlamaConfig(**{**dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64), **kw})


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """A sharded tiny llama checkpoint (never modified by the tests: they copy it)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("src") / "llama"
    T.LlamaForCausalLM(_config()).eval().save_pretrained(path, max_shard_size="40KB")
    assert os.path.isfile(path / "model.safetensors.index.json")
    return path


def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def _digest(path) -> dict:
    return {f: hashlib.sha256((path / f).read_bytes()).hexdigest() for f in sorted(os.listdir(path))}


def _strays(folder) -> list:
    return [f for f in os.listdir(folder) if ".fxprune-" in f]


# -- path traversal in the index --------------------------------------------------------------------------------

def _index(path) -> dict:
    return json.loads((path / "model.safetensors.index.json").read_text())


def _redirect(ck, name_of):
    """Point the first shard's tensors at ``name_of(shard)`` in the index."""
    index = _index(ck)
    first = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"] = {k: (name_of(v) if v == first else v) for k, v in index["weight_map"].items()}
    (ck / "model.safetensors.index.json").write_text(json.dumps(index))
    return first


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_index_names_outside_the_checkpoint_are_refused(src, tmp_path, how, capsys):
    ck = _copy(src, tmp_path / "ck")
    outside = tmp_path / "secret"
    outside.mkdir()
    first = sorted(set(_index(ck)["weight_map"].values()))[0]
    os.replace(ck / first, outside / first)  # the data now lies outside the checkpoint
    if how == "symlink":
        os.symlink(outside / first, ck / first)
    _redirect(ck, {"dotdot": lambda v: f"../secret/{v}", "absolute": lambda v: str(outside / v),
                   "symlink": lambda v: v}[how])
    with pytest.raises(CheckpointError, match="outside"):
        Checkpoint(ck)
    with pytest.raises(CheckpointError, match="outside"):
        fxprune.hf.from_pretrained(str(ck))
    for path in PATHS.values():
        assert main([f"hf:{ck}", "--out", str(tmp_path / "out"), *path, *QUIET]) == 2
        assert "outside" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not _strays(tmp_path)


# -- --out ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("target", ["input", "symlink", "other checkpoint", "non-empty"])
def test_out_never_destroys_a_checkpoint(src, tmp_path, path, target, capsys):
    ck = _copy(src, tmp_path / "ck")
    out = {"input": ck, "symlink": tmp_path / "link", "other checkpoint": tmp_path / "other",
           "non-empty": tmp_path / "notes"}[target]
    if target == "symlink":
        os.symlink(ck, out)
    elif target == "other checkpoint":
        _copy(src, out)
    elif target == "non-empty":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    before, theirs = _digest(ck), _digest(out)
    assert main([f"hf:{ck}", "--out", str(out), *PATHS[path], *QUIET]) == 2
    err = capsys.readouterr().err
    assert ("is the input checkpoint" if target in ("input", "symlink") else "already holds files") in err
    assert _digest(ck) == before and _digest(out) == theirs and not _strays(tmp_path)


def test_out_into_an_empty_directory_is_allowed(src, tmp_path):
    (tmp_path / "empty").mkdir()
    res = prune_checkpoint(str(src), str(tmp_path / "empty"), ratio=0.3)
    assert res.out == str(tmp_path / "empty") and "config.json" in os.listdir(tmp_path / "empty")
    assert not _strays(tmp_path)


# -- atomic outputs and full disks -------------------------------------------------------------------------------

def test_a_streamed_run_failing_while_finishing_leaves_nothing(src, tmp_path, monkeypatch):
    import fxprune.hf.stream as stream

    def boom(*a, **k):
        raise KeyboardInterrupt  # Ctrl-C after the shards, before config.json and the side files
    monkeypatch.setattr(stream, "_copy_side_files", boom)
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoint(str(src), str(tmp_path / "out"), ratio=0.3)
    assert os.listdir(tmp_path) == []  # no shards without config.json, no temporary directory


_FULL_DISK = textwrap.dedent("""
    import os, resource, signal, sys
    sys.path.insert(0, sys.argv[3])
    from zoo import import_torchvision; import_torchvision()
    import transformers
    from fxprune.tools.cli import main
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail (EFBIG), as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
    sys.exit(main([f"hf:{sys.argv[1]}", "--out", sys.argv[2], "--stream", "-q", "--ratio", "0.3"]))
""")


def test_a_full_disk_is_exit_5_with_nothing_left(src, tmp_path):
    """A file-size limit in a child process stands in for a full disk (no tmpfs needed): safetensors'
    'no space' used to exit 70 and leave shards behind."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, str(src), str(out), os.path.dirname(__file__)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 5, (proc.returncode, proc.stdout[-1000:], proc.stderr[-2000:])
    assert "no space left" in proc.stdout and os.listdir(tmp_path) == []


def test_in_memory_out_is_written_whole_or_not_at_all(src, tmp_path, monkeypatch):
    """``--out`` in memory (``write_checkpoint``): a disk that fills after the shards leaves nothing."""
    import errno

    import fxprune.hf.save as hf_save
    from fxprune.errors import SaveError
    from fxprune.hf.output import write_checkpoint

    model = fxprune.hf.from_pretrained(str(src))

    def full(model, path, **kw):
        model.save_pretrained(path)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(hf_save, "save_pretrained", full)
    with pytest.raises(SaveError, match="no space left") as e:
        write_checkpoint(model, str(tmp_path / "out"), dict(input_ids=torch.randint(0, V, (1, 5))))
    assert e.value.errno == errno.ENOSPC  # the CLI's exit 5
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    written = write_checkpoint(model, str(tmp_path / "out"), dict(input_ids=torch.randint(0, V, (1, 5))))
    assert written.round_trip == "identical logits" and not _strays(tmp_path)


# -- what the checkpoint holds ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", list(PATHS))
def test_an_unknown_architecture_is_refused_not_replaced(src, tmp_path, path, capsys):
    ck = _copy(src, tmp_path / "ck")
    cfg = json.loads((ck / "config.json").read_text())
    cfg["architectures"] = ["LlamaForSomethingNew"]
    (ck / "config.json").write_text(json.dumps(cfg))
    assert main([f"hf:{ck}", "--out", str(tmp_path / "out"), *PATHS[path], *QUIET]) == 2
    err = capsys.readouterr().err
    assert "LlamaForSomethingNew" in err and T.__version__ in err
    assert not (tmp_path / "out").exists()


def _corrupt(ck, how: str) -> None:
    index = _index(ck)
    name = "model.layers.0.mlp.up_proj.weight"
    shard = ck / index["weight_map"][name]
    tensors = load_file(shard)
    if how == "missing":
        tensors.pop(name)
        del index["weight_map"][name]
    elif how == "unexpected":
        tensors["model.layers.0.mlp.extra.weight"] = torch.zeros(3)
        index["weight_map"]["model.layers.0.mlp.extra.weight"] = shard.name
    else:
        tensors[name] = torch.zeros(40, 32)
    save_file(tensors, shard, {"format": "pt"})
    (ck / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("how,says", [("missing", "missing"), ("unexpected", "unexpected"),
                                      ("mismatched", "model.layers.0.mlp.up_proj.weight")])
def test_missing_unexpected_or_mismatched_tensors_are_an_error(src, tmp_path, path, how, says, capsys):
    ck = _copy(src, tmp_path / "ck")
    _corrupt(ck, how)
    assert main([f"hf:{ck}", "--out", str(tmp_path / "out"), *PATHS[path], *QUIET]) == 2
    err = capsys.readouterr().err
    assert says in err and "oracles" not in err
    assert not (tmp_path / "out").exists()


def test_a_streamed_run_that_prunes_nothing_keeps_the_config(src, tmp_path):
    res = prune_checkpoint(str(src), str(tmp_path / "out"), ratio=0.0)
    assert res.keep == {}
    assert (tmp_path / "out" / "config.json").read_bytes() == (src / "config.json").read_bytes()
    back = T.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()  # plain transformers still loads it
    ids = torch.randint(0, V, (1, 5))
    torch.manual_seed(0)
    with torch.no_grad():
        assert torch.equal(back(ids).logits, T.LlamaForCausalLM.from_pretrained(src).eval()(ids).logits)
