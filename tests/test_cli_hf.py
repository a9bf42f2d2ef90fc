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
