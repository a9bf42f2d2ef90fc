"""Sweep every torchvision classification and segmentation model through fxprune.

    python benchmarks/sweep_torchvision.py                 # all models
    python benchmarks/sweep_torchvision.py --models resnet18,swin_t

Per model (weights=None, eval, float32, input 2x3xSxS with S from tests/zoo.py):
analysis time of ``fxprune.analyze``, the number of groups, the permutation and
removal oracle errors of ``fxprune.verify`` (float64), and the parameter count
before/after removing a third of every group (first ceil(2/3 size) coordinates kept)
with ``fxprune.apply``. Status: exact (both oracles < rtol, pruned output shapes
unchanged, fewer parameters), mismatch, untraceable (symbolic_trace rejects the
model), error (fxprune raised), or skipped (over --max-params).
Exits 1 if any model is a mismatch or an error.
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
import warnings

import torch
from tabulate import tabulate
from torch.utils._pytree import keystr, tree_flatten_with_path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import zoo  # noqa: E402

import fxprune  # noqa: E402

RTOL = 1e-9


def _shapes(out):
    leaves, _ = tree_flatten_with_path(out)
    return {keystr(p): tuple(t.shape) for p, t in leaves if isinstance(t, torch.Tensor)}


def _first_line(e: BaseException, n: int = 90) -> str:
    s = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return s if len(s) <= n else s[: n - 3] + "..."


def sweep_one(name: str, max_params: int) -> dict:
    row = {"model": name, "groups": None, "analyze_s": None, "perm": None, "rem": None,
           "params": None, "params_after": None, "status": "error", "note": ""}
    model = zoo.build(name)
    row["params"] = zoo.param_count(model)
    s = zoo.input_size(name)
    torch.manual_seed(1)
    inputs = (torch.randn(2, 3, s, s),)
    try:
        t = time.perf_counter()
        dg = fxprune.analyze(model, inputs)
        row["analyze_s"] = time.perf_counter() - t
    except fxprune.CaptureError as e:
        row["status"], row["note"] = "untraceable", str(e).splitlines()[0].split(": ", 1)[-1][:90]
        return row
    except Exception as e:
        row["note"] = "analyze: " + _first_line(e)
        return row
    row["groups"] = len(dg.groups)
    unknown = sorted({w.split(" (")[0] for _, w in dg.result.unknown})
    if unknown:
        row["note"] = f"no rule: {', '.join(unknown[:3])}" + (" ..." if len(unknown) > 3 else "")
    if max_params and row["params"] > max_params:
        row["status"] = "skipped"
        row["note"] = f"{row['params'] / 1e6:.0f}M params > --max-params; float64 oracle copies need too much memory"
        return row
    problems = []
    try:
        keep = {g: list(range(math.ceil(2 * g.size / 3))) for g in dg.groups}
        pruned = fxprune.apply(dg, keep)
        row["params_after"] = zoo.param_count(pruned)
        with torch.no_grad():
            if _shapes(pruned(*inputs)) != _shapes(model(*inputs)):
                problems.append("output shapes changed")
        if dg.groups and row["params_after"] >= row["params"]:
            problems.append("parameter count did not drop")
        del pruned, dg
        gc.collect()
        r = fxprune.verify(model, inputs, rtol=RTOL, raise_on_mismatch=False)
        row["perm"], row["rem"] = r.permutation_error, r.removal_error
        if not r.passed:
            problems.append("oracle")
    except Exception as e:
        row["note"] = _first_line(e)
        return row
    if problems:
        row["status"] = "mismatch"
        row["note"] = "; ".join(problems) + (f"; {row['note']}" if row["note"] else "")
    else:
        row["status"] = "exact"
    return row


def _fmt(v, kind):
    if v is None:
        return "-"
    if kind == "err":
        return f"{v:.1e}"
    if kind == "s":
        return f"{v:.2f}"
    if kind == "M":
        return f"{v / 1e6:.2f}M"
    return v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated model names (default: all)")
    ap.add_argument("--max-params", type=float, default=300e6,
                    help="skip the oracles/pruning of models with more parameters (default 300e6; 0: no limit)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_grad_enabled(True)
    all_names = zoo.model_names()
    names = all_names
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        unknown = [n for n in names if n not in all_names]
        if unknown:
            ap.error(f"unknown model(s) {unknown}; choose from torchvision.models.list_models()")
    # warm-up: the first analysis registers meta kernels
    fxprune.analyze(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)), (torch.randn(1, 3, 8, 8),))

    rows, t0 = [], time.perf_counter()
    for i, name in enumerate(names, 1):
        t = time.perf_counter()
        try:
            row = sweep_one(name, int(args.max_params))
        except Exception as e:  # building the model failed
            row = {"model": name, "status": "error", "note": "build: " + _first_line(e)}
        rows.append(row)
        print(f"[{i}/{len(names)}] {name}: {row['status']} ({time.perf_counter() - t:.1f}s) {row.get('note', '')}",
              file=sys.stderr, flush=True)
        gc.collect()
    total = time.perf_counter() - t0

    table = [[r["model"], _fmt(r.get("groups"), ""), _fmt(r.get("analyze_s"), "s"), _fmt(r.get("perm"), "err"),
              _fmt(r.get("rem"), "err"), _fmt(r.get("params"), "M"), _fmt(r.get("params_after"), "M"),
              r["status"], r.get("note", "")] for r in rows]
    print(tabulate(table, headers=["model", "#groups", "analyze s", "perm err", "removal err", "params",
                                   "params (1/3 removed)", "status", "note"], disable_numparse=True))
    counts = {k: sum(r["status"] == k for r in rows) for k in ("exact", "mismatch", "untraceable", "error", "skipped")}
    print(f"\n{len(rows)} models: " + ", ".join(f"{v} {k}" for k, v in counts.items())
          + f" (oracle rtol {RTOL:g}; input 2x3xSxS float64 for the oracles); sweep took {total:.0f} s")
    return 1 if counts["mismatch"] or counts["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
