"""``fxprune`` / ``python -m fxprune``: prune a model from the shell.

With no arguments it prunes the built-in DemoNet (no download, no optional
dependency), prints what happened, and checks the result with both oracles.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
from tabulate import tabulate

from . import analyze, apply, verify
from .importance import keep_top
from .models import DemoNet, demo_inputs

__all__ = ["main"]


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fxprune", description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of every group to remove (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialization")
    p.add_argument("--save", help="write the pruned GraphModule here (torch.save)")
    p.add_argument("--groups", action="store_true", help="print every group's members and layouts")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if not 0.0 <= args.ratio < 1.0:
        print(f"fxprune: --ratio must be in [0, 1), got {args.ratio}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    model, inputs = DemoNet().eval(), demo_inputs()
    t0 = time.perf_counter()
    dg = analyze(model, inputs)
    t_analyze = time.perf_counter() - t0
    pruned = apply(dg, keep_top(dg, args.ratio))
    with torch.no_grad():
        before, after = model(*inputs), pruned(*inputs)
    report = verify(model, inputs, raise_on_mismatch=False)
    if not args.quiet:
        print(dg.report())
        if args.groups:
            for g in dg.groups:
                print("\n" + g.details())
        rows = [["parameters", _params(model), _params(pruned), f"{_params(pruned) / _params(model):.1%}"],
                ["output shape", tuple(before.shape), tuple(after.shape), ""]]
        print(f"\npruned {args.ratio:.0%} of every group by L2 magnitude (analysis {t_analyze:.2f} s)")
        print(tabulate(rows, headers=["", "original", "pruned", "kept"]))
        print("\nexactness oracles (float64):\n" + str(report))
    if args.save:
        torch.save(pruned, args.save)
    status = "exact" if report.passed else "MISMATCH"
    print(f"DemoNet: {len(dg.groups)} groups, params {_params(model)} -> {_params(pruned)}, oracles {status}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
