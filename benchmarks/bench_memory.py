"""Peak resident memory of ``fxprune hf:DIR --out OUT`` against the checkpoint's size, for both paths.

    python benchmarks/bench_memory.py                       # 0.1/0.3/0.8 GB; benchmarks/MEMORY.md, memory.png
    python benchmarks/bench_memory.py --sizes 0.1 0.3 0.8 1.7 --in-memory-up-to 0.8

Random-weight LLaMA GQA checkpoints (bf16, ``save_pretrained`` with 200 MB shards, vocabulary 32000,
untied head) are written to a scratch directory, then each is pruned twice with ``--ratio 0.2
--importance l2``: once with the default options (the path the memory estimate chooses, Note [Choosing
the path] in ``fxprune/hf/memory.py``) and once with ``--in-memory`` (sizes up to ``--in-memory-up-to``).
Every run is a fresh child process; its peak RSS is the ``ru_maxrss`` the parent reads for it (imports
included), set beside the estimate it printed. Targets (issue 25): default path exit 0 at 0.3 and
1.7 GB, peak <= 1.0x the checkpoint at 1.7 GB and within the printed estimate; ``--in-memory`` at 0.3
GB peak <= 4x the checkpoint. Not a test.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from tabulate import tabulate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

# name (GB on disk) -> (hidden, layers, heads, kv heads, MLP width)
SHAPES = {
    "0.1": (512, 8, 8, 2, 1400),
    "0.3": (1024, 8, 8, 2, 2816),
    "0.8": (1536, 12, 12, 3, 4096),
    "1.7": (2048, 16, 16, 4, 5632),
}
_PEAK = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
         "print('peak_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)")


def _write(path: str, shape: tuple) -> int:
    """Write the checkpoint in a child (its model does not stay in this process); returns its tensor bytes."""
    code = (f"import sys; sys.path.insert(0, {os.path.join(ROOT, 'tests')!r}); from zoo import import_torchvision; "
            "import_torchvision(); import hf_tiny; "
            f"print(hf_tiny.write_llama_checkpoint({path!r}, *{shape!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1])


def _run(argv: list) -> dict:
    """One CLI run in a child: exit code, seconds, peak RSS, the printed path and estimate."""
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _PEAK, sys.executable, "-m", "fxprune", *argv], capture_output=True,
                       text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"), cwd=ROOT)
    est = re.search(r"estimated peak (in memory|streamed) ([\d.]+) GiB", p.stderr)
    return dict(code=p.returncode, seconds=time.perf_counter() - t,
                peak=int(re.search(r"peak_kb (\d+)", p.stderr).group(1)) * 1024,
                path=est.group(1) if est else "?", estimate=float(est.group(2)) * 2**30 if est else None,
                error=p.stderr.strip().splitlines()[-1][:160] if p.returncode else "")


def measure(sizes: list, in_memory_up_to: float, scratch: str, which=("default", "in-memory")) -> list:
    rows = []
    for name in sizes:
        ck = os.path.join(scratch, f"llama-{name}")
        nbytes = _write(ck, SHAPES[name])
        print(f"{name} GB: {nbytes / 1e9:.2f} GB written", flush=True)
        modes = ([("default", [])] if "default" in which else []) + \
            ([("--in-memory", ["--in-memory", "--latency-runs", "0"])]
             if "in-memory" in which and float(name) <= in_memory_up_to else [])
        for label, extra in modes:
            out = os.path.join(scratch, "out")
            shutil.rmtree(out, ignore_errors=True)
            r = _run([f"hf:{ck}", "--ratio", "0.2", "--importance", "l2", "--out", out, *extra])
            r.update(size=name, bytes=nbytes, mode=label)
            print(f"  {label}: exit {r['code']}, {r['path']}, peak {r['peak'] / 2**30:.2f} GiB "
                  f"({r['peak'] / nbytes:.2f}x), estimate {(r['estimate'] or 0) / 2**30:.2f} GiB, "
                  f"{r['seconds']:.0f} s {r['error']}", flush=True)
            rows.append(r)
        shutil.rmtree(ck, ignore_errors=True)
    return rows


_LINE = re.compile(r"  (\S+): exit (\d+), (in memory|streamed|\?), peak ([\d.]+) GiB \(([\d.]+)x\), "
                   r"estimate ([\d.]+) GiB, (\d+) s")


def rows_from_log(path: str) -> list:
    """The rows of a run's printed lines (``--from-log``: a run cut short still gets its report)."""
    rows, size, nbytes = [], None, None
    for line in open(path):
        head = re.match(r"([\d.]+) GB: ([\d.]+) GB written", line)
        if head:
            size, nbytes = head.group(1), float(head.group(2)) * 1e9
            continue
        m = _LINE.match(line)
        if m:
            peak = float(m.group(4)) * 2**30
            rows.append(dict(size=size, bytes=peak / float(m.group(5)), mode=m.group(1), code=int(m.group(2)),
                             path=m.group(3), peak=peak, estimate=float(m.group(6)) * 2**30 or None,
                             seconds=float(m.group(7))))
    return rows


def write_report(rows: list, md: str, png: str) -> None:
    table = [[r["size"], f"{r['bytes'] / 1e9:.2f}", r["mode"], r["path"], r["code"], f"{r['peak'] / 2**30:.2f}",
              f"{r['peak'] / r['bytes']:.2f}x", f"{(r['estimate'] or 0) / 2**30:.2f}",
              "yes" if r["estimate"] and r["peak"] <= r["estimate"] else "no", f"{r['seconds']:.0f}"] for r in rows]
    head = ["checkpoint", "GB on disk", "options", "path taken", "exit", "peak RSS GiB", "peak / checkpoint",
            "printed estimate GiB", "within", "wall s"]
    with open(md, "w") as f:
        f.write("# Peak memory against checkpoint size (`python benchmarks/bench_memory.py`)\n\n")
        f.write(__doc__.split("\n\n", 2)[2].strip() + "\n\n")
        f.write(tabulate(table, headers=head, tablefmt="github", disable_numparse=True) + "\n\n")
        f.write("Targets (issue 25):\n\n" + "\n".join(_targets(rows)) + "\n\n![peak RSS](memory.png)\n")
    _plot(rows, png)


def _targets(rows: list) -> list:
    """One line per target of issue 25 that these rows measure: the figure, and met or not."""
    out = []
    for size, mode, limit in (("0.3", "default", None), ("1.7", "default", 1.0), ("0.3", "--in-memory", 4.0)):
        r = next((r for r in rows if r["size"] == size and r["mode"] == mode), None)
        if r is None:
            out.append(f"- {size} GB, {mode}: not run")
            continue
        ratio, within = r["peak"] / r["bytes"], bool(r["estimate"] and r["peak"] <= r["estimate"])
        ok = r["code"] == 0 and (limit is None or ratio <= limit) and (mode != "default" or within)
        need = f"peak <= {limit:g}x the checkpoint" if limit else "exit 0"
        out.append(f"- {size} GB, {mode}: exit {r['code']}, peak {ratio:.2f}x the checkpoint, "
                   f"{'within' if within else 'over'} the printed estimate (target: {need}"
                   f"{', within the estimate' if mode == 'default' else ''}): {'met' if ok else 'NOT met'}")
    return out


def _plot(rows: list, png: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, marker in (("default", "o"), ("--in-memory", "s")):
        pts = sorted((r["bytes"] / 1e9, r["peak"] / 1e9) for r in rows if r["mode"] == mode and r["code"] == 0)
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=f"{mode} (exit 0)")
    top = max(r["bytes"] for r in rows) / 1e9
    ax.plot([0, top], [0, top], "k:", label="1x checkpoint")
    ax.plot([0, top], [0, 4 * top], "k--", lw=0.8, label="4x checkpoint")
    ax.set_xlabel("checkpoint (GB)")
    ax.set_ylabel("peak RSS (GB)")
    ax.set_title("fxprune hf:DIR --out OUT: peak memory")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["0.1", "0.3", "0.8"], choices=list(SHAPES))
    ap.add_argument("--in-memory-up-to", type=float, default=0.8, help="largest size run with --in-memory (GB)")
    ap.add_argument("--scratch", default=None, help="where checkpoints are written (default: a temp dir)")
    ap.add_argument("--modes", nargs="+", default=["default", "in-memory"], choices=["default", "in-memory"])
    ap.add_argument("--from-log", metavar="FILE", help="write the report from the lines a run printed")
    args = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    if args.from_log:
        return write_report(rows_from_log(args.from_log), os.path.join(here, "MEMORY.md"),
                            os.path.join(here, "memory.png"))
    scratch = args.scratch or tempfile.mkdtemp(prefix="fxprune-mem-")
    try:
        rows = measure(args.sizes, args.in_memory_up_to, scratch, args.modes)
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    write_report(rows, os.path.join(here, "MEMORY.md"), os.path.join(here, "memory.png"))
    print(f"wrote {os.path.join(here, 'MEMORY.md')}")


if __name__ == "__main__":
    main()
