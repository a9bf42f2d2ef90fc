"""Analysis time and peak memory on deep LLaMA-shaped models: fxprune vs Torch-Pruning.

    python benchmarks/bench_llm.py                 # depths 8, 16, 32, 64 at hidden 1024
    python benchmarks/bench_llm.py --depths 8,32 --hidden 1024

fxprune analyses a model built on the ``meta`` device (no weights exist); it
captures HF LLaMA with a non-strict ``torch.export``. Torch-Pruning needs real
weights: its model is built (untimed) before ``build_dependency`` +
``get_all_groups`` are timed. Each measurement runs in a fresh subprocess;
memory is the peak RSS growth of that process during the measured call.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from tabulate import tabulate

_WORKER = r"""
import json, os, sys, time, resource
sys.path.insert(0, os.path.join(os.environ["FXPRUNE_ROOT"], "tests"))
import zoo; zoo.import_torchvision()
import torch
from transformers import LlamaConfig, LlamaForCausalLM
tool, depth, hidden = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=depth,
                  num_attention_heads=hidden // 64, num_key_value_heads=hidden // 256, max_position_embeddings=512)
ids = torch.randint(0, 32000, (1, 16))
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
if tool == "fxprune":
    import fxprune
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg).eval()
    with open("/proc/self/clear_refs", "w") as f: f.write("5")
    before = rss(); t = time.perf_counter()
    dg = fxprune.analyze(model, (ids,), {"use_cache": False})
    dt = time.perf_counter() - t
    groups, mode = len(dg.groups), dg.result.shape_mode[:4]
else:
    import torch_pruning as tp
    model = LlamaForCausalLM(cfg).eval()
    with open("/proc/self/clear_refs", "w") as f: f.write("5")
    before = rss(); t = time.perf_counter()
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=ids,
                                               forward_fn=lambda m, x: m(x, use_cache=False).logits)
    groups = len(list(DG.get_all_groups())); dt = time.perf_counter() - t; mode = "real"
with open("/proc/self/status") as f:
    hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
print(json.dumps({"time": dt, "peak_mib": hwm - before, "groups": groups, "weights_mib": weights, "mode": mode}))
"""


def _run(tool: str, depth: int, hidden: int, timeout: float) -> dict:
    env = dict(os.environ, FXPRUNE_ROOT=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run([sys.executable, "-c", _WORKER, tool, str(depth), str(hidden)], capture_output=True,
                             text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"time": None, "error": f">{timeout:.0f} s"}
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"time": None, "error": (out.stderr.strip().splitlines() or ["failed"])[-1][:80]}
    return json.loads(lines[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", default="8,16,32,64")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--no-tp", action="store_true", help="fxprune only")
    args = p.parse_args(argv)
    rows = []
    for depth in (int(d) for d in args.depths.split(",")):
        fx = _run("fxprune", depth, args.hidden, args.timeout)
        tpr = {"time": None, "error": "skipped"} if args.no_tp else _run("tp", depth, args.hidden, args.timeout)
        ratio = fx["time"] / tpr["time"] if fx.get("time") and tpr.get("time") else None
        rows.append([depth, _fmt(fx), _fmt(tpr), f"{ratio:.2f}" if ratio else "-",
                     f"{fx.get('peak_mib', 0):.0f}", f"{tpr.get('peak_mib', 0):.0f}" if tpr.get("time") else "-",
                     f"{fx.get('weights_mib', 0):.0f}", fx.get("groups", "-"), tpr.get("groups", "-")])
        print(f"depth {depth}: fxprune {_fmt(fx)}, Torch-Pruning {_fmt(tpr)}", file=sys.stderr, flush=True)
    print(f"LLaMA-shaped, hidden {args.hidden}, GQA (heads/4 kv heads), input 1x16 tokens; "
          f"fxprune on a meta-device model, Torch-Pruning on real weights; {time.strftime('%Y-%m-%d')}")
    print(tabulate(rows, headers=["layers", "fxprune s", "TP s", "fxprune/TP", "fxprune peak MiB", "TP peak MiB",
                                  "weights MiB", "fxprune groups", "TP groups"]))
    return 0


def _fmt(r: dict) -> str:
    return f"{r['time']:.2f}" if r.get("time") else r.get("error", "-")


if __name__ == "__main__":
    sys.exit(main())
