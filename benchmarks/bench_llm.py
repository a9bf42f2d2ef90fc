"""Analysis time and peak memory on deep LLaMA-shaped models: fxprune vs Torch-Pruning.

    python benchmarks/bench_llm.py                 # depths 8, 16, 32, 64 at hidden 1024
    python benchmarks/bench_llm.py --depths 8,32 --hidden 1024

fxprune analyses a model built on the ``meta`` device (no weights exist) with
``fold=True``: the top level and one decoder layer are exported (non-strict
``torch.export``), and the layer's analysis is instantiated at every call site.
The "unfolded" column is the whole-model export for reference. Torch-Pruning
needs real weights: its model is built (untimed) before ``build_dependency`` +
``get_all_groups`` are timed. Each tool runs in a fresh subprocess; "cold" is
its first call there (lazy imports and first-use set-up included), "warm" a
second call on a newly built model. Memory is the peak RSS growth during the
cold call.
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
if tool.startswith("fxprune"):
    import fxprune
    fold = tool == "fxprune"
    def build():
        with torch.device("meta"):
            return LlamaForCausalLM(cfg).eval()
    def run(model):
        dg = fxprune.analyze(model, (ids,), {"use_cache": False}, fold=fold)
        return len(dg.groups)
else:
    import torch_pruning as tp
    def build():
        return LlamaForCausalLM(cfg).eval()
    def run(model):
        DG = tp.DependencyGraph().build_dependency(model, example_inputs=ids,
                                                   forward_fn=lambda m, x: m(x, use_cache=False).logits)
        return len(list(DG.get_all_groups()))
model = build()
with open("/proc/self/clear_refs", "w") as f: f.write("5")
before = rss(); t = time.perf_counter()
groups = run(model)
cold = time.perf_counter() - t
with open("/proc/self/status") as f:
    hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
warm = None
if os.environ.get("BENCH_WARM", "1") == "1":
    model = build(); t = time.perf_counter(); run(model); warm = time.perf_counter() - t
weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
print(json.dumps({"time": cold, "warm": warm, "peak_mib": hwm - before, "groups": groups, "weights_mib": weights}))
"""


def _run(tool: str, depth: int, hidden: int, timeout: float, warm: bool = True) -> dict:
    env = dict(os.environ, FXPRUNE_ROOT=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
               BENCH_WARM="1" if warm else "0")
    try:
        out = subprocess.run([sys.executable, "-c", _WORKER, tool, str(depth), str(hidden)], capture_output=True,
                             text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"time": None, "error": f">{timeout:.0f} s"}
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"time": None, "error": (out.stderr.strip().splitlines() or ["failed"])[-1][:80]}
    return json.loads(lines[-1])


def _ratio(a: dict, b: dict, key: str) -> str:
    return f"{a[key] / b[key]:.2f}" if a.get(key) and b.get(key) else "-"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", default="8,16,32,64")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--no-tp", action="store_true", help="fxprune only")
    p.add_argument("--no-unfolded", action="store_true", help="skip the unfolded (whole-model export) column")
    args = p.parse_args(argv)
    rows = []
    for depth in (int(d) for d in args.depths.split(",")):
        fx = _run("fxprune", depth, args.hidden, args.timeout)
        flat = {"time": None, "error": "skipped"} if args.no_unfolded else \
            _run("fxprune-unfolded", depth, args.hidden, args.timeout, warm=False)
        tpr = {"time": None, "error": "skipped"} if args.no_tp else _run("tp", depth, args.hidden, args.timeout)
        rows.append([depth, _fmt(fx), _fmt(fx, "warm"), _fmt(flat), _fmt(tpr), _fmt(tpr, "warm"),
                     _ratio(fx, tpr, "time"), _ratio(fx, tpr, "warm"),
                     f"{fx.get('peak_mib', 0):.0f}", f"{tpr.get('peak_mib', 0):.0f}" if tpr.get("time") else "-",
                     f"{fx.get('weights_mib', 0):.0f}", fx.get("groups", "-"), tpr.get("groups", "-")])
        print(f"depth {depth}: fxprune {_fmt(fx)} (warm {_fmt(fx, 'warm')}), unfolded {_fmt(flat)}, "
              f"Torch-Pruning {_fmt(tpr)} (warm {_fmt(tpr, 'warm')})", file=sys.stderr, flush=True)
    print(f"LLaMA-shaped, hidden {args.hidden}, GQA (heads/4 kv heads), input 1x16 tokens; fxprune "
          f"analyze(fold=True) on a meta-device model, Torch-Pruning build_dependency + get_all_groups on real "
          f"weights; cold = first call in a fresh process, warm = second call (new model); {time.strftime('%Y-%m-%d')}")
    print(tabulate(rows, headers=["layers", "fxprune s", "warm", "unfolded s", "TP s", "TP warm",
                                  "fxprune/TP", "warm ratio", "fxprune peak MiB", "TP peak MiB", "weights MiB",
                                  "fxprune groups", "TP groups"]))
    return 0


def _fmt(r: dict, key: str = "time") -> str:
    if r.get(key):
        return f"{r[key]:.2f}"
    return r.get("error", "-") if key == "time" else "-"


if __name__ == "__main__":
    sys.exit(main())
