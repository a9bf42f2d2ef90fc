"""Regenerate BENCHMARKS.md: fxprune beside Torch-Pruning, every number from the same run.

    python benchmarks/make_benchmarks_md.py --quick            # a small subset (~5 min on 2 cores)
    python benchmarks/make_benchmarks_md.py                    # the default suite (stated in the file)
    python benchmarks/make_benchmarks_md.py --all-torchvision  # every torchvision model <= 100M params (long)

Sections:
1. coverage over torchvision, timm and Hugging Face (tiny configs): fxprune exact (both
   float64 oracles pass, and 30% of every group removed runs with the same output shapes)
   vs Torch-Pruning success (DependencyGraph + MagnitudePruner at pruning_ratio=0.3 with the
   output layers ignored, ``step()``, the model runs with the same output shapes), each
   within a time cap, each tool in its own worker process;
2. analysis time and peak memory: benchmarks/bench_analysis.py, its output embedded;
3. end-to-end pruning time (analysis + scoring + selection + rewrite) of both tools;
4. fxprune-pruned latency against the MACs reduction, batch 1, fixed thread count.

After these, BENCHMARKS.md collects the reports the other benchmark commands write
(certificate cost, fuzzer, third-party models, Hugging Face families, post-training quality,
streamed checkpoints), each under its own heading and dated by its own run:

    python benchmarks/make_benchmarks_md.py --collect          # refresh only that part, run nothing
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workers import Timeout, WorkerDied, read_json_line  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RATIO = 0.3
E2E_MODELS = ["resnet50", "densenet121", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny", "vit_b_16"]
E2E_QUICK = ["resnet18", "mobilenet_v3_large"]
LAT_MODELS = ["resnet50", "mobilenet_v3_large", "convnext_tiny", "vit_b_16"]
LAT_QUICK = ["resnet18"]
LAT_RATIOS = [0.2, 0.4, 0.6]


# --------------------------------------------------------------------------- worker side

def _shapes(out):
    from torch.utils._pytree import tree_flatten
    import torch
    return [tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def _first_line(e: BaseException, n: int = 100) -> str:
    s = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return s if len(s) <= n else s[: n - 3] + "..."


def _fx_prune(model, args, kwargs, ratio):
    import fxprune
    dg = fxprune.analyze(model, args, kwargs)
    keep = fxprune.plan(dg, fxprune.score_groups(dg, "l2"), fxprune.PruneConfig(ratio=ratio))
    return dg, fxprune.apply(dg, keep)


def _output_layers(model, out):
    """The layers whose outputs are the model's output channels (classes, vocabulary, hidden size)."""
    import torch.nn as nn
    t = _first_tensor(out)
    c = t.shape[1] if t.dim() == 4 else t.shape[-1]
    return [m for m in model.modules()
            if (isinstance(m, nn.Linear) and m.out_features == c) or (isinstance(m, nn.Conv2d) and m.out_channels == c)]


def _first_tensor(out):
    from torch.utils._pytree import tree_flatten
    import torch
    return next(t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))


def _tp_prune(model, args, kwargs, ratio):
    import torch
    import torch_pruning as tp
    with torch.no_grad():
        ref = model(*args, **kwargs)
    example = kwargs if kwargs else (args[0] if len(args) == 1 else args)
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=ratio, ignored_layers=_output_layers(model, ref))
    pruner.step()
    return model


def _call(model, args, kwargs):
    import torch
    with torch.no_grad():
        return model(*args, **kwargs)


def task_coverage(tool, zoo_name, name):
    import copy
    import fxprune
    import suite_models
    model, args, kwargs = suite_models.build(zoo_name, name)
    params = sum(p.numel() for p in model.parameters())
    if zoo_name == "torchvision" and params > suite_models.MAX_TV_PARAMS:
        return {"status": "skipped", "note": f"{params / 1e6:.0f}M params > 100M", "params": params}
    ref = _shapes(_call(model, args, kwargs))
    t = time.perf_counter()
    if tool == "fxprune":
        try:
            rep = fxprune.verify(model, args, kwargs, raise_on_mismatch=False)
        except fxprune.CaptureError as e:
            return {"status": "no", "note": "untraceable: " + _first_line(e).split(": ", 2)[-1], "params": params}
        _, pruned = _fx_prune(model, args, kwargs, RATIO)
        ok_shape = _shapes(_call(pruned, args, kwargs)) == ref
        kept = sum(p.numel() for p in pruned.parameters()) / params
        note = "" if rep.passed else f"oracle error {max(rep.permutation_error, rep.removal_error):.1e}"
        if not ok_shape:
            note += " output shape changed"
        return {"status": "yes" if rep.passed and ok_shape else "no", "note": note.strip(), "params": params,
                "kept": kept, "s": time.perf_counter() - t}
    m = copy.deepcopy(model)
    _tp_prune(m, args, kwargs, RATIO)
    out = _shapes(_call(m, args, kwargs))
    kept = sum(p.numel() for p in m.parameters()) / params
    if out != ref:
        return {"status": "no", "note": f"output shape {out[:1]} != {ref[:1]}", "params": params, "kept": kept}
    return {"status": "yes", "note": "" if kept < 0.999 else "ran, but pruned nothing", "params": params,
            "kept": kept, "s": time.perf_counter() - t}


def task_e2e(tool, name, reps):
    import copy
    import suite_models
    model, args, kwargs = suite_models.build("torchvision", name, side=224)
    fn = (lambda m: _fx_prune(m, args, kwargs, RATIO)) if tool == "fxprune" else \
        (lambda m: _tp_prune(m, args, kwargs, RATIO))
    times = []
    for _ in range(reps + 1):  # the first run is a warm-up
        m = copy.deepcopy(model)
        t = time.perf_counter()
        fn(m)
        times.append(time.perf_counter() - t)
    return {"times": times[1:], "cold": times[0]}


def task_latency(name, ratios, runs, threads):
    import fxprune
    import suite_models
    model, args, kwargs = suite_models.build("torchvision", name, side=224)
    macs0 = fxprune.count_macs(model, args)
    params0 = fxprune.count_params(model)
    lat0 = fxprune.latency(model, args, repeats=runs, threads=threads)["median_ms"]
    rows = []
    for r in ratios:
        _, pruned = _fx_prune(model, args, kwargs, r)
        lat = fxprune.latency(pruned, args, repeats=runs, threads=threads)["median_ms"]
        rows.append({"ratio": r, "macs": fxprune.count_macs(pruned, args) / macs0,
                     "params": fxprune.count_params(pruned) / params0, "lat": lat / lat0, "ms": lat})
    return {"ms0": lat0, "macs0": macs0, "rows": rows}


def _worker(tool: str) -> None:
    import warnings
    import logging
    warnings.filterwarnings("ignore")
    for n in ("torch.fx.experimental.symbolic_shapes", "torch._dynamo", "torch.export"):
        logging.getLogger(n).setLevel(logging.ERROR)
    sys.path.insert(0, HERE)
    import torch
    import suite_models
    suite_models.import_torchvision()
    torch.set_grad_enabled(True)  # Torch-Pruning traces autograd
    if os.environ.get("BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    print(json.dumps({"ready": True}), flush=True)
    real_stdout = sys.stdout
    for line in sys.stdin:
        req = json.loads(line)
        sys.stdout = sys.stderr  # libraries' prints must not corrupt the protocol
        try:
            if req["task"] == "coverage":
                out = task_coverage(tool, req["zoo"], req["name"])
            elif req["task"] == "e2e":
                out = task_e2e(tool, req["name"], req["reps"])
            else:
                out = task_latency(req["name"], req["ratios"], req["runs"], req["threads"])
        except Exception as e:
            out = {"status": "no", "error": _first_line(e), "note": _first_line(e),
                   "where": traceback.format_exc().strip().splitlines()[-3:]}
        sys.stdout = real_stdout
        print(json.dumps(out), flush=True)


# --------------------------------------------------------------------------- parent side

class Worker:
    def __init__(self, tool: str, threads: int | None = None):
        self.tool, self.proc = tool, None
        self.env = dict(os.environ, **({"BENCH_THREADS": str(threads)} if threads else {}))

    def _start(self):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", self.tool],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, bufsize=1, env=self.env)
        self._read(300)

    def _read(self, timeout: float) -> dict:
        try:
            return read_json_line(self.proc, timeout)
        except Timeout:
            self.close()
            raise
        except WorkerDied as e:
            self.proc = None
            raise RuntimeError(str(e)) from None

    def ask(self, cap: float, **req) -> dict:
        if self.proc is None:
            self._start()
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read(cap)

    def close(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def coverage(models: list, tools: list, cap: float) -> dict:
    """{(zoo, name): {tool: result}}; the tools run concurrently, one thread each."""
    results = {m: {} for m in models}

    def drive(tool):
        w = Worker(tool, threads=1)
        for i, (z, n) in enumerate(models, 1):
            t = time.perf_counter()
            try:
                r = w.ask(cap, task="coverage", zoo=z, name=n)
            except Timeout:
                r = {"status": "no", "note": f"over the {cap:g} s cap"}
            except Exception as e:
                r = {"status": "no", "note": _first_line(e)}
            r["wall"] = time.perf_counter() - t
            results[(z, n)][tool] = r
            _log(f"  coverage [{tool} {i}/{len(models)}] {z}:{n}: {r['status']} ({r['wall']:.0f} s) {r.get('note', '')}")
        w.close()
    threads = [threading.Thread(target=drive, args=(t,)) for t in tools]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return results


def e2e(names: list, tools: list, reps: int, cap: float) -> dict:
    out = {}
    workers = {t: Worker(t) for t in tools}
    for n in names:
        out[n] = {}
        for t in tools:
            try:
                out[n][t] = workers[t].ask(cap, task="e2e", name=n, reps=reps)
            except Timeout:
                out[n][t] = {"error": f">{cap:g} s"}
            except Exception as e:
                out[n][t] = {"error": _first_line(e)}
            _log(f"  e2e {n} {t}: {out[n][t].get('times', out[n][t].get('error'))}")
    for w in workers.values():
        w.close()
    return out


def latency_table(names: list, runs: int, threads: int, cap: float) -> dict:
    w, out = Worker("fxprune"), {}
    for n in names:
        try:
            out[n] = w.ask(cap, task="latency", name=n, ratios=LAT_RATIOS, runs=runs, threads=threads)
        except Exception as e:
            out[n] = {"error": _first_line(e) or "timeout"}
        _log(f"  latency {n}: done")
    w.close()
    return out


def _versions() -> dict:
    sys.path.insert(0, HERE)
    import importlib.metadata as md
    v = {}
    for pkg in ("torch", "torchvision", "timm", "transformers", "torch-pruning", "fxprune"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            v[pkg] = "not installed"
    return v


def _machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (f"{cpu}, {os.cpu_count()} logical CPUs, torch default {torch.get_num_threads()} intra-op threads; "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}; "
            f"load average at start {load[0]:.1f}")


def _gmean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def render(args, models, cov, analysis_text, e2e_res, lat, versions, machine, started, wall) -> str:
    from tabulate import tabulate
    L = []
    mode = "quick subset" if args.quick else ("every torchvision model" if args.all_torchvision else "default suite")
    L.append("# Benchmarks: fxprune beside Torch-Pruning\n")
    L.append(f"Generated by `python benchmarks/make_benchmarks_md.py{' --quick' if args.quick else ''}"
             f"{' --all-torchvision' if args.all_torchvision else ''}` ({mode}) on {started:%Y-%m-%d %H:%M} UTC; "
             f"the whole run took {wall / 60:.1f} min. Every table comes from this one run.\n")
    L.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    L.append(f"- machine: {machine}")
    L.append("- the machine is shared: timings are medians, ratios are per-model ratios of medians, summarised "
             "by their geometric mean\n")

    # 1. coverage
    L.append("## 1. Coverage\n")
    L.append(f"Per model (random weights, nothing downloaded): **fxprune exact** = both float64 oracles of "
             f"`fxprune.verify` pass (rtol 1e-9) *and* removing {RATIO:.0%} of every group (L2) runs with the same "
             f"output shapes. **TP ok** = Torch-Pruning's `MagnitudePruner(pruning_ratio={RATIO})` with the output "
             "layers ignored (every Linear/Conv whose width equals the output's channel dimension) builds its "
             f"dependency graph, `step()` succeeds and the model runs with the same output shapes. Cap "
             f"{args.cap:g} s per model per tool; the two tools run side by side, one thread each. Inputs: "
             "torchvision 2x3xSxS (S=64, 75 for inception, 224 for ViT/Swin/MaxViT), timm 2x3xSxS (small S where "
             "the model allows it), HF tiny configs (2 layers, hidden 32) with a batch of 2x7 tokens or 2x3x32x32 "
             "pixels. TP's own correctness is not checked by an oracle: \"ok\" only means it ran.\n")
    rows, summary = [], {}
    for z, n in models:
        r = cov[(z, n)]
        fx, tp = r.get("fxprune", {}), r.get("tp", {})
        params = fx.get("params") or tp.get("params")
        if fx.get("status") == "skipped":
            rows.append([z, n, f"{params / 1e6:.1f}M" if params else "-", "skipped", "skipped", fx.get("note", "")])
            continue
        s = summary.setdefault(z, [0, 0, 0])
        s[0] += 1
        s[1] += fx.get("status") == "yes"
        s[2] += tp.get("status") == "yes"
        note = "; ".join(x for x in (f"fxprune: {fx['note']}" if fx.get("note") else "",
                                     f"TP: {tp['note']}" if tp.get("note") else "") if x)
        rows.append([z, n, f"{params / 1e6:.2f}M" if params else "-", fx.get("status", "-"),
                     tp.get("status", "n/a"), note[:160]])
    L.append(tabulate([[z, t, f, p] for z, (t, f, p) in summary.items()]
                      + [["all", sum(v[0] for v in summary.values()), sum(v[1] for v in summary.values()),
                          sum(v[2] for v in summary.values())]],
                      headers=["zoo", "models", "fxprune exact", "TP ok"], tablefmt="github"))
    L.append("")
    L.append(tabulate(rows, headers=["zoo", "model", "params", "fxprune exact", "TP ok", "notes"],
                      tablefmt="github", disable_numparse=True))
    L.append("")

    # 2. analysis
    L.append("## 2. Analysis time and peak memory\n")
    L.append("`benchmarks/bench_analysis.py` in the same run (its docstring says what is timed: "
             "`fxprune.analyze` vs `DependencyGraph().build_dependency` + `get_all_groups`, input 1x3x224x224, "
             "each tool in its own process, runs alternated, medians; peak RSS growth of the first analysis):\n")
    L.append("```\n" + analysis_text.strip() + "\n```\n")

    # 3. end-to-end
    L.append("## 3. End-to-end pruning time\n")
    L.append(f"Removing {RATIO:.0%} of every group by L2 magnitude, torchvision, input 1x3x224x224, default threads. "
             "fxprune: `analyze` + `score_groups` + `plan` + `apply` (what `fxprune.prune` does, so with its "
             "defaults: the checked trace runs the model and its graph once, and `apply` certifies the result "
             "with the permutation oracle on a float64 copy; the certificate's share is in section 5). Torch-Pruning: "
             "`MagnitudePruner(...)` construction (its dependency graph) + `step()`. Median of "
             f"{args.reps} runs after one warm-up run, each on a fresh deep copy; ratio = fxprune/TP.\n")
    rows, ratios = [], []
    for n, r in e2e_res.items():
        fx, tp = r.get("fxprune", {}), r.get("tp", {})
        fxm = statistics.median(fx["times"]) if "times" in fx else None
        tpm = statistics.median(tp["times"]) if "times" in tp else None
        ratio = fxm / tpm if fxm and tpm else None
        if ratio:
            ratios.append(ratio)
        rows.append([n, f"{fxm:.3f}" if fxm else fx.get("error", "-"), f"{tpm:.3f}" if tpm else tp.get("error", "-"),
                     f"{ratio:.3f}" if ratio else "-"])
    L.append(tabulate(rows, headers=["model", "fxprune s", "TP s", "fxprune/TP"], tablefmt="github",
                      disable_numparse=True))
    if ratios:
        L.append(f"\nGeometric mean of fxprune/TP over {len(ratios)} models: **{_gmean(ratios):.3f}**.\n")

    # 4. latency
    L.append("## 4. Pruned-model latency against the MACs reduction\n")
    L.append(f"fxprune, L2, uniform (local) ratio of every group; torchvision, batch 1x3x224x224, "
             f"{args.lat_threads} intra-op thread(s) (steadier on a shared machine), median of {args.lat_runs} "
             "forward passes after 3 warm-ups. MACs from `fxprune.count_macs` (FlopCounterMode / 2). Columns are "
             "fractions of the unpruned model.\n")
    rows = []
    for n, r in lat.items():
        if "error" in r:
            rows.append([n, "-", "-", "-", "-", r["error"]])
            continue
        rows.append([n, "0", "100%", "100%", "100%", f"{r['ms0']:.1f}"])
        for x in r["rows"]:
            rows.append([n, f"{x['ratio']:.1f}", f"{x['params']:.1%}", f"{x['macs']:.1%}", f"{x['lat']:.1%}",
                         f"{x['ms']:.1f}"])
    L.append(tabulate(rows, headers=["model", "ratio removed", "params", "MACs", "latency", "ms"],
                      tablefmt="github", disable_numparse=True))
    L.append("\nLatency falls less than MACs where the remaining time is memory-bound or in ops "
             "MACs do not count (normalization, activations, pooling).\n")
    return "\n".join(L) + "\n"


COLLECTED = "<!-- collected reports: python benchmarks/make_benchmarks_md.py --collect -->"
REPORTS = [  # (file under benchmarks/, the command that writes it)
    ("CERTIFICATE.md", "python benchmarks/bench_certificate.py --md benchmarks/CERTIFICATE.md"),
    ("FUZZ.md", "python benchmarks/fuzz.py --examples 3000 --md benchmarks/FUZZ.md"),
    ("THIRDPARTY.md", "python benchmarks/bench_thirdparty.py"),
    ("HF.md", "python benchmarks/bench_hf.py"),
    ("QUALITY.md", "python benchmarks/bench_quality.py"),
    ("STREAM.md", "python benchmarks/bench_stream.py"),
    ("MEMORY.md", "python benchmarks/bench_memory.py"),
    ("LATENCY.md", "python benchmarks/bench_latency.py"),
    ("DEPTH.md", "python benchmarks/bench_depth.py"),
    ("SPEED.md", "python benchmarks/bench_analysis.py; python benchmarks/bench_certificate.py --models e2e"),
]


def collected() -> str:
    """The reports of the other benchmark commands, each demoted under one heading (missing ones named)."""
    parts = [COLLECTED, "", "## 5. Reports of the other benchmark commands", "",
             "Each report below comes from its own command and run (dated inside), not from the run above."]
    for name, cmd in REPORTS:
        path = os.path.join(HERE, name)
        if not os.path.isfile(path):
            parts += ["", f"### {name}: not run yet (`{cmd}`)"]
            continue
        with open(path) as f:
            body = f.read().strip().splitlines()
        body = [("#" + line) if line.startswith("#") else line for line in body]  # demote its headings
        body = [line.replace("](quality_lm.png)", "](benchmarks/quality_lm.png)")
                .replace("](latency.png)", "](benchmarks/latency.png)") for line in body]
        parts += ["", *body]
    return "\n".join(parts) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small subset of every section (a few minutes)")
    ap.add_argument("--all-torchvision", action="store_true", help="coverage over every torchvision model <= 100M")
    ap.add_argument("--cap", type=float, default=None,
                    help="seconds per model per tool in coverage (default 120; 60 with --quick)")
    ap.add_argument("--reps", type=int, default=3, help="timed end-to-end runs per model and tool (default 3)")
    ap.add_argument("--lat-runs", type=int, default=20, help="timed forward passes per latency (default 20)")
    ap.add_argument("--lat-threads", type=int, default=1, help="intra-op threads for latency (default 1)")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: coverage,analysis,e2e,latency")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--collect", action="store_true",
                    help="only refresh the collected reports of the other benchmark commands (runs nothing)")
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.worker)
        return 0
    if args.collect:
        with open(args.out) as f:
            head = f.read().split(COLLECTED)[0].rstrip("\n")
        with open(args.out, "w") as f:
            f.write(head + "\n\n" + collected())
        _log(f"refreshed the collected reports in {args.out}")
        return 0
    sys.path.insert(0, HERE)
    import importlib.util
    import suite_models
    suite_models.import_torchvision()
    skip = set(filter(None, args.skip.split(",")))
    tools = ["fxprune"] + (["tp"] if importlib.util.find_spec("torch_pruning") else [])
    if args.cap is None:
        args.cap = 60 if args.quick else 120
    if args.quick:
        args.reps, args.lat_runs = 1, 10
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    machine, versions = _machine(), _versions()

    models = suite_models.suite(args.quick, args.all_torchvision)
    cov = {m: {} for m in models}
    if "coverage" not in skip:
        _log(f"1/4 coverage: {len(models)} models x {len(tools)} tools")
        cov = coverage(models, tools, args.cap)
    analysis_text = "(skipped)"
    if "analysis" not in skip:
        _log("2/4 analysis time and memory (bench_analysis.py)")
        cmd = [sys.executable, os.path.join(HERE, "bench_analysis.py")]
        cmd += ["--quick"] if args.quick else ["--reps-fx", "3", "--reps-tp", "3"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        analysis_text = res.stdout + (f"\n(bench_analysis.py exited {res.returncode}: {res.stderr[-500:]})"
                                      if res.returncode else "")
    e2e_res = {}
    if "e2e" not in skip:
        _log("3/4 end-to-end pruning time")
        e2e_res = e2e(E2E_QUICK if args.quick else E2E_MODELS, tools, args.reps, cap=300)
    lat = {}
    if "latency" not in skip:
        _log("4/4 latency vs MACs")
        lat = latency_table(LAT_QUICK if args.quick else LAT_MODELS, args.lat_runs, args.lat_threads, cap=600)
    text = render(args, models, cov, analysis_text, e2e_res, lat, versions, machine, started,
                  time.perf_counter() - t0)
    text = text.rstrip("\n") + "\n\n" + collected()
    with open(args.out, "w") as f:
        f.write(text)
    _log(f"wrote {args.out} in {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
