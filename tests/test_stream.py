"""Streamed pruning of checkpoints (fxprune.hf.stream): the same result as pruning the loaded model.

Every test writes its own tiny sharded checkpoint. The streamed output must be
bit-identical to in-place pruning of the loaded model with the same keep, the
scores equal to the in-memory ones, and the checkpoint must load (plain
transformers for uniform widths, fxprune.hf.from_pretrained for per-layer ones)
with identical logits.
"""
import json
import os

import pytest
import torch

import fxprune
from zoo import import_torchvision

import_torchvision()
T = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
pytest.importorskip("accelerate")
T.logging.set_verbosity_error()

from fxprune.hf.checkpoint import Checkpoint, ShardWriter, parse_size  # noqa: E402
from fxprune.hf.load import CheckpointError  # noqa: E402
from fxprune.hf.outdir import OutDirError  # noqa: E402
from fxprune.hf.stream import prune_checkpoint  # noqa: E402

V = 64
IDS = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(1))


def llama_config(**kw):
    base = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64)
    return T.LlamaConfig(**{**base, **kw})


def write(tmp_path, cfg, cls=None, name="src"):
    torch.manual_seed(0)
    model = (cls or T.LlamaForCausalLM)(cfg).eval()
    path = tmp_path / name
    model.save_pretrained(path, max_shard_size="20KB")
    assert len([f for f in os.listdir(path) if f.endswith(".safetensors")]) > 1  # sharded input
    return model, str(path)


def in_memory(model, res, kwargs=None, importance=None):
    """The loaded model pruned in place with the streamed keep (groups matched by members), and the
    scores of ``importance`` on it before pruning (keyed by the in-memory groups)."""
    m = type(model)(model.config).eval()
    m.load_state_dict(model.state_dict())
    dg = fxprune.analyze(m, (), kwargs or dict(input_ids=IDS, use_cache=False), fold=True)
    by = {tuple(sorted(g.members)): g for g in dg.groups}
    keep = {by[tuple(sorted(g.members))]: k for g, k in res.keep.items()}
    scores = fxprune.score_groups(dg, importance) if importance else None
    fxprune.apply(dg, keep, inplace=True, check=False)
    return m, scores, by


def assert_bit_identical(out, model):
    ck, sd = Checkpoint(out), model.state_dict()
    assert set(ck.tensors) <= set(sd)
    different = [n for n in ck.tensors if not torch.equal(ck.read(n), sd[n])]
    assert not different, different


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS, use_cache=False).logits


def test_uniform_heads_and_mlp_bit_identical_and_loads_with_plain_transformers(tmp_path):
    model, src = write(tmp_path, llama_config())
    out = str(tmp_path / "out")
    res = prune_checkpoint(src, out, ratio=0.5, factors="outer", max_shard_size="30KB")
    assert res.reads == res.tensors == 30  # one read per tensor: decisions are local
    kinds = sorted({g.size for g in res.keep})
    assert kinds == [2, 48]  # kv heads (with their query heads) and MLP width
    assert len(res.files) > 1 and os.path.isfile(os.path.join(out, "model.safetensors.index.json"))
    assert res.config.uniform, res.config
    pruned, scores, by = in_memory(model, res, importance="l2")
    assert_bit_identical(out, pruned)
    for g, s in res.scores.items():
        assert torch.equal(s, scores[by[tuple(sorted(g.members))]])
    loaded = T.AutoModelForCausalLM.from_pretrained(out).eval()
    assert loaded.config.num_key_value_heads == 1 and loaded.config.intermediate_size == 24
    assert torch.equal(logits(loaded), logits(pruned))


def test_global_ranking_per_layer_widths_load_with_fxprune_only(tmp_path):
    model, src = write(tmp_path, llama_config())
    out = str(tmp_path / "out")
    res = prune_checkpoint(src, out, ratio=0.5, scope="global", max_shard_size="30KB")
    widths = {len(k) for g, k in res.keep.items() if g.size == 48}
    assert len(widths) > 1 and not res.config.uniform  # per-layer MLP widths
    assert json.load(open(os.path.join(out, "config.json")))["model_type"] == "fxprune_llama"
    with pytest.raises(ValueError, match="does not recognize this architecture"):
        T.AutoModelForCausalLM.from_pretrained(out)
    pruned, _, _ = in_memory(model, res)
    assert_bit_identical(out, pruned)
    loaded = fxprune.hf.from_pretrained(out)
    assert torch.equal(logits(loaded), logits(pruned))


def test_tensors_dropped_over_the_hold_budget_are_read_again(tmp_path):
    model, src = write(tmp_path, llama_config(tie_word_embeddings=True))
    assert "lm_head.weight" not in Checkpoint(src)
    res = prune_checkpoint(src, str(tmp_path / "out"), ratio=0.5, scope="global", hold_bytes=0)
    assert res.reads > res.tensors  # every waiting tensor was dropped, then read again
    pruned, _, _ = in_memory(model, res)
    assert_bit_identical(res.out, pruned)


def test_keep_from_another_analysis_and_gpt2_conv1d(tmp_path):
    cfg = T.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    model, src = write(tmp_path, cfg, T.GPT2LMHeadModel)
    dg = fxprune.analyze(model, (), dict(input_ids=IDS, use_cache=False), fold=True)
    mlp = [g for g in dg.groups if g.size == 128]
    keep = {g: torch.arange(0, 128, 2) for g in mlp}
    res = prune_checkpoint(src, str(tmp_path / "out"), keep=keep)
    assert sorted(len(k) for k in res.keep.values()) == [64, 64] and res.config.uniform
    pruned, _, _ = in_memory(model, res)
    assert_bit_identical(res.out, pruned)
    loaded = T.AutoModelForCausalLM.from_pretrained(res.out).eval()
    assert torch.equal(logits(loaded), logits(pruned))


def test_bad_requests_are_refused_before_anything_is_written(tmp_path):
    _, src = write(tmp_path, llama_config(num_hidden_layers=2))
    with pytest.raises(ValueError, match="not a MACs/params target"):
        prune_checkpoint(src, str(tmp_path / "a"), target_params=0.5)
    with pytest.raises(ValueError, match="cannot be computed tensor by tensor"):
        prune_checkpoint(src, str(tmp_path / "b"), importance="fpgm")
    with pytest.raises(ValueError, match="pass data="):
        prune_checkpoint(src, str(tmp_path / "c"), repair="bias")
    with pytest.raises(ValueError, match="is the input checkpoint"):
        prune_checkpoint(src, src)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text("{}")
    with pytest.raises(OutDirError, match="already holds files"):
        prune_checkpoint(src, str(tmp_path / "d"))
    assert not any(p.exists() for p in (tmp_path / "a", tmp_path / "b", tmp_path / "c"))


def test_shard_writer_caps_shards_and_writes_the_index(tmp_path):
    with ShardWriter(tmp_path, max_shard_size="100B") as w:
        for i in range(5):
            w.add(f"t{i}", torch.full((10,), float(i)))  # 40 bytes each: two per shard
    index = json.load(open(tmp_path / "model.safetensors.index.json"))
    assert index["metadata"]["total_size"] == 200
    assert sorted(set(index["weight_map"].values())) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    ck = Checkpoint(tmp_path)
    assert [ck.read(f"t{i}")[0].item() for i in range(5)] == [0, 1, 2, 3, 4]
    assert ck.read_slice("t3", 0, 2, 5).tolist() == [3.0, 3.0, 3.0]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporary file left


def test_shard_writer_failure_leaves_no_checkpoint(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, max_shard_size=10) as w:
            w.add("a", torch.zeros(8))
            w.add("b", torch.zeros(8))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_checkpoint_errors_name_the_fix(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickled weights cannot be read tensor by tensor"):
        Checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="neither a checkpoint directory"):
        Checkpoint(tmp_path / "missing")
    assert parse_size("2GiB") == 2 * 2**30 and parse_size("500MB") == 500 * 10**6 and parse_size(7) == 7
    with pytest.raises(ValueError, match="like '1GB'"):
        parse_size("lots")


# -- block by block ---------------------------------------------------------------------------------------------
def _consumer_inputs(model, batches, names):
    seen = {n: [] for n in names}
    hooks = [model.get_submodule(n).register_forward_pre_hook(lambda m, a, _n=n: seen[_n].append(a[0].clone()))
             for n in names]
    with torch.no_grad():
        for b in batches:
            model(input_ids=b, use_cache=False)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_block_runner_feeds_each_block_what_the_model_feeds_it(tmp_path, family):
    from fxprune.hf.blockwise import BlockRunner
    from fxprune.hf.plan import plan_checkpoint

    cfg, cls = {  # gemma2 alternates sliding and full attention: its masks differ per layer
        "llama": (llama_config(), T.LlamaForCausalLM),
        "gemma2": (T.Gemma2Config(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=3, head_dim=8,
                                  num_attention_heads=4, num_key_value_heads=2, sliding_window=4), T.Gemma2ForCausalLM),
        "gpt2": (T.GPT2Config(vocab_size=V, n_embd=32, n_layer=3, n_head=4, n_positions=32), T.GPT2LMHeadModel),
    }[family]
    model, src = write(tmp_path, cfg, cls)
    batches = [torch.randint(0, V, (2, 10)), torch.randint(0, V, (3, 10))]
    names = [n for n, m in model.named_modules() if type(m).__name__ in ("Linear", "Conv1D")]
    want = _consumer_inputs(model, batches, names)
    got = {n: [] for n in names}
    runner = BlockRunner(plan_checkpoint(src), batches)
    runner.run({n: (lambda m, x, _n=n: got[_n].append(x.clone())) for n in names}, tail=True)
    for n in names:  # every consumer, the head included, seen once per batch with the same activations
        assert len(got[n]) == len(batches) and all(torch.equal(a, b) for a, b in zip(got[n], want[n])), n
    assert all(p.is_meta for p in runner.model.parameters())  # every weight went back to meta
    assert runner.bytes_read >= Checkpoint(src).nbytes


def test_calibrated_streaming_equals_in_memory_calibration(tmp_path):
    calib = pytest.importorskip("fxprune.calib")
    model, src = write(tmp_path, llama_config())
    batches = [torch.randint(0, V, (2, 10)), torch.randint(0, V, (3, 10))]
    res = prune_checkpoint(src, str(tmp_path / "out"), ratio=0.5, importance="wanda", repair="lstsq", data=batches)
    assert len(res.repair.repaired) == 6  # o_proj and down_proj of every layer
    m = T.LlamaForCausalLM(model.config).eval()
    m.load_state_dict(model.state_dict())
    dg = fxprune.analyze(m, (), dict(input_ids=batches[0], use_cache=False))
    cal = calib.calibrate(dg, [{"input_ids": b, "use_cache": False} for b in batches], gram=True)
    by = {tuple(sorted(g.members)): g for g in dg.groups}
    keep = {by[tuple(sorted(g.members))]: k for g, k in res.keep.items()}
    for g, s in res.scores.items():
        assert torch.equal(s, fxprune.get_importance("wanda")(dg, by[tuple(sorted(g.members))], cal))
    fix = calib.plan_repair(dg, keep, cal, "lstsq", inplace_model=m)
    fxprune.apply(dg, keep, inplace=True, check=False)
    fix.write_module(m)
    assert_bit_identical(res.out, m)


def test_cli_streams_a_checkpoint(tmp_path, capsys):
    from fxprune.tools.cli import main

    _, src = write(tmp_path, llama_config(num_hidden_layers=2))
    out = str(tmp_path / "out")
    assert main([f"hf:{src}", "--out", out, "--stream", "--ratio", "0.5", "--scope", "global"]) == 0
    text = capsys.readouterr().out
    assert "per-layer widths: load with fxprune.hf.from_pretrained" in text and "model.layers.1:" in text
    assert fxprune.hf.from_pretrained(out) is not None
    assert main([f"hf:{src}", "--out", out, "--stream", "-q"]) == 2  # refuses to overwrite (a usage error)
    assert main(["demo", "--stream", "-q"]) == 2
    assert main([f"hf:{src}", "--stream", "-q"]) == 2  # no --out


_MEMORY_WORKER = r"""
import json, os, sys, tempfile
sys.path.insert(0, sys.argv[1])
from zoo import import_torchvision; import_torchvision()
import torch, transformers as T
from accelerate import init_empty_weights
from fxprune.hf.checkpoint import ShardWriter
from fxprune.hf.plan import plan_checkpoint
from fxprune.hf.stream import prune_checkpoint
d = sys.argv[2]
cfg = T.LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
                    num_attention_heads=12, num_key_value_heads=4, dtype="bfloat16", architectures=["LlamaForCausalLM"])
with init_empty_weights():
    shapes = {n: p.shape for n, p in T.LlamaForCausalLM(cfg).state_dict().items()}
g = torch.Generator().manual_seed(0)
with ShardWriter(d + "/src", "20MB") as w:
    for n, s in shapes.items():
        w.add(n, (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16))
cfg.save_pretrained(d + "/src")
plan = plan_checkpoint(d + "/src")
def rss():
    with open("/proc/self/status") as f:
        return {l.split(":")[0]: int(l.split()[1]) * 1024 for l in f if l.startswith(("VmRSS", "VmHWM"))}
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak starts again from here
before = rss()["VmRSS"]
res = prune_checkpoint(d + "/src", d + "/out", ratio=0.2, factors="outer", plan=plan, max_shard_size="20MB")
print(json.dumps({"growth": rss()["VmHWM"] - before, "size": plan.checkpoint.nbytes, "reads": res.reads,
                  "tensors": res.tensors, "largest": max(t.nbytes for t in plan.checkpoint.tensors.values())}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak RSS reset needs Linux /proc")
def test_peak_memory_of_streaming_stays_near_one_shard(tmp_path):
    """A 190 MB bf16 checkpoint in 20 MB shards: the pruning's peak RSS growth is about one output shard
    plus the largest tensor (the 49 MB embedding) being rewritten, not the checkpoint."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _MEMORY_WORKER, os.path.dirname(__file__), str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["reads"] == r["tensors"]
    assert r["growth"] < 20e6 + 2 * r["largest"] + 16 * 2**20, r
    assert r["growth"] < 0.5 * r["size"], r
