"""fxprune and Torch-Pruning side by side on models from third-party libraries.

    python benchmarks/bench_thirdparty.py                  # every model, writes benchmarks/THIRDPARTY.md
    python benchmarks/bench_thirdparty.py --models "HF CLIPModel" --cap 300 --out -

Models (tests/thirdparty_zoo.py): diffusion (diffusers), segmentation (segmentation_models_pytorch),
medical imaging (MONAI), detection (torchvision), contrastive image-text (open_clip, HF CLIP),
speech (HF wav2vec2, Whisper); small configs, random init, nothing downloaded; libraries from
the ``thirdparty`` extra (missing ones are listed as skipped). Each tool runs in its own fresh
process per model, capped at ``--cap`` seconds.

* fxprune: ``fxprune.verify`` (both oracles, float64), then ``plan`` at ratio 0.3 by L2
  magnitude and ``apply``; **exact**: both oracles pass and there is at least one group;
  **pinned**: the oracles pass but every channel axis is pinned (the reason is given);
  **failing**: an oracle fails, the pruned model's output shapes change, or fxprune raises.
* Torch-Pruning: ``MagnitudePruner`` at ratio 0.3 (layers producing the output ignored);
  **ran**: the pruned model runs with unchanged output shapes (its outputs are not checked);
  **failed**: it raised or changed the output shapes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)
RATIO = 0.3


def _shapes(out):
    import torch
    from torch.utils._pytree import tree_flatten
    return [tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def _line(e: BaseException, n: int = 110) -> str:
    s = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    return s if len(s) <= n else s[: n - 3] + "..."


def _fxprune(model, args, kwargs) -> dict:
    import fxprune
    from fxprune.compare import plain_outputs
    params = sum(p.numel() for p in model.parameters())
    t = time.perf_counter()
    dg = fxprune.analyze(model, args, kwargs)
    out = {"analyze_s": time.perf_counter() - t, "groups": len(dg.groups), "front_end": dg.front_end.split(" (")[0],
           "unknown": sorted({why.split(" at ")[0][:60] for _, why in dg.result.unknown})[:3]}
    rep = fxprune.verify(model, args, kwargs, raise_on_mismatch=False)
    out["error"] = max(rep.permutation_error, rep.removal_error)
    if not rep.passed:
        return dict(out, status="failing", note=f"oracle error {out['error']:.1e} " + " ".join(rep.failures)[:100])
    if not dg.groups:
        return dict(out, status="pinned", note="; ".join(out["unknown"]) or "every axis pinned")
    keep = fxprune.plan(dg, fxprune.score_groups(dg, "l2"), fxprune.PruneConfig(ratio=RATIO))
    pruned = fxprune.apply(dg, keep)
    import torch
    with torch.no_grad():
        same = _shapes(plain_outputs(pruned(*args, **kwargs))) == _shapes(plain_outputs(model(*args, **kwargs)))
    out["kept"] = sum(p.numel() for p in pruned.parameters()) / params
    return dict(out, status="exact" if same else "failing", note="" if same else "pruned output shapes differ")


def _tp(model, args, kwargs) -> dict:
    import torch
    import torch_pruning as tp
    from make_benchmarks_md import _output_layers
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        ref = model(*args, **kwargs)
    example = kwargs if kwargs else (args[0] if len(args) == 1 else args)
    if kwargs and args:  # Torch-Pruning takes one of them: every input by name
        import inspect
        example = dict(inspect.signature(model.forward).bind(*args, **kwargs).arguments)
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=RATIO, ignored_layers=_output_layers(model, ref))
    pruner.step()
    with torch.no_grad():
        same = _shapes(model(*args, **kwargs)) == _shapes(ref)
    kept = sum(p.numel() for p in model.parameters()) / params
    if not same:
        return {"status": "failed", "kept": kept, "note": "output shapes changed"}
    return {"status": "ran", "kept": kept, "note": "" if kept < 0.999 else "pruned nothing"}


def _one(tool: str, name: str) -> None:
    """Worker: one tool on one model; prints one JSON line."""
    import logging
    import warnings
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import torch
    import thirdparty_zoo
    torch.set_grad_enabled(True)
    real, sys.stdout = sys.stdout, sys.stderr  # libraries' prints must not corrupt the reply
    try:
        model, args, kwargs = thirdparty_zoo.build(name)
        out = (_fxprune if tool == "fxprune" else _tp)(model, args, kwargs)
    except Exception as e:  # noqa: BLE001 - every failure is a table entry
        bad = "failing" if tool == "fxprune" else "failed"
        out = {"status": bad, "note": _line(e), "where": traceback.format_exc().splitlines()[-4:]}
    sys.stdout = real
    print(json.dumps(out, default=str), flush=True)


def run(tool: str, name: str, cap: float) -> dict:
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", tool, name], capture_output=True,
                              text=True, timeout=cap)
    except subprocess.TimeoutExpired:
        return {"status": "failing" if tool == "fxprune" else "failed", "note": f"over the {cap:.0f} s cap"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    out = json.loads(lines[-1]) if lines else {"status": "failed", "note": proc.stderr.strip().splitlines()[-1:]}
    out["wall_s"] = time.perf_counter() - t
    return out


def _fmt(x, spec):
    return format(x, spec) if isinstance(x, (int, float)) else "-"


def render(rows: list, cap: float, started: str) -> str:
    import thirdparty_zoo
    head = ["model", "library", "domain", "fxprune", "groups", "max oracle err", "params kept", "analysis s",
            "Torch-Pruning", "TP params kept", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, fx, tp in rows:
        lib, domain, _ = thirdparty_zoo.MODELS[name]
        notes = "; ".join(x for x in (fx.get("note"), f"TP: {tp['note']}" if tp.get("note") else "") if x)
        lines.append("| " + " | ".join([
            name, lib, domain, fx["status"], str(fx.get("groups", "-")), _fmt(fx.get("error"), ".1e"),
            _fmt(fx.get("kept"), ".2f"), _fmt(fx.get("analyze_s"), ".1f"), tp["status"], _fmt(tp.get("kept"), ".2f"),
            notes.replace("|", "/")[:200]]) + " |")
    count = lambda tool, s: sum(r[tool]["status"] == s for r in ({"fx": f, "tp": t} for _, f, t in rows))  # noqa
    summary = (f"fxprune: {count('fx', 'exact')} exact, {count('fx', 'pinned')} pinned with a reason, "
               f"{count('fx', 'failing')} failing; Torch-Pruning: {count('tp', 'ran')} ran, "
               f"{count('tp', 'failed')} failed (of {len(rows)} models)")
    return "\n".join([
        "## Third-party models: fxprune and Torch-Pruning side by side", "",
        f"`python benchmarks/bench_thirdparty.py` ({started}; each tool in a fresh process per model, "
        f"capped at {cap:.0f} s). Small configs, random init, nothing downloaded. fxprune *exact*: both oracles "
        "pass in float64 and the model prunes at ratio 0.3; *pinned*: exact, but every channel is pinned, for "
        "the reason given; *failing*: an oracle fails or fxprune raises. Torch-Pruning *ran*: its "
        "MagnitudePruner at ratio 0.3 produced a model with the original output shapes (its outputs are not "
        "checked); *failed*: it raised or changed the output shapes.", "", summary, "", *lines, ""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="", help="comma-separated names (default: all)")
    ap.add_argument("--cap", type=float, default=300.0, help="seconds per tool and model")
    ap.add_argument("--out", default=os.path.join(HERE, "THIRDPARTY.md"), help="markdown file, or - for stdout only")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        _one(*args.one)
        return 0
    import thirdparty_zoo
    names = [n.strip() for n in args.models.split(",") if n.strip()] or list(thirdparty_zoo.MODELS)
    started, rows = time.strftime("%Y-%m-%d"), []
    for name in names:
        if not thirdparty_zoo.available(name):
            skip = {"status": "skipped", "note": f"{thirdparty_zoo.library(name)} not installed"}
            rows.append((name, skip, skip))
            continue
        fx, tp = run("fxprune", name, args.cap), run("tp", name, args.cap)
        print(f"{name}: fxprune {fx['status']} ({fx.get('note', '')}), TP {tp['status']}", file=sys.stderr, flush=True)
        rows.append((name, fx, tp))
    text = render(rows, args.cap, started)
    print(text)
    if args.out != "-":
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
