"""LATENCY.md and latency.png from the rows of bench_latency.py (see its docstring)."""
from __future__ import annotations

import math
import os
import statistics
import time

from tabulate import tabulate

METHODS = ["fxprune", "fxprune-lat", "TP", "TP-r8"]


def _geo(xs) -> float:
    xs = [x for x in xs if x and x > 0]
    return math.exp(statistics.fmean(math.log(x) for x in xs)) if xs else float("nan")


def _cell(r) -> str:
    if r is None:
        return "-"
    if "error" in r:
        return "error"
    return f"{r['macs']:.1%} / {r['lat']:.1%} / **{r['eff']:.2f}**" if r["method"].startswith("fxprune") \
        else f"{r['macs']:.1%} / {r['lat']:.1%} / {r['eff']:.2f}"


def _macs_table(rows, runtime) -> str:
    idx = {(r["model"], r["method"], r["target"]): r for r in rows if r["runtime"] == runtime}
    keys = sorted({(r["model"], r["target"]) for r in rows if r["runtime"] == runtime and r["method"] in METHODS})
    body = [[m, f"{t:.0%}"] + [_cell(idx.get((m, meth, t))) for meth in METHODS] for m, t in keys]
    return tabulate(body, headers=["model", "MACs target"] + [f"{m}: MACs / lat / eff" for m in METHODS],
                    tablefmt="github")


def _lat_table(rows, runtime) -> str:
    body = []
    for r in sorted((r for r in rows if r["runtime"] == runtime and r["method"] == "fxprune-tl"),
                    key=lambda r: (r["model"], r["target"])):
        if "error" in r:
            body.append([r["model"], f"{r['target']:.0%}", "error", "", "", "", "", r["error"][:60]])
            continue
        body.append([r["model"], f"{r['target']:.0%}", f"{r.get('planned_lat', float('nan')):.1%}",
                     f"{r['lat']:.1%}", f"{r['macs']:.1%}", f"{r['eff']:.2f}",
                     f"{r.get('table_build_s', 0):.0f} s ({r.get('table_measured', 0)}/{r.get('table_layers', 0)})",
                     f"{r['prune_s']:.0f} s"])
    return tabulate(body, headers=["model", "latency target", "planned (search)", "re-measured", "MACs",
                                   "efficiency", "table build (kinds measured/all)", "prune time"],
                    tablefmt="github")


def _summary(rows) -> tuple:
    lines, ok = [], []
    for rt in sorted({r["runtime"] for r in rows}):
        good = [r for r in rows if r["runtime"] == rt and "error" not in r]
        geo = {m: _geo(r["eff"] for r in good if r["method"] == m) for m in METHODS + ["fxprune-tl"]}
        lines.append(f"* **{rt}**: geometric-mean efficiency " +
                     ", ".join(f"{m} {g:.2f}" for m, g in geo.items() if not math.isnan(g)))
        slower = [r for r in good if r["method"].startswith("fxprune") and r["lat"] >= 1.0]
        lines.append(f"  * fxprune models slower than dense: {len(slower)} of "
                     f"{sum(r['method'].startswith('fxprune') for r in good)}; TP: "
                     f"{sum(r['lat'] >= 1.0 for r in good if r['method'].startswith('TP'))}")
        tl = [r for r in good if r["method"] == "fxprune-tl"]
        within = [r for r in tl if abs(r.get("planned_lat", 9) - r["target"]) <= 0.05 * r["target"]]
        within2 = [r for r in tl if abs(r["lat"] - r["target"]) <= 0.05 * r["target"]]
        lines.append(f"  * target_latency within 5%: {len(within)} of {len(tl)} as planned, "
                     f"{len(within2)} of {len(tl)} re-measured")
        beat, total = _versus(good)
        lines.append(f"  * rows where fxprune-lat's efficiency >= both TP variants': {beat} of {total}")
        ok.append((rt, geo.get("fxprune-lat"), len(slower), len(within), len(tl), beat, total))
    return "\n".join(lines), ok


def _versus(good) -> tuple:
    idx = {(r["model"], r["method"], r["target"]): r for r in good}
    beat = total = 0
    for (m, meth, t), r in idx.items():
        if meth != "fxprune-lat":
            continue
        tps = [idx[(m, k, t)]["eff"] for k in ("TP", "TP-r8") if (m, k, t) in idx]
        if tps:
            total += 1
            beat += r["eff"] >= max(tps)
    return beat, total


def _plot(rows, path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runtimes = sorted({r["runtime"] for r in rows})
    fig, axes = plt.subplots(1, len(runtimes), figsize=(6 * len(runtimes), 5), squeeze=False)
    for ax, rt in zip(axes[0], runtimes):
        for meth, mk in zip(METHODS + ["fxprune-tl"], "osx^D"):
            pts = [(r["macs"], r["lat"]) for r in rows if r["runtime"] == rt and r["method"] == meth
                   and "error" not in r]
            if pts:
                ax.scatter(*zip(*pts), marker=mk, label=meth, alpha=0.8)
        ax.plot([0, 1.1], [0, 1.1], "k--", lw=0.8, label="latency = MACs")
        ax.axhline(1.0, color="r", lw=0.6)
        ax.set(xlabel="MACs kept (fraction of dense)", ylabel="latency (fraction of dense)", title=rt,
               xlim=(0, 1.05), ylim=(0, 1.3))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def write_report(rows, here: str, cpu: str) -> None:
    loads = [r["load"] for r in rows if "load" in r]
    summary, _ = _summary(rows)
    parts = [
        "# Latency: MACs vs measured latency (bench_latency.py)", "",
        f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `python benchmarks/bench_latency.py` "
        f"on {cpu}, {os.cpu_count()} cores shared with other engineers: 1-minute load average during the rows "
        f"{min(loads, default=0):.1f} to {max(loads, default=0):.1f} (median {statistics.median(loads or [0]):.1f}). "
        "Batch 1, 224 px, float32, 1 thread; every pruned model timed beside its dense model, interleaved, "
        "median of the rounds. Efficiency = (dense latency / pruned latency) / (dense MACs / pruned MACs).", "",
        "## Summary", "", summary, "",
        "Reading it: `fxprune` is the plain MACs target (no latency model, so no timing and no slower-than-dense "
        "check); `fxprune-lat` and `fxprune-tl` run with `runtime=`, are timed beside dense by fxprune itself and "
        "warn when not faster. `planned` is the ratio fxprune's own interleaved timing accepted; `re-measured` is "
        "this script's independent timing minutes later, so their gap is the machine's noise at that load. "
        "A latency target on a model whose batch-1 time is mostly per-op overhead and memory-bound ops "
        "(mobilenet_v3_large on eager) is reached only by cutting MACs far more than latency: a low efficiency "
        "there is the model's latency structure, not a mis-timing.", "",
    ]
    for rt in sorted({r["runtime"] for r in rows}):
        parts += [f"## {rt}: MACs targets", "", "Each cell: MACs kept / latency kept / efficiency.", "",
                  _macs_table(rows, rt), "", f"## {rt}: latency targets (fxprune `target_latency`)", "",
                  _lat_table(rows, rt), ""]
    errs = [r for r in rows if "error" in r]
    if errs:
        parts += ["## Failures", ""] + [f"* {r['model']} {r['runtime']} {r['method']} {r['target']}: "
                                        f"{r['error']}" for r in errs] + [""]
    if _plot(rows, os.path.join(here, "latency.png")):
        parts += ["![latency vs MACs](latency.png)", ""]
    with open(os.path.join(here, "LATENCY.md"), "w") as f:
        f.write("\n".join(parts))
