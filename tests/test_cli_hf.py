"""``fxprune hf:PATH --out DIR``: a checkpoint in, a pruned checkpoint out, its per-layer widths printed."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from zoo import import_torchvision  # noqa: E402

import_torchvision()
T = pytest.importorskip("transformers")
T.logging.set_verbosity_error()
import hf_tiny  # noqa: E402

from fxprune.tools.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    model, _ = hf_tiny.build("llama")
    model.save_pretrained(path)
    return path


def test_out_writes_a_per_layer_checkpoint_that_loads_the_same(llama_dir, tmp_path, capsys):
    out = tmp_path / "pruned"
    code = main([f"hf:{llama_dir}", "--out", str(out), "--ratio", "0.3", "--scope", "global", "--latency-runs", "0"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "round trip: identical logits" in text and "fxprune.hf.from_pretrained" in text
    assert "per-layer widths (before -> after)" in text and "model.layers.1" in text
    assert "left out" in text and "in-place pruning:" in text  # what the trials refused, and why
    import fxprune.hf
    back = fxprune.hf.from_pretrained(str(out))
    assert sum(p.numel() for p in back.parameters()) < sum(p.numel() for p in hf_tiny.build("llama")[0].parameters())


def test_uniform_out_loads_with_plain_transformers(llama_dir, tmp_path, capsys):
    out = tmp_path / "stock"
    code = main([f"hf:{llama_dir}", "--out", str(out), "--ratio", "0.3", "--uniform", "--no-verify",
                 "--latency-runs", "0", "--no-tables"])
    text = capsys.readouterr().out
    assert code == 0 and "stock config" in text and "identical logits" in text, text
    back = T.LlamaForCausalLM.from_pretrained(out).eval()
    x = torch.randint(0, hf_tiny.V, (2, 5))
    assert back.config.intermediate_size < 48 and back(x).logits.shape == (2, 5, hf_tiny.V)


def test_config_alone_is_built_on_meta_and_gets_a_pruned_config(llama_dir, tmp_path, capsys):
    out = tmp_path / "plan"
    code = main([f"hf:{llama_dir / 'config.json'}", "--out", str(out), "--ratio", "0.3", "--no-tables"])
    text = capsys.readouterr()
    assert code == 0, text
    assert "meta device" in text.out and "not run (--no-verify)" in text.out  # nothing certified
    assert "random" in text.err  # the weight-free criterion, said so
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["intermediate_size"] < 48 or "fxprune" in cfg


@pytest.mark.parametrize("argv,code", [
    (["hf:/nonexistent/checkpoint"], 2),
    (["demo", "--out", "/tmp"], 2),  # not a Hugging Face model
    (["demo", "--uniform"], 2),  # --uniform needs --out
    (["demo", "--out", "/nonexistent/dir/out"], 5),
])
def test_hf_exit_codes(argv, code, capsys):
    assert main(argv + ["-q", "--latency-runs", "0"]) == code
    assert "error" in capsys.readouterr().err


def _group_rows(text: str) -> dict:
    """``{group: (size, member params before, owner MACs)}`` parsed from the CLI's per-group table."""
    block = text.split("per group (each row: that group pruned alone):\n", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in block.splitlines()[2:]:
        name, size, _, before, _, macs = line.split()
        rows[name] = (int(size), int(before), int(macs))
    return rows


def _expected_groups(model, example: dict) -> dict:
    """``{group: (size, member params)}`` of a fresh analysis of the unpruned ``model``."""
    import fxprune
    dg = fxprune.analyze(model, (), example)
    params = dict(model.named_parameters())  # a tied weight once, as the graph holds it
    return {g.name: (g.size, sum(params[m.param].numel() for m in g.layouts if m.param in params)) for g in dg.groups}


# LayerNorm decoder, LayerNorm vision encoder, encoder-decoder: the table ran the graph captured before the
# in-place rewrite (exit 70 on the first two: the graph kept normalized_shape; T5 printed sizes already pruned
# and every owner MAC count 0)
@pytest.mark.parametrize("family", ["gpt2", "vit", "t5"])
def test_out_counts_the_original_before_the_in_place_rewrite(family, tmp_path, capsys):
    model, inputs = hf_tiny.build(family)
    model.save_pretrained(tmp_path / "src")
    p0 = hf_tiny.params(model)
    code = main([f"hf:{tmp_path / 'src'}", "--out", str(tmp_path / "out"), "--ratio", "0.3", "--latency-runs", "0"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "round trip: identical logits" in text
    rows = _group_rows(text)
    want = _expected_groups(model, inputs(1, 7))
    assert {k: v[:2] for k, v in rows.items()} == want
    assert sum(v[2] for v in rows.values()) > 0  # owner MACs of the original, counted on its own modules
    import fxprune.hf
    p1 = hf_tiny.params(fxprune.hf.from_pretrained(str(tmp_path / "out")))
    total = next(line for line in text.splitlines() if line.startswith("total")).split()
    assert (int(total[1]), int(total[2])) == (p0, p1) and p1 < p0  # per-layer totals: original, then result


def test_default_path_is_in_memory_for_a_small_model_and_says_why(llama_dir, tmp_path, capsys):
    code = main([f"hf:{llama_dir}", "--out", str(tmp_path / "o"), "--ratio", "0.3", "--latency-runs", "0",
                 "--no-tables"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "memory: in memory: the model and its float64 checks fit; estimated peak in memory" in err
    assert "certificate: permutation oracle exact (float64" in out and "oracles exact" in out


def test_a_model_too_large_for_float64_checks_streams_or_gets_a_float32_certificate(llama_dir, tmp_path, capsys,
                                                                                     monkeypatch):
    import fxprune.hf.memory as memory
    monkeypatch.setattr(memory, "FLOAT64_LIMIT", 1024)  # the tiny model counts as large
    code = main([f"hf:{llama_dir}", "--out", str(tmp_path / "s"), "--ratio", "0.3"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "memory: streamed: " in err and "too many for the in-memory path's float64 checks" in err
    assert "estimated peak streamed" in err and (tmp_path / "s" / "config.json").exists()
    assert main([f"hf:{llama_dir}", "--ratio", "0.3", "-q"]) == 2  # streamed needs --out: said so
    assert "pass --out DIR (or --in-memory" in capsys.readouterr().err
    code = main([f"hf:{llama_dir}", "--out", str(tmp_path / "m"), "--ratio", "0.3", "--in-memory",
                 "--latency-runs", "0", "--no-tables"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "memory: --in-memory; certificate in float32" in err and "estimated peak in memory" in err
    assert "certificate: permutation oracle exact (float32" in out
    assert "oracles not run (model too large: certificate only)" in out and "identical logits" in out


def test_in_memory_that_does_not_fit_exits_7(llama_dir, tmp_path, capsys, monkeypatch):
    import fxprune.hf.memory as memory
    monkeypatch.setattr(memory, "available_bytes", lambda: 2**20)
    code = main([f"hf:{llama_dir}", "--out", str(tmp_path / "m"), "--in-memory", "--latency-runs", "0"])
    err = capsys.readouterr().err
    assert code == 7 and "drop --in-memory to stream it" in err and "GiB is free" in err
    assert not (tmp_path / "m").exists()
    assert main([f"hf:{llama_dir}", "--out", str(tmp_path / "m"), "--in-memory", "--stream"]) == 2
    assert main(["demo", "--in-memory"]) == 2
