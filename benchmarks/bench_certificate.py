"""What the default certificate costs: pruning time vs check time, beside Torch-Pruning's pruning time.

    python benchmarks/bench_certificate.py            # 8 models, median of 3 runs each
    python benchmarks/bench_certificate.py --quick    # 3 models, 1 run (smoke test)
    python benchmarks/bench_certificate.py --models resnet50,hf:llama --reps 5

Per model (random weights, eval mode; torchvision at 1x3x224x224, timm/HF tiny configs of
benchmarks/suite_models.py), in one process, runs alternating between the tools:

* **prune**: ``fxprune.prune(model, args, kwargs, ratio=0.3, check=False)``: capture (and the
  checked trace), analysis, L2 scores, selection, rewrite;
* **check f64**: ``fxprune.certify(dg)`` on the same analysis: the certificate ``prune`` adds
  by default (a float64 copy of the graph, one reference and one permuted forward);
* **check f32**: the same, forced below float64 (``max_bytes=1``): what models too large for a
  float64 copy get (no copy, float32 against float32 noise);
* **certified**: ``fxprune.prune(..., ratio=0.3)`` with its defaults (the certificate included),
  profiled by phase (``profile=True``; the phase table follows the main one);
* **TP prune**: Torch-Pruning's ``MagnitudePruner(pruning_ratio=0.3)`` construction (its
  dependency graph) + ``step()`` on a copy, output layers ignored (not run for HF models, which
  need per-family head hints); one run in a forked worker, capped at ``--tp-timeout`` seconds
  (default 60; ">60").

Columns *check/prune*, *(prune+check)/TP* and *certified/TP* are ratios of medians in the same run; seconds
are shown for orientation only.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import multiprocessing
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

MODELS = ["torchvision:resnet18", "torchvision:resnet50", "torchvision:mobilenet_v3_large",
          "torchvision:convnext_tiny", "torchvision:swin_t", "timm:vit_tiny_patch16_224", "hf:bert", "hf:llama"]
QUICK = ["torchvision:resnet18", "timm:vit_tiny_patch16_224", "hf:llama"]
RATIO = 0.3
PHASES = ("capture", "checked trace", "analysis", "scoring", "selection", "rewrite", "certificate")
E2E = ["torchvision:resnet50", "torchvision:densenet121", "torchvision:mobilenet_v3_large",
       "torchvision:efficientnet_b0", "torchvision:convnext_tiny", "torchvision:vit_b_16"]  # BENCHMARKS.md section 3


def _build(spec: str):
    import suite_models
    zoo_name, _, name = spec.partition(":")
    return suite_models.build(zoo_name, name, side=224 if zoo_name == "torchvision" else None)


def _median_time(fn, reps: int) -> tuple:
    times, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _tp_worker(model, args, kwargs, queue) -> None:
    from make_benchmarks_md import _tp_prune
    try:
        queue.put(_median_time(lambda: _tp_prune(model, args, kwargs, RATIO), 1)[0])
    except Exception:
        queue.put(float("nan"))


def _tp_time(model, args, kwargs, cap: int):
    """Torch-Pruning's prune time (one run in a forked worker), ``inf`` past ``cap`` seconds, nan if it fails."""
    if kwargs or importlib.util.find_spec("torch_pruning") is None:
        return None
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    worker = ctx.Process(target=_tp_worker, args=(copy.deepcopy(model), args, kwargs, queue))
    worker.start()
    worker.join(cap)
    if worker.is_alive():
        worker.kill()
        worker.join()
        return float("inf")
    return queue.get() if not queue.empty() else float("nan")


def measure(spec: str, reps: int, tp_cap: int = 60) -> dict:
    import fxprune
    model, args, kwargs = _build(spec)
    fxprune.prune(model, args, example_kwargs=kwargs, ratio=RATIO, check=False)  # warm-up
    t_prune, pruned = _median_time(
        lambda: fxprune.prune(model, args, example_kwargs=kwargs, ratio=RATIO, check=False), reps)
    profiles = []

    def certified():
        out = fxprune.prune(model, args, example_kwargs=kwargs, ratio=RATIO, profile=True)
        profiles.append(out.fxprune_profile)
        return out
    t_cert, _ = _median_time(certified, reps)
    dg = fxprune.analyze(model, args, kwargs)
    t64, cert64 = _median_time(lambda: fxprune.certify(dg), reps)
    t32, cert32 = _median_time(lambda: fxprune.certify(dg, max_bytes=1), reps)
    params = sum(p.numel() for p in model.parameters())
    phases = {n: statistics.median([p.seconds.get(n, 0.0) for p in profiles]) for n in PHASES}
    return {"model": spec, "params": params, "groups": len(dg.groups), "prune": t_prune, "certified": t_cert,
            "phases": phases, "f64": t64,
            "f32": t32, "err64": cert64.error, "err32": cert32.error, "tp": _tp_time(model, args, kwargs, tp_cap),
            "kept": sum(p.numel() for p in pruned.parameters()) / params}


def _fmt(x, spec="{:.3f}", cap: int = 60) -> str:
    if x is None:
        return "-"
    if x == float("inf"):
        return f">{cap}"
    return "failed" if x != x else spec.format(x)


def table(rows: list) -> str:
    head = ("| model | params | groups | prune (s) | check f64 (s) | check/prune | f64 error | check f32 (s) "
            "| f32 error | TP prune (s) | (prune+check)/TP |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        tp = r["tp"]
        over = None if tp is None or tp != tp else (r["prune"] + r["f64"]) / min(tp, r["cap"])
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['groups']} | {r['prune']:.3f} | {r['f64']:.3f} "
                     f"| {r['f64'] / r['prune']:.2f} | {r['err64']:.1e} | {r['f32']:.3f} | {r['err32']:.1e} "
                     f"| {_fmt(tp, cap=r['cap'])} | {('<=' if tp == float('inf') else '') + _fmt(over, '{:.2f}')} |")
    ratios = [r["f64"] / r["prune"] for r in rows]
    geo = statistics.geometric_mean(ratios) if ratios else float("nan")
    lines.append(f"\nGeometric mean of check/prune: **{geo:.2f}** (the certificate's share: "
                 f"{geo / (1 + geo):.0%} of a certified prune).")
    return "\n".join(lines) + "\n\n" + phase_table(rows)


def phase_table(rows: list) -> str:
    """The default certified ``fxprune.prune`` by phase (medians), its time over Torch-Pruning's uncertified one."""
    head = "| model | certified prune (s) | " + " | ".join(PHASES) + " | certificate share | certified/TP |"
    lines = ["`fxprune.prune` with its defaults, by phase (seconds, medians; fxprune.profile):", "", head,
             "|" + " --- |" * (head.count("|") - 1)]
    over = []
    for r in rows:
        tp = r["tp"]
        ratio = None if tp is None or tp != tp else r["certified"] / min(tp, r["cap"])
        if ratio is not None and tp != float("inf"):
            over.append(ratio)
        share = r["phases"]["certificate"] / r["certified"] if r["certified"] else 0.0
        lines.append(f"| {r['model']} | {r['certified']:.3f} | " + " | ".join(f"{r['phases'][n]:.3f}" for n in PHASES)
                     + f" | {share:.0%} | {('<=' if tp == float('inf') else '') + _fmt(ratio, '{:.2f}')} |")
    if over:
        lines.append(f"\nGeometric mean of certified/TP over {len(over)} models: **{statistics.geometric_mean(over):.2f}**"
                     f" (worst {max(over):.2f}).")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--models", help="comma-separated zoo:name specs (default: 8 models; 'e2e': the 6 torchvision "
                   "models of BENCHMARKS.md section 3)")
    p.add_argument("--reps", type=int, default=None, help="runs per measurement (default 3, --quick 1)")
    p.add_argument("--tp-timeout", type=int, default=60, help="cap of the Torch-Pruning run, seconds")
    p.add_argument("--md", default=None, help="also write the table to this markdown file (benchmarks/CERTIFICATE.md)")
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    specs = E2E if args.models == "e2e" else args.models.split(",") if args.models else QUICK if args.quick else MODELS
    reps = args.reps or (1 if args.quick else 3)
    rows = []
    for spec in specs:
        print(f"measuring {spec} ...", file=sys.stderr, flush=True)
        rows.append({**measure(spec, reps, args.tp_timeout), "cap": args.tp_timeout})
    import os
    import time
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}",
          file=sys.stderr)
    head = f"Certificate cost (torch {torch.__version__}, 1 thread, median of {reps}, ratio {RATIO}):"
    print(head + "\n")
    print(table(rows))
    if args.md:
        with open(args.md, "w") as f:
            f.write(f"## Certificate cost\n\n`python benchmarks/bench_certificate.py` ({time.strftime('%Y-%m-%d')}, "
                    f"load average at the end {os.getloadavg()[0]:.1f}): the default certificate (permutation "
                    "oracle on a float64 copy) and its float32 fallback beside fxprune's pruning time and "
                    f"Torch-Pruning's. {head}\n\n{table(rows)}\n")


if __name__ == "__main__":
    main()
