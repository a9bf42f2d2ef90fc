"""``fxprune`` / ``python -m fxprune``: prune a model from the shell.

With no MODEL it prunes the built-in DemoNet (no download, no optional
dependency, a few seconds), prints per-group and per-layer tables, CPU latency
before and after, and checks the analysis with both exactness oracles.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import time
import warnings

import torch

__all__ = ["main"]

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_CAPTURE = 0, 1, 2, 3

_EPILOG = """\
MODEL:
  (none) or demo          the built-in DemoNet, input 2x3x32x32
  resnet18                a torchvision model (weights=None), input 1x3x224x224
  timm:vit_tiny_patch16_224, or a timm name torchvision does not know (weights not downloaded)
  path/to/file.py:factory factory() returns a module or (module, example_inputs)

exit codes:
  0  pruned (and, unless --no-verify, both oracles exact)
  1  oracle mismatch: the analysis misses a coupling (please report it)
  2  bad usage or input: bad ratio/option, unknown model, missing factory, unreachable target,
     missing optional package (torchvision/timm)
  3  capture failure: the model cannot be traced into an FX graph (try --leaf NAME)

verification runs both oracles on a float64 copy of the model: about 3 extra forward passes and
2-3x the model's memory; on large models (>100M params or big inputs) it can take minutes, skip it
with --no-verify.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fxprune", description=__doc__.split("\n\n")[1].replace("\n", " "),
                                epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None, metavar="MODEL", help="what to prune (default: DemoNet)")
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224 (default: the model's)")
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--ratio", type=float, default=None,
                        help="fraction of every group to remove, in [0, 1) (default 0.5)")
    amount.add_argument("--target-macs", type=float, metavar="X",
                        help="reach X MACs (X <= 1: fraction of the original), found by bisection")
    amount.add_argument("--target-params", type=float, metavar="X",
                        help="reach X parameters (X <= 1: fraction of the original)")
    p.add_argument("--tolerance", type=float, default=0.01,
                   help="relative tolerance of --target-macs/--target-params (default 0.01)")
    p.add_argument("--importance", default="l2",
                   help="criterion: l1, l2, bn, fpgm, random, ... (fxprune.importance_names()); "
                        "gradient criteria (taylor, hessian) need --calib-batches")
    p.add_argument("--calib-batches", type=int, default=0, metavar="N",
                   help="for gradient criteria: N random batches labelled by the original model's own argmax")
    p.add_argument("--calib", type=int, default=0, metavar="N",
                   help="N random calibration batches shaped like the example input (Gaussian; random token ids "
                        "for integer inputs) for wanda/fluctuation/obs and --repair")
    p.add_argument("--repair", choices=["bias", "lstsq"], default=None,
                   help="refit every layer that reads removed channels on the calibration batches "
                        "(bias: mean compensation; lstsq: damped least squares); needs --calib N")
    p.add_argument("--scope", choices=["local", "global"], default="local",
                   help="local: every group loses the ratio; global: one ranking of all groups")
    p.add_argument("--ignore", nargs="+", default=[], metavar="NAME",
                   help="module/parameter names (globs allowed) whose groups are never pruned")
    p.add_argument("--round-to", type=int, default=1, metavar="N", help="kept counts rounded up to a multiple of N")
    p.add_argument("--max-ratio", type=float, default=1.0, help="most any one group loses (default 1.0)")
    p.add_argument("--iterative-steps", type=int, default=1, metavar="N", help="prune in N steps (default 1)")
    p.add_argument("--leaf", nargs="+", default=[], metavar="NAME",
                   help="submodules not to trace into (their channels are pinned)")
    p.add_argument("--fold", action="store_true",
                   help="capture each distinct repeated block (ModuleList/Sequential layers) once: deep models")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialization and inputs")
    p.add_argument("--save", metavar="PATH", help="write the pruned GraphModule here (torch.save; "
                                                  "load with torch.load(PATH, weights_only=False))")
    p.add_argument("--no-verify", action="store_true", help="skip the float64 oracles (see below for the cost)")
    p.add_argument("--latency-runs", type=int, default=20, metavar="N",
                   help="timed CPU forward passes before/after (median; 0 skips; default 20)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch intra-op threads for the whole run (default: torch's default; 1 is steadier "
                        "for latency on a busy machine)")
    p.add_argument("--groups", action="store_true", help="also print every group's members and layouts")
    p.add_argument("--no-tables", action="store_true", help="skip the per-group and per-layer tables")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, print only the summary line")
    return p


class _Fail(Exception):
    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code = code


class _Progress:
    def __init__(self, quiet: bool):
        self.quiet, self.t0 = quiet, time.perf_counter()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def _si(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:g}"


def _config(args):
    from ..policy.pruner import PruneConfig
    if args.fold and args.iterative_steps > 1:
        raise _Fail(EXIT_USAGE, "--fold analyses the model once: use it with --iterative-steps 1")
    try:
        return PruneConfig(ratio=0.5 if args.ratio is None else args.ratio, importance=args.importance,
                           scope=args.scope, ignore=tuple(args.ignore), round_to=args.round_to,
                           max_ratio=args.max_ratio, target_macs=args.target_macs, target_params=args.target_params,
                           tolerance=args.tolerance,
                           iterative_steps=args.iterative_steps, leaf_modules=tuple(args.leaf), repair=args.repair)
    except (ValueError, TypeError, KeyError) as e:
        raise _Fail(EXIT_USAGE, str(e).strip("'\""))


def _calibration(loaded, n: int, say):
    """N random batches shaped like the example input, labelled by the model's own argmax."""
    x0 = loaded.inputs[0]
    with torch.no_grad():
        out = loaded.model(*loaded.inputs)
    if not (isinstance(out, torch.Tensor) and out.dim() == 2):
        raise _Fail(EXIT_USAGE, "--calib-batches makes labels from a classifier's (batch, classes) output; "
                                "this model's output is not one: use the Python API with your own data")
    gen = torch.Generator().manual_seed(1234)
    batches = []
    for _ in range(n):
        x = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
        with torch.no_grad():
            batches.append((x, loaded.model(x).argmax(1)))

    class _Counted:
        def __iter__(self):
            for i, b in enumerate(batches, 1):
                say(f"importance: batch {i}/{n}")
                yield b
    return _Counted()


def _plain_calibration(args, crit, inputs):
    """``--calib N`` random model inputs, where a calibrated criterion or ``--repair`` needs them."""
    from ..calib import random_batches

    if not (getattr(crit, "needs_calibration", False) or args.repair):
        return None
    if args.calib <= 0:
        what = f"--repair {args.repair}" if args.repair else f"importance {args.importance!r}"
        raise _Fail(EXIT_USAGE, f"{what} reads activations: pass --calib N (N random input batches) or use "
                                "the Python API with your own data")
    if crit.needs_data:  # gradient criterion + repair: the (x, label) batches calibrate too
        return None
    return random_batches(inputs, args.calib, args.seed + 1)


def _run(args, say) -> tuple:
    from .. import analyze, apply, verify
    from ..policy.counting import compare, count_macs, count_params, group_table, latency
    from ..errors import CaptureError
    from ..policy.importance import get_importance
    from ..policy.pruner import _absolute, _counter, _search, plan, prune, score_groups
    from .zoo import SpecError, load_model, parse_shape
    from ..calib import calibrate, repair, repair_report

    cfg = _config(args)
    crit = get_importance(cfg.importance)
    if crit.needs_data and args.calib_batches <= 0:
        raise _Fail(EXIT_USAGE, f"importance {args.importance!r} needs gradients: pass --calib-batches N "
                                "(random inputs labelled by the model itself) or use the Python API with data")
    if args.latency_runs < 0:
        raise _Fail(EXIT_USAGE, "--latency-runs must be >= 0")
    if args.threads is not None:
        if args.threads < 1:
            raise _Fail(EXIT_USAGE, "--threads must be >= 1")
        torch.set_num_threads(args.threads)
    try:
        shape = parse_shape(args.input_shape) if args.input_shape else None
        say(f"building {args.model or 'DemoNet'}")
        loaded = load_model(args.model, shape, args.seed)
    except SpecError as e:
        raise _Fail(EXIT_USAGE, str(e))
    model, inputs, label = loaded.model, loaded.inputs, loaded.label
    data = _calibration(loaded, args.calib_batches, say) if crit.needs_data else None
    data = _plain_calibration(args, crit, inputs) or data

    say(f"capturing and analysing {label} (input {'x'.join(map(str, inputs[0].shape))})")
    t = time.perf_counter()
    try:
        # torch.export prints the whole graph to stderr when it gives up; the CaptureError says it better
        with contextlib.redirect_stderr(io.StringIO()):
            dg = analyze(model, inputs, leaf_modules=cfg.leaf_modules, fold=args.fold)
    except CaptureError as e:
        raise _Fail(EXIT_CAPTURE, str(e))
    except ValueError as e:  # e.g. a --leaf that names no submodule
        raise _Fail(EXIT_USAGE, str(e))
    t_analyze = time.perf_counter() - t
    say(f"{len(dg.groups)} groups ({t_analyze:.2f} s); counting parameters and MACs")
    params0, macs0 = count_params(model), count_macs(model, inputs)

    t = time.perf_counter()
    keep = None
    try:
        if cfg.iterative_steps == 1:
            say(f"scoring {len(dg.groups)} groups ({args.importance})")
            scores = score_groups(dg, crit, data=data)
            counter = _counter(cfg, inputs)
            if counter is not None:
                goal = _absolute(cfg.target_macs or cfg.target_params, counter(model))
                say(f"searching the ratio that reaches {_si(goal)} {'MACs' if cfg.target_macs else 'params'}")
                keep = _search(dg, scores, cfg, counter, goal)
            else:
                keep = plan(dg, scores, cfg)
            say("rewriting the graph")
            pruned = apply(dg, keep)
            if args.repair:
                say(f"repairing ({args.repair}) on {args.calib} calibration batches")
                repair(dg, keep, pruned, calibrate(dg, data, gram=True), args.repair)
        else:
            n = cfg.iterative_steps
            say(f"pruning step 1/{n}")

            def step(k, m):
                if k < n:
                    say(f"pruning step {k + 1}/{n} ({count_params(m) / params0:.1%} params left)")
            pruned = prune(model, inputs, cfg, data=data, callback=step)
    except CaptureError as e:
        raise _Fail(EXIT_CAPTURE, str(e))
    except ValueError as e:  # unreachable target, ignore name matching nothing, ...
        raise _Fail(EXIT_USAGE, str(e))
    t_prune = time.perf_counter() - t
    params1, macs1 = count_params(pruned), count_macs(pruned, inputs)

    with torch.no_grad():
        before, after = model(*inputs), pruned(*inputs)
    same_shape = _shapes(before) == _shapes(after)

    report = None
    if not args.no_verify:
        say("verifying: permutation and removal oracles in float64")
        report = verify(model, inputs, leaf_modules=cfg.leaf_modules, raise_on_mismatch=False, fold=args.fold)
    lat0 = lat1 = None
    if args.latency_runs:
        say(f"timing CPU latency ({args.latency_runs} runs each, {torch.get_num_threads()} threads)")
        lat0 = latency(model, inputs, repeats=args.latency_runs)["median_ms"]
        lat1 = latency(pruned, inputs, repeats=args.latency_runs)["median_ms"]

    if not args.quiet:
        print(dg.report())
        if args.groups:
            for g in dg.groups:
                print("\n" + g.details())
        if not args.no_tables:
            print("\nper group (each row: that group pruned alone):")
            print(group_table(dg, keep, inputs) if keep is not None else group_table(dg, None, inputs))
            if keep is None:
                print("(iterative pruning re-analyses the shrinking model: kept counts are in the layer table)")
            print("\nper layer:")
            print(compare(model, pruned, inputs))
        how = (f"to {_si(cfg.target_macs or cfg.target_params)} {'MACs' if cfg.target_macs else 'params'}"
               if cfg.target_macs or cfg.target_params else f"{cfg.ratio:.0%} of every group" if cfg.scope == "local"
               else f"{cfg.ratio:.0%} of all coordinates (global)")
        print(f"\npruned {how} by {args.importance}"
              + (f" in {cfg.iterative_steps} steps" if cfg.iterative_steps > 1 else "")
              + f" (analysis {t_analyze:.2f} s, pruning {t_prune:.2f} s)")
        from tabulate import tabulate
        rows = [["parameters", params0, params1, f"{params1 / params0:.1%}"],
                ["MACs", macs0, macs1, f"{macs1 / macs0:.1%}" if macs0 else "-"]]
        if lat0 is not None:
            rows.append([f"CPU latency ms (median of {args.latency_runs})", f"{lat0:.2f}", f"{lat1:.2f}",
                         f"{lat1 / lat0:.1%}"])
        rows.append(["output shapes", _short(before), _short(after), "same" if same_shape else "CHANGED"])
        print(tabulate(rows, headers=["", "original", "pruned", "ratio"], disable_numparse=True))
        if report is not None:
            print("\nexactness oracles (float64):\n" + str(report))
        if repair_report(pruned) is not None:
            print("\n" + str(repair_report(pruned)))
    if args.save:
        say(f"saving to {args.save}")
        try:
            torch.save(pruned, args.save)
        except OSError as e:
            raise _Fail(EXIT_USAGE, f"cannot write {args.save}: {e}")

    passed = report is None or (report.passed and same_shape)
    status = "not run (--no-verify)" if report is None else "exact" if passed else "MISMATCH"
    lat = f", latency {lat0:.2f} -> {lat1:.2f} ms" if lat0 is not None else ""
    summary = (f"{label}: {len(dg.groups)} groups, params {params0} -> {params1} ({params1 / params0:.1%}), "
               f"MACs {_si(macs0)} -> {_si(macs1)}{lat}, oracles {status}")
    return summary, (EXIT_OK if passed else EXIT_MISMATCH)


def _shapes(out):
    from torch.utils._pytree import tree_flatten
    return [tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def _short(out) -> str:
    s = _shapes(out)
    return str(s[0]) if len(s) == 1 else f"{len(s)} tensors"


def main(argv=None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or an argparse usage error (2)
        return int(e.code or 0)
    say = _Progress(args.quiet)
    # torch.export prints whole graphs as warnings when it gives up on a model; the CLI reports that itself
    noisy = [logging.getLogger(n) for n in ("torch.fx.experimental.symbolic_shapes", "torch._dynamo", "torch.export")]
    levels = [lg.level for lg in noisy]
    try:
        for lg in noisy:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            if args.quiet:
                warnings.simplefilter("ignore")
            summary, code = _run(args, say)
    except _Fail as e:
        print(f"fxprune: error: {e}", file=sys.stderr)
        if args.quiet:
            print(f"fxprune: failed (exit {e.code}): {str(e).splitlines()[0]}")
        return e.code
    except KeyboardInterrupt:
        print("fxprune: interrupted", file=sys.stderr)
        return 130
    finally:
        for lg, level in zip(noisy, levels):
            lg.setLevel(level)
    print(summary)
    return code


if __name__ == "__main__":
    sys.exit(main())
