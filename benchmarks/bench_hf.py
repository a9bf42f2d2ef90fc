"""Hugging Face families end to end: in-place pruning, what was expressible, the checkpoint round trip, beside
Torch-Pruning on the same models.

    python benchmarks/bench_hf.py                          # every family of tests/hf_tiny.py; writes benchmarks/HF.md
    python benchmarks/bench_hf.py --families llama,t5 --out /tmp/hf.md

Per family (tiny config, random init, nothing downloaded; one sequence of 7 tokens as the example):

* fxprune: the groups, both oracles (float64), ``fxprune.prune(..., inplace=True)`` with global ranking at
  ``--ratio`` (time, trials), which group classes the model's own forward and config follow (per layer,
  uniform, tied) and which were left out and why, the parameters removed, and the round trip: the
  checkpoint written by ``fxprune.hf.save_pretrained`` loaded in a fresh process, compared bit for bit at
  batch 3; then again with ``uniform=True`` (stock configs, loaded with plain transformers).
* Torch-Pruning: ``MagnitudePruner`` (L2, the same ratio, global, ``num_heads`` hints on the q/k/v
  projections, ``prune_num_heads=True, prune_head_dims=False`` as its LLM example does, output layers
  ignored) on the same model: time, parameters removed, whether the pruned model still runs, and whether
  ``save_pretrained`` + ``from_pretrained`` load it (Torch-Pruning does not update the config).

Times are medians of one run on a busy machine: read the ratio column. Exits 1 if an fxprune oracle,
certificate or round trip fails.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import torch
from tabulate import tabulate

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import zoo  # noqa: E402

zoo.import_torchvision()
import transformers as T  # noqa: E402

import hf_tiny  # noqa: E402
from hf_roundtrip import _call  # noqa: E402

T.logging.set_verbosity_error()
warnings.filterwarnings("ignore")

_REASONS = [("eager forward fails", "forward fails"), ("outputs differ", "forward computes another function"),
            ("a checkpoint of it loads", "config changes a build-time value"),
            ("no stock config", "no stock config"), ("refused with the other", "refused together"),
            ("single coordinate", "size 1")]


def _why(reason: str) -> str:
    return next((short for key, short in _REASONS if key in reason), reason[:30])


def _short(label: str) -> str:
    """``model.{layers.*.self_attn.q_proj,rotary_emb}`` -> ``q_proj,rotary_emb``."""
    body = label[label.index("{") + 1:label.rindex("}")] if "{" in label else label
    return ",".join(dict.fromkeys(part.rsplit(".", 1)[-1] for part in body.split(",")))


def _classes(ex) -> tuple:
    counts = {}
    for r in ex.classes:
        counts[r.status] = counts.get(r.status, 0) + 1
    accepted = ", ".join(f"{n} {s}" for s, n in counts.items() if s != "left out")
    left = "; ".join(f"{_short(r.cls.label)}: {_why(r.reason)}" for r in ex.classes if r.status == "left out")
    return f"{len(ex.classes) - counts.get('left out', 0)}/{len(ex.classes)} ({accepted})", left or "-"


def _fxprune(name: str, root: str, ratio: float, uniform: bool) -> dict:
    path = os.path.join(root, f"fx-{name}{'-u' if uniform else ''}")
    os.makedirs(path)
    info = hf_tiny.prune_and_save(name, path, uniform=uniform, ratio=ratio, oracles=not uniform)
    return dict(info, path=path)


# -- Torch-Pruning -------------------------------------------------------------------------------------------

_HEAD_DIM = ("head_dim", "attention_head_size", "key_value_proj_dim", "head_size")
_QKV = ("q_proj", "k_proj", "v_proj", "query", "key", "value", "q", "k", "v", "query_proj", "key_proj",
        "value_proj", "qkv_proj", "query_key_value", "c_attn", "in_proj")


def _num_heads(model) -> dict:
    """The hints Torch-Pruning needs: each q/k/v (or fused) projection and its head count."""
    hints = {}
    for m in model.modules():
        hd = next((v for k in _HEAD_DIM if isinstance(v := vars(m).get(k), int) and not isinstance(v, bool)), None)
        if not hd:
            continue
        for name in _QKV:
            child = getattr(m, name, None)
            if isinstance(child, torch.nn.Linear) and child.out_features % hd == 0:
                hints[child] = child.out_features // hd // (3 if name in ("qkv_proj", "query_key_value", "c_attn")
                                                             else 1)
    return hints


def _first(out) -> torch.Tensor:
    from hf_roundtrip import first_output

    return first_output(out)


def _output_layers(model, out: torch.Tensor) -> list:
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == out.shape[-1]]


def _torch_pruning(name: str, root: str, ratio: float) -> dict:
    import torch_pruning as tp

    import inspect

    model, inputs = hf_tiny.build(name)
    example = inputs(1, 7)
    if "use_cache" in inspect.signature(model.forward).parameters:
        example["use_cache"] = False
    params = hf_tiny.params(model)
    ref = _call(model, example)
    row = {"params": params}
    start = time.perf_counter()
    try:
        pruner = tp.pruner.MagnitudePruner(
            model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
            global_pruning=True, num_heads=_num_heads(model), prune_num_heads=True, prune_head_dims=False,
            head_pruning_ratio=ratio, ignored_layers=_output_layers(model, ref), output_transform=_first)
        pruner.step()
    except Exception as e:  # reported in the table
        return dict(row, error=f"{type(e).__name__}: {str(e).splitlines()[0][:60] if str(e) else ''}")
    row.update(seconds=time.perf_counter() - start, pruned_params=hf_tiny.params(model))
    try:
        x = inputs(3, 5)
        out = _call(model, x)
        row["runs"] = "yes" if out.shape == _call(hf_tiny.build(name)[0], x).shape else "other shapes"
        path = os.path.join(root, f"tp-{name}")
        model.save_pretrained(path)
        torch.save({"inputs": x, "output": out}, os.path.join(path, "ref.pt"))
        row["path"] = path
    except Exception as e:
        row["runs"] = f"fails: {type(e).__name__}"
    return row


def _tp_worker(name: str, root: str, ratio: float, queue) -> None:
    queue.put(_torch_pruning(name, root, ratio))


def _torch_pruning_capped(name: str, root: str, ratio: float, cap: float) -> dict:
    """:func:`_torch_pruning` in a forked process, killed after ``cap`` seconds (Torch-Pruning 1.6 can loop
    forever on some GQA configurations)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_tp_worker, args=(name, root, ratio, queue))
    proc.start()
    try:
        return queue.get(timeout=cap)
    except Exception:  # queue.Empty: still running
        return {"error": f"over the {cap:.0f} s cap"}
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()


# -- round trips in a fresh process ----------------------------------------------------------------------------

def _round_trips(paths: list) -> dict:
    out = subprocess.run([sys.executable, os.path.join(HERE, "..", "tests", "hf_roundtrip.py"), *paths],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    rows = {}
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            rows[row["dir"]] = row
    return rows


def _trip(row: dict) -> str:
    if row is None:
        return "-"
    if "error" in row:
        return "fails: " + row["error"].split(":")[0]
    loader = "fxprune" if row["loader"].startswith("fxprune") else "transformers"
    return f"{'identical' if row['equal'] else 'DIFFERS'} ({loader})"


def _removed(info: dict) -> str:
    return f"{1 - info['pruned_params'] / info['params']:.1%}" if "pruned_params" in info else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default=",".join(hf_tiny.FAMILIES))
    ap.add_argument("--ratio", type=float, default=0.4)
    ap.add_argument("--out", default=os.path.join(HERE, "HF.md"))
    ap.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning")
    ap.add_argument("--tp-cap", type=float, default=120, help="seconds before a Torch-Pruning run is stopped")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = tempfile.mkdtemp(prefix="bench_hf_")
    results, bad = [], 0
    for name in args.families.split(","):
        fx = _fxprune(name, root, args.ratio, False)
        fu = _fxprune(name, root, args.ratio, True)
        tp = {} if args.no_tp else _torch_pruning_capped(name, root, args.ratio, args.tp_cap)
        results.append((name, fx, fu, tp))
        print(f"{name}: fxprune {fx['seconds']:.1f} s, removed {_removed(fx)} / stock {_removed(fu)}; "
              f"TP {tp.get('seconds', 0):.1f} s {tp.get('error', '')}", file=sys.stderr, flush=True)
    trips = _round_trips([p for _, fx, fu, tp in results for p in (fx["path"], fu["path"], tp.get("path")) if p])
    rows = []
    for name, fx, fu, tp in results:
        classes, left = _classes(fx["expressible"])
        t_fx, t_tp = _trip(trips.get(fx["path"])), _trip(trips.get(fu["path"]))
        ok = fx["permutation"] < 1e-9 and fx["removal"] < 1e-9 and fx["certificate"].passed and \
            t_fx.startswith("identical") and t_tp.startswith("identical")
        bad += not ok
        tp_time = tp.get("seconds")
        rows.append([name, fx["groups"], f"{fx['permutation']:.0e} / {fx['removal']:.0e}", classes, left,
                     f"{fx['expressible'].trials} ({fx['expressible'].seconds:.1f} s)",
                     f"{_removed(fx)} ({t_fx})", f"{_removed(fu)} ({t_tp})", f"{fx['seconds']:.1f}",
                     f"{tp_time:.2f}" if tp_time else tp.get("error", "-")[:40],
                     f"{fx['seconds'] / tp_time:.1f}" if tp_time else "-", _removed(tp),
                     tp.get("runs", "-"), _trip(trips.get(tp.get("path"))) if tp.get("path") else "-"])
    headers = ["family", "groups", "oracles perm / removal", "classes in place", "left out (why)", "trials",
               "removed, per layer (round trip)", "removed, uniform (round trip)", "fxprune s", "TP s",
               "fxprune/TP", "TP removed", "TP runs", "TP save + load"]
    table = tabulate(rows, headers=headers, tablefmt="github")
    print(table)
    with open(args.out, "w") as f:
        f.write(f"## Hugging Face families end to end\n\n`python benchmarks/bench_hf.py --ratio {args.ratio}` "
                f"({time.strftime('%Y-%m-%d')}, one thread; tiny configs of tests/hf_tiny.py, random init, one "
                "sequence of 7 tokens as the example). fxprune: both oracles in float64, then "
                "`fxprune.prune(..., inplace=True)` with global ranking (per layer) and with `uniform=True` "
                "(stock config); *classes in place*: what the expressible trials accepted; *round trip*: the "
                "saved checkpoint loaded in a fresh process (`fxprune.hf.from_pretrained` for per-layer "
                "widths, plain transformers for stock ones), compared bit for bit at batch 3. Torch-Pruning: "
                "`MagnitudePruner` (L2, global, `num_heads` hints, `prune_num_heads=True`), stopped after "
                f"{args.tp_cap:.0f} s (it loops on the GQA configs); *TP runs*: the pruned model runs; *TP save "
                "+ load*: `save_pretrained` + `from_pretrained` (it does not update the config).\n\n"
                f"{table}\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
