"""Analysis time and memory: fxprune.analyze against Torch-Pruning's DependencyGraph.

    python benchmarks/bench_analysis.py            # 8 torchvision models, 5 fxprune / 3 TP runs
    python benchmarks/bench_analysis.py --quick    # 2 models, 1 run each (smoke test)
    python benchmarks/bench_analysis.py --models resnet50,swin_t --reps-fx 9 --reps-tp 5

What is timed, per model (torchvision, weights=None, eval, float32, input 1x3x224x224):

* fxprune: ``fxprune.analyze(model, (x,))``;
* Torch-Pruning: ``tp.DependencyGraph().build_dependency(model, example_inputs=x)``
  followed by ``list(DG.get_all_groups())``.

How: each tool runs in its own worker subprocess per model. A worker builds the
model, warms up on a tiny conv net (first-call costs such as meta-kernel
registration), then does one untimed *memory run* on the model, then the timed
runs. The parent alternates the tools run by run (fx, TP, fx, TP, ...) and reports
medians. Every run of a worker is capped at --tp-timeout seconds (default 60): a
run over the cap kills the worker, is shown as ">60", and the cap is used in the
ratio, which is then an upper bound of fxprune/TP (marked "<=").

Memory: peak RSS growth of the memory run, the first analysis of the model in a
fresh process: the worker resets the kernel's high-water mark (``echo 5 >
/proc/self/clear_refs``), runs, and reports ``VmHWM - VmRSS(before)``. Where the
reset is unavailable, ``ru_maxrss - VmRSS(before)`` (a lower bound).

#groups: ``len(dg.groups)`` for fxprune; ``len(list(DG.get_all_groups()))`` for
Torch-Pruning (its default root types, Conv and Linear). The two tools count
differently: a TP group is a dependency chain rooted at a prunable layer, an
fxprune group is one set of coupled channels.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workers import Timeout, WorkerDied, read_json_line  # noqa: E402

MODELS = ["resnet50", "resnet152", "densenet121", "densenet201", "efficientnet_b0",
          "mobilenet_v3_large", "convnext_tiny", "swin_t"]
QUICK = ["resnet50", "mobilenet_v3_large"]
HERE = os.path.dirname(os.path.abspath(__file__))


# --------------------------------------------------------------------------- worker side

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _worker(tool: str, name: str) -> None:
    import warnings
    warnings.filterwarnings("ignore")
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    import torch
    import zoo

    zoo.import_torchvision()
    torch.set_grad_enabled(True)  # Torch-Pruning traces autograd; fxprune does not care
    model = zoo.build(name)
    x = torch.randn(1, 3, 224, 224)
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 4, 3)).eval()
    tiny_x = torch.randn(1, 3, 16, 16)

    phases: dict = {}
    if tool == "fxprune":
        import contextlib

        import fxprune
        try:
            from fxprune.profile import profiling
        except ImportError:  # an fxprune without the phase timer (a baseline checkout)
            profiling = lambda: contextlib.nullcontext(type("P", (), {"seconds": {}})())  # noqa: E731

        def analyze(m, inp):
            with profiling() as prof:
                n = len(fxprune.analyze(m, (inp,)).groups)
            phases.clear()
            phases.update(prof.seconds)
            return n
    else:
        import torch_pruning as tp

        def analyze(m, inp):
            dg = tp.DependencyGraph().build_dependency(m, example_inputs=inp, verbose=False)
            return len(list(dg.get_all_groups()))

    analyze(tiny, tiny_x)  # warm-up
    print(json.dumps({"ready": True}), flush=True)
    first = True
    for line in sys.stdin:
        if line.strip() != "run":
            break
        before = _status_kib("VmRSS")
        exact = first and _reset_peak()
        t = time.perf_counter()
        groups = analyze(model, x)
        dt = time.perf_counter() - t
        peak = _status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"t": dt, "groups": groups, "mem_mib": (peak - before) / 1024 if first else None,
                          "mem_exact": exact, "phases": dict(phases)}), flush=True)
        first = False


# --------------------------------------------------------------------------- parent side

class Worker:
    """A worker subprocess for one (tool, model); every request is capped at ``cap`` seconds."""

    def __init__(self, tool: str, name: str, cap: float, setup_cap: float = 600):
        self.tool, self.cap = tool, cap
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", tool, name],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self._read(setup_cap)

    def _read(self, timeout: float) -> dict:
        try:
            return read_json_line(self.proc, timeout)
        except Timeout:
            self.close()
            raise
        except WorkerDied as e:
            raise RuntimeError(f"{self.tool} worker died (exit code {e.code})") from None

    def run(self) -> dict:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._read(self.cap)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def measure(name: str, tools: list, reps: dict, cap: float) -> dict:
    res = {t: {"times": [], "cold": None, "timeout": False, "groups": None, "mem": None, "mem_exact": False, "error": None,
               "phases": []} for t in tools}
    workers = {}
    for t in tools:
        try:
            workers[t] = Worker(t, name, cap)
        except Exception as e:
            res[t]["error"] = str(e)
    for rep in range(-1, max(reps.values())):  # rep -1: the memory run, untimed
        for t in tools:
            r = res[t]
            if t not in workers or r["timeout"] or r["error"] or rep >= reps[t]:
                continue
            try:
                out = workers[t].run()
            except Timeout:
                r["timeout"] = True
                del workers[t]
                continue
            except Exception as e:
                r["error"] = str(e)
                workers.pop(t).close()
                continue
            r["groups"] = out["groups"]
            if rep < 0:
                r["mem"], r["mem_exact"], r["cold"] = out["mem_mib"], out["mem_exact"], out["t"]
            else:
                r["times"].append(out["t"])
                r["phases"].append(out.get("phases") or {})
    for w in workers.values():
        w.close()
    return res


def _time(r: dict, cap: float):
    """(median seconds or None, shown text, is-lower-bound)."""
    if r["error"]:
        return None, "error", False
    if r["timeout"]:
        return cap, f">{cap:g}", True
    m = statistics.median(r["times"])
    return m, f"{m:.3f}", False


def _mem(r: dict) -> str:
    if r["mem"] is None:
        return "-"
    return f"{r['mem']:.0f}" + ("" if r["mem_exact"] else " (>=)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help=f"comma-separated torchvision model names (default: {','.join(MODELS)})")
    ap.add_argument("--quick", action="store_true", help=f"smoke test: {','.join(QUICK)}, 1 run per tool")
    ap.add_argument("--reps-fx", type=int, default=5, help="timed fxprune runs per model (default 5)")
    ap.add_argument("--reps-tp", type=int, default=3, help="timed Torch-Pruning runs per model (default 3)")
    ap.add_argument("--tp-timeout", type=float, default=60, help="cap per run in seconds (default 60)")
    ap.add_argument("--worker", nargs=2, metavar=("TOOL", "MODEL"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(*args.worker)
        return 0

    names = QUICK if args.quick else MODELS
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
    reps = {"fxprune": 1 if args.quick else args.reps_fx, "tp": 1 if args.quick else args.reps_tp}
    tools = ["fxprune"]
    if importlib.util.find_spec("torch_pruning") is None:
        print("torch_pruning is not importable (pip install torch-pruning): showing fxprune's numbers alone.\n")
    else:
        tools.append("tp")
    from tabulate import tabulate
    import torch

    print(f"load average (1, 5, 15 min) at the start: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"medians of {reps['fxprune']} fxprune" + (f" / {reps['tp']} Torch-Pruning" if "tp" in tools else "")
          + f" runs, input 1x3x224x224, cap {args.tp_timeout:g} s per run", flush=True)
    rows, ratios, any_bound, phase_rows = [], [], False, []
    for name in names:
        t0 = time.perf_counter()
        res = measure(name, tools, reps, args.tp_timeout)
        fx_t, fx_s, _ = _time(res["fxprune"], args.tp_timeout)
        phase_rows.append((name, res["fxprune"]["phases"]))
        row = [name, fx_s]
        if "tp" in tools:
            tp_t, tp_s, bound = _time(res["tp"], args.tp_timeout)
            if fx_t is not None and tp_t:
                ratio = fx_t / tp_t
                ratios.append(ratio)
                any_bound |= bound
                ratio_s = ("<=" if bound else "") + f"{ratio:.3f}"
            else:
                ratio_s = "-"
            row += [tp_s, ratio_s, _mem(res["fxprune"]), _mem(res["tp"]),
                    res["fxprune"]["groups"], res["tp"]["groups"]]
        else:
            row += [_mem(res["fxprune"]), res["fxprune"]["groups"]]
        rows.append(row)
        errs = [f"{t}: {res[t]['error']}" for t in tools if res[t]["error"]]
        cold = ", ".join(f"{t} {res[t]['cold']:.3f} s" for t in tools if res[t]["cold"] is not None)
        print(f"  {name} done in {time.perf_counter() - t0:.0f} s; memory run (untimed): {cold}"
              + (f" ({'; '.join(errs)})" if errs else ""),
              file=sys.stderr, flush=True)
    if "tp" in tools:
        headers = ["model", "fxprune s", "TP s", "fxprune/TP", "fxprune peak MiB", "TP peak MiB",
                   "fxprune #groups", "TP #groups"]
    else:
        headers = ["model", "fxprune s", "fxprune peak MiB", "fxprune #groups"]
    print(tabulate(rows, headers=headers, disable_numparse=True))
    if ratios:
        gm = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        print(f"\ngeometric mean of fxprune/TP over {len(ratios)} models: {gm:.3f}"
              + (f" (an upper bound: Torch-Pruning hit the {args.tp_timeout:g} s cap on some model)"
                 if any_bound else "") + f"  ->  fxprune is {1 / gm:.1f}x faster")
    print("peak MiB: RSS growth of the first analysis in a fresh worker process, after a warm-up on a tiny net")
    print("\n" + phase_table(phase_rows))
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


def phase_table(rows: list) -> str:
    """fxprune's analysis time by phase (medians over the timed runs; fxprune.profile)."""
    from tabulate import tabulate
    names = ["capture", "checked trace", "analysis"]
    body = []
    for model, runs in rows:
        med = {n: statistics.median([r.get(n, 0.0) for r in runs]) if runs else 0.0 for n in names}
        total = sum(med.values()) or 1.0
        body.append([model, *(f"{med[n]:.3f} ({med[n] / total:.0%})" for n in names)])
    return "fxprune analysis by phase, seconds (share):\n" + tabulate(body, headers=["model", *names],
                                                                        disable_numparse=True)


if __name__ == "__main__":
    sys.exit(main())
