"""Pruned models that are really faster: MACs vs measured latency, fxprune beside Torch-Pruning.

    python benchmarks/bench_latency.py            # every model, MACs targets 0.3/0.5/0.7, latency targets
    python benchmarks/bench_latency.py --quick    # resnet50 + mobilenet_v3_large, target 0.5 only
    python benchmarks/bench_latency.py --report   # rewrite LATENCY.md and the plot from the results so far

torchvision models (random init, eval, batch 1, 224 px, float32), L2 magnitude everywhere, on two
runtimes: PyTorch eager on CPU with 1 thread, and ONNX Runtime (``torch.onnx.export``, outputs
checked against PyTorch, 1 intra-op thread). Methods, per runtime:

* **fxprune** (default): ``fxprune.prune(model, x, target_macs=t)``, exact counts, no latency model;
* **fxprune-lat** (latency-aware): ``target_macs=t, runtime=R``: the counts snap to the fast widths
  of the measured latency table of runtime R (Note [Latency table]);
* **fxprune-tl**: ``target_latency=t, runtime=R``: the knapsack under a latency budget, corrected by
  timing (Note [Latency targets]); its MACs are whatever that latency costs;
* **TP** / **TP-r8**: Torch-Pruning ``MagnitudePruner`` (p=2, local, the classifier ignored), its
  ``pruning_ratio`` bisected to the same MACs target, ``round_to`` None and 8.

Every pruned model is timed beside its dense model, interleaved, ``--rounds`` rounds, each turn the
median of >= 3 calls, and the median over rounds is reported (Note [Interleaved timing]).
Efficiency = (dense latency / pruned latency) / (dense MACs / pruned MACs): 1.0 means the latency
falls as fast as the MACs. The machine's load average is recorded with every row.

Results are appended to ``benchmarks/.cache/latency_results.jsonl`` as they come (a rerun skips
rows already there: resumable); ``LATENCY.md`` and ``latency.png`` are written next to this file.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from fxprune.tools.zoo import import_torchvision  # noqa: E402

import fxprune  # noqa: E402
from fxprune.speed import get_runtime, interleaved  # noqa: E402
from fxprune.speed.runtimes import cpu_name  # noqa: E402

RESULTS = os.path.join(HERE, ".cache", "latency_results.jsonl")
MODELS = ["resnet50", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny", "regnet_y_400mf", "vit_b_16"]
QUICK_MODELS = ["resnet50", "mobilenet_v3_large"]
RUNTIMES = ["eager", "onnxruntime"]
METHODS = ["fxprune", "fxprune-lat", "TP", "TP-r8"]


def _load() -> dict:
    rows = {}
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            for line in f:
                r = json.loads(line)
                rows[(r["model"], r["runtime"], r["method"], r["target"])] = r
    return rows


def _append(row: dict) -> None:
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")


def _model(name: str):
    tv = import_torchvision()
    torch.manual_seed(0)
    return getattr(tv.models, name)(weights=None).eval(), (torch.randn(1, 3, 224, 224),)


def _tp_prune(model, x, ratio: float, round_to):
    import torch_pruning as tp
    m = copy.deepcopy(model)
    kw = {}
    if hasattr(m, "encoder") and hasattr(m, "conv_proj"):  # torchvision ViT: heads as one unit
        kw = {"num_heads": {b.self_attention: b.self_attention.num_heads for b in m.encoder.layers},
              "prune_head_dims": False, "prune_num_heads": False}
    last = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)][-1]
    pruner = tp.pruner.MagnitudePruner(m, x, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=ratio, ignored_layers=[last], round_to=round_to, **kw)
    pruner.step()
    if kw:
        for b in m.encoder.layers:
            b.self_attention.head_dim = b.self_attention.embed_dim // b.self_attention.num_heads
    return m


def _tp_target(model, x, target: float, round_to, dense_macs: int):
    """Bisect TP's ratio to the MACs target: ``(model, macs)`` closest to it."""
    lo, hi, best = 0.0, 0.95, None
    for _ in range(8):
        mid = (lo + hi) / 2
        m = _tp_prune(model, x, mid, round_to)
        macs = fxprune.count_macs(m, x)
        if best is None or abs(macs / dense_macs - target) < abs(best[1] / dense_macs - target):
            best = (m, macs)
        if abs(macs / dense_macs - target) <= 0.01:
            break
        lo, hi = (mid, hi) if macs / dense_macs > target else (lo, mid)
    return best


def _time_pair(dense, pruned, x, runtime: str, rounds: int) -> tuple:
    rt = get_runtime(runtime, threads=1)
    runs = [rt.prepare(dense, x), rt.prepare(pruned, x, check=True)]
    return tuple(interleaved(runs, rounds=rounds, min_time=0.05))


def _prune(method: str, model, x, target: float, runtime: str, dense_macs: int):
    t0 = time.perf_counter()
    report = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "fxprune":
            m = fxprune.prune(model, x, target_macs=target, check=False)
        elif method == "fxprune-lat":
            m = fxprune.prune(model, x, target_macs=target, runtime=runtime, threads=1, check=False)
            report = m.fxprune_latency
        elif method == "fxprune-tl":
            m = fxprune.prune(model, x, target_latency=target, runtime=runtime, threads=1, check=False)
            report = m.fxprune_latency
        else:
            m = _tp_target(model, x, target, 8 if method == "TP-r8" else None, dense_macs)[0]
    return m, time.perf_counter() - t0, report


def run_row(name, model, x, dense_macs, runtime, method, target, rounds) -> dict:
    pruned, secs, report = _prune(method, model, x, target, runtime, dense_macs)
    macs = fxprune.count_macs(pruned, x)
    d, p = _time_pair(model, pruned, x, runtime, rounds)
    row = {"model": name, "runtime": runtime, "method": method, "target": target, "macs": macs / dense_macs,
           "lat": p / d, "dense_ms": d * 1e3, "pruned_ms": p * 1e3, "prune_s": secs,
           "eff": (d / p) / (dense_macs / macs), "load": os.getloadavg()[0]}
    if report is not None:
        row.update(planned_lat=report.ratio, table_build_s=report.table_build_s,
                   table_measured=report.table_measured, table_layers=report.table_layers)
    return row


def _plan(models, targets, lat_targets) -> list:
    jobs = []
    for name in models:
        for runtime in RUNTIMES:
            jobs += [(name, runtime, m, t) for t in targets for m in METHODS]
            jobs += [(name, runtime, "fxprune-tl", t) for t in lat_targets]
    return jobs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="resnet50 + mobilenet_v3_large, target 0.5")
    p.add_argument("--models", default=None, help="comma-separated torchvision names")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per timing (default 5)")
    p.add_argument("--report", action="store_true", help="only rewrite LATENCY.md and the plot")
    p.add_argument("--results", default=RESULTS, help="the JSON-lines results file (default %(default)s)")
    p.add_argument("--out", default=HERE, help="where LATENCY.md and latency.png go (default: benchmarks/)")
    args = p.parse_args(argv)
    globals()["RESULTS"] = args.results
    if not args.report:
        models = args.models.split(",") if args.models else (QUICK_MODELS if args.quick else MODELS)
        targets, lat_targets = ([0.5], [0.5]) if args.quick else ([0.3, 0.5, 0.7], [0.5, 0.7])
        _run(_plan(models, targets, lat_targets), args.rounds)
    sys.path.insert(0, HERE)
    from latency_report import write_report
    write_report(list(_load().values()), args.out, cpu_name())
    return 0


def _run(jobs, rounds) -> None:
    done, cache = _load(), {}
    for name, runtime, method, target in jobs:
        if (name, runtime, method, target) in done:
            continue
        if name not in cache:
            cache.clear()
            model, x = _model(name)
            cache[name] = (model, x, fxprune.count_macs(model, x))
        model, x, dense_macs = cache[name]
        try:
            row = run_row(name, model, x, dense_macs, runtime, method, target, rounds)
        except Exception as e:  # a peer failing on a model is a result, not a crash
            row = {"model": name, "runtime": runtime, "method": method, "target": target,
                   "error": f"{type(e).__name__}: {str(e)[:200]}", "load": os.getloadavg()[0]}
        _append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    sys.exit(main())
