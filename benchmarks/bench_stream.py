"""Streamed pruning of checkpoints larger than memory: wall time against the disk floor, and peak RSS.

    python benchmarks/bench_stream.py                       # both parts, results in benchmarks/STREAM.md
    python benchmarks/bench_stream.py --parts 7b --keep     # the 7B part only; keep the cached checkpoint

Part ``7b``: a random bf16 LLaMA-shaped checkpoint of 7B shape (32 layers, hidden 4096, 32 heads, 8 kv
heads, MLP 14336, vocabulary 32000: 14.5 GB in 2 GB shards) is written once to the cache directory
(reused when present), then pruned by L2 magnitude: 20% of the kv heads (with their query heads; heads
come in units of 4 query heads, so 2 of 8 go) and of every MLP width, ``scope="local"``, with 1 GB and
with 512 MB output shards (the writer holds one shard, and safetensors copies it once to write it). The disk floor is the bytes read plus written over the sequential throughput measured on the
same file system (a 4 GB file written with fsync, evicted from the page cache, read back); the
checkpoint is evicted from the page cache before the run. Targets: peak RSS <= 2 GB, wall <= 2 x floor.

Part ``1b``: a 1.1B TinyLlama-shaped checkpoint (22 layers, hidden 2048, 32 heads, 4 kv heads, MLP
5632) pruned the same way by magnitude, and with ``importance="wanda", repair="lstsq"`` on 16
sequences of 128 random tokens (needs ``fxprune.calib``), beside Torch-Pruning's ``MagnitudePruner``
on the model loaded in memory (it needs the whole model; same ratios, ``num_heads`` hints).

Every run is a fresh subprocess; peak RSS is its ``ru_maxrss`` (imports included). Not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from tabulate import tabulate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {
    "7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8),
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4),
}
SMOKE = {  # --smoke: the same runs on small shapes, to check the script itself
    "7b": dict(vocab_size=32000, hidden_size=512, intermediate_size=1792, num_hidden_layers=4,
               num_attention_heads=8, num_key_value_heads=4),
    "1b": dict(vocab_size=32000, hidden_size=256, intermediate_size=704, num_hidden_layers=3,
               num_attention_heads=8, num_key_value_heads=1),  # Torch-Pruning 1.6 hangs with 2 heads per kv head
}

OUT_SHARDS = ("1GB", "512MB")  # output shard caps of the 7B part

_PRELUDE = r"""
import json, os, resource, sys, time
sys.path.insert(0, os.path.join(os.environ["FXPRUNE_ROOT"], "tests"))
from zoo import import_torchvision; import_torchvision()
import torch, transformers as T
T.logging.set_verbosity_error()
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
"""

_WRITE = _PRELUDE + r"""
from accelerate import init_empty_weights
from fxprune.hf.checkpoint import ShardWriter
path, shape = sys.argv[1], json.loads(sys.argv[2])
cfg = T.LlamaConfig(**shape, max_position_embeddings=4096, dtype="bfloat16", architectures=["LlamaForCausalLM"])
with init_empty_weights():
    shapes = {n: p.shape for n, p in T.LlamaForCausalLM(cfg).state_dict().items()}
gen = torch.Generator().manual_seed(0)
with ShardWriter(path, "2GB") as w:
    for n, s in shapes.items():
        w.add(n, (torch.randn(s, generator=gen) * 0.02).to(torch.bfloat16))
cfg.save_pretrained(path)
print(json.dumps({"bytes": w.total_size}))
"""

_PRUNE = _PRELUDE + r"""
from fxprune.hf.stream import prune_checkpoint
src, out, how, shard = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
options = dict(ratio=0.2, factors="outer", max_shard_size=shard)
if how == "calibrated":
    gen = torch.Generator().manual_seed(0)
    options.update(importance="wanda", repair="lstsq",
                   data=[torch.randint(0, 32000, (4, 128), generator=gen) for _ in range(4)])
t = time.perf_counter()
res = prune_checkpoint(src, out, **options)
wall = time.perf_counter() - t
from fxprune.hf import read_config
from fxprune.hf.config import config_shapes, model_class
from fxprune.hf.checkpoint import Checkpoint
cfg = read_config(out)  # the stock widths, and the per-layer ones in the fxprune section
built = {**config_shapes(cfg, model_class(cfg)), **(getattr(cfg, "fxprune", None) or {}).get("per_layer", {})}
written = {n: i.shape for n, i in Checkpoint(out).tensors.items()}
print(json.dumps({"wall": wall, "peak": peak(), "read": res.bytes_read, "calib_read": res.calibration_bytes,
                  "written": res.bytes_written, "reads": res.reads, "tensors": res.tensors,
                  "uniform": res.config.uniform, "changed": {k: list(v) for k, v in res.config.changed.items()},
                  "config_matches": all(tuple(built.get(n, ())) == tuple(s) for n, s in written.items()),
                  "repaired": len(res.repair.repaired) if res.repair is not None else 0}))
"""

_TP = _PRELUDE + r"""
import torch_pruning as tp
src = sys.argv[1]
t = time.perf_counter()
model = T.AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).eval()
load = time.perf_counter() - t
ids = torch.randint(0, 32000, (1, 16))
attn = [m for m in model.modules() if hasattr(m, "q_proj")]
heads = {**{a.q_proj: model.config.num_attention_heads for a in attn},
         **{a.k_proj: model.config.num_key_value_heads for a in attn},
         **{a.v_proj: model.config.num_key_value_heads for a in attn}}
t = time.perf_counter()
error = None
try:
    pruner = tp.pruner.MagnitudePruner(model, ids, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                       pruning_ratio=0.2, ignored_layers=[model.lm_head], num_heads=heads,
                                       prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.2,
                                       forward_fn=lambda m, x: m(x, use_cache=False).logits)
    pruner.step()
except Exception as e:  # the memory it needed is the point; say what failed
    error = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
print(json.dumps({"wall": time.perf_counter() - t, "load": load, "peak": peak(), "error": error,
                  "params": sum(p.numel() for p in model.parameters())}))
"""


def _run(code: str, *args, timeout: float = 3600) -> dict:
    env = dict(os.environ, FXPRUNE_ROOT=ROOT, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    try:
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                             env=env, cwd=os.getcwd())
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout:.0f} s"}
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1][:160]}
    return json.loads(lines[-1])


def _evict(paths) -> None:
    """Drop files from the page cache, so the next read comes from the disk."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def disk_throughput(folder: str, gib: float = 4) -> tuple:
    """(write, read) bytes/s of one sequential ``gib`` GiB file: written with fsync, evicted, read back."""
    path, block = os.path.join(folder, ".fxprune-dd.tmp"), os.urandom(64 * 2**20)
    try:
        t = time.perf_counter()
        with open(path, "wb") as f:
            for _ in range(int(gib * 16)):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        write = gib * 2**30 / (time.perf_counter() - t)
        _evict([path])
        t = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            while f.read(64 * 2**20):
                pass
        read = gib * 2**30 / (time.perf_counter() - t)
    finally:
        if os.path.exists(path):
            os.remove(path)
    return write, read


def checkpoint(cache: str, part: str) -> tuple:
    """The cached checkpoint of ``part`` (written if missing): (path, bytes, seconds to write or None)."""
    path = os.path.join(cache, f"llama-{part}")
    index = os.path.join(path, "model.safetensors.index.json")
    want = SHAPES[part]
    if os.path.isfile(index) and os.path.isfile(os.path.join(path, "config.json")):
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
        if all(cfg.get(k) == v for k, v in want.items()):
            with open(index) as f:
                return path, json.load(f)["metadata"]["total_size"], None
    shutil.rmtree(path, ignore_errors=True)
    t = time.perf_counter()
    r = _run(_WRITE, path, json.dumps(want))
    if "error" in r:
        raise RuntimeError(f"writing the {part} checkpoint failed: {r['error']}")
    return path, r["bytes"], time.perf_counter() - t


def _shards(path: str) -> list:
    return [os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors")]


def _prune(src: str, how: str, shard: str = "512MB") -> dict:
    out = src + f"-pruned-{how}"
    shutil.rmtree(out, ignore_errors=True)
    _evict(_shards(src))
    try:
        return _run(_PRUNE, src, out, how, shard)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _gb(n) -> str:
    return f"{n / 1e9:.2f}"


def part_7b(cache: str, speeds: tuple) -> list:
    src, size, wrote = checkpoint(cache, "7b")
    print(f"7B checkpoint: {_gb(size)} GB at {src}" + (f" (written in {wrote:.0f} s)" if wrote else " (reused)"),
          file=sys.stderr, flush=True)
    rows = []
    for shard in OUT_SHARDS:  # the writer holds one output shard, and safetensors copies it once to write it
        r = _prune(src, "magnitude", shard)
        if "error" in r:
            rows.append([f"7B magnitude, {shard} shards", "failed: " + r["error"]])
            continue
        floor = size / speeds[1] + r["written"] / speeds[0]
        floor_actual = r["read"] / speeds[1] + r["written"] / speeds[0]
        rows.append([f"7B magnitude (heads + MLP 20%), {shard} output shards", _gb(size), f"{r['wall']:.0f}",
                     f"{floor:.0f}", f"{r['wall'] / floor:.2f}", f"{r['peak'] / 2**30:.2f}",
                     f"{r['reads']}/{r['tensors']}", _gb(r["read"]), _gb(r["written"]), f"{floor_actual:.0f}",
                     "yes" if r["config_matches"] else "NO", "uniform" if r["uniform"] else "per-layer"])
    return rows


def part_1b(cache: str, speeds: tuple, tp: bool) -> list:
    src, size, _ = checkpoint(cache, "1b")
    rows = []
    for how in ("magnitude", "calibrated"):
        r = _prune(src, how)
        if "error" in r:
            rows.append([f"1.1B {how}", _gb(size), "-", "-", "-", "-", "-", f"failed: {r['error']}"])
            continue
        rows.append([f"1.1B {how}" + (" (wanda + lstsq, 16 x 128 tokens)" if how == "calibrated" else ""),
                     _gb(size), f"{r['wall']:.0f}", f"{r['peak'] / 2**30:.2f}", f"{r['peak'] / size:.2f}",
                     _gb(r["read"] + r["calib_read"]), _gb(r["written"]),
                     f"{r['repaired']} layers repaired" if r["repaired"] else "-"])
    if tp:
        _evict(_shards(src))
        r = _run(_TP, src, timeout=1200)
        note = r.get("error") or ""
        rows.append(["1.1B Torch-Pruning MagnitudePruner (model in memory, bf16)", _gb(size),
                     f"{r['wall'] + r['load']:.0f}" if "wall" in r else "-",
                     f"{r['peak'] / 2**30:.2f}" if "peak" in r else "-",
                     f"{r['peak'] / size:.2f}" if "peak" in r else "-", "-", "-",
                     ("failed: " + note) if note else f"load {r['load']:.0f} s + prune {r['wall']:.0f} s"])
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="7b,1b", help="7b, 1b or both")
    p.add_argument("--cache", default=os.path.expanduser("~/.cache/fxprune/bench_stream"))
    p.add_argument("--keep", action="store_true", help="keep the cached checkpoints")
    p.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning")
    p.add_argument("--md", default=os.path.join(ROOT, "benchmarks", "STREAM.md"))
    p.add_argument("--smoke", action="store_true", help="small shapes and a 0.25 GiB disk test (checks the script)")
    args = p.parse_args(argv)
    if args.smoke:
        SHAPES.update(SMOKE)
        args.cache = os.path.join(args.cache, "smoke")
    parts = args.parts.split(",")
    os.makedirs(args.cache, exist_ok=True)
    need = 2.2 * 15e9 * ("7b" in parts) + 2.2 * 2.3e9 * ("1b" in parts) + 4 * 2**30
    free = shutil.disk_usage(args.cache).free
    if free < need:
        print(f"not enough disk at {args.cache}: {free / 1e9:.0f} GB free, {need / 1e9:.0f} GB needed", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    speeds = disk_throughput(args.cache, 0.25 if args.smoke else 4)
    print(f"disk: write {speeds[0] / 1e6:.0f} MB/s, read {speeds[1] / 1e6:.0f} MB/s; load average {load:.1f}",
          file=sys.stderr, flush=True)
    text = [f"## Streamed pruning (`python benchmarks/bench_stream.py`), {time.strftime('%Y-%m-%d')}", "",
            f"Disk (same file system, 4 GiB sequential): write {speeds[0] / 1e6:.0f} MB/s, read "
            f"{speeds[1] / 1e6:.0f} MB/s. Load average at start {load:.1f} (2 shared cores, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM).", ""]
    try:
        if "7b" in parts:
            rows = part_7b(args.cache, speeds)
            text += ["### 7B, magnitude", "", tabulate(rows, tablefmt="github", headers=[
                "run", "checkpoint GB", "wall s", "floor s", "wall / floor", "peak RSS GiB", "tensor reads",
                "read GB", "written GB", "floor of actual bytes s", "config matches shapes", "config"]), ""]
        if "1b" in parts:
            rows = part_1b(args.cache, speeds, not args.no_tp)
            text += ["### 1.1B, magnitude and calibrated", "", tabulate(rows, tablefmt="github", headers=[
                "run", "checkpoint GB", "wall s", "peak RSS GiB", "peak / checkpoint", "read GB", "written GB",
                "note"]), ""]
    finally:
        if not args.keep:
            for part in parts:
                shutil.rmtree(os.path.join(args.cache, f"llama-{part}"), ignore_errors=True)
    print("\n".join(text))
    with open(args.md, "w") as f:
        f.write("\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
