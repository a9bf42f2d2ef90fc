"""The model fuzzer, long run: thousands of random models, each checked by both oracles (float64).

    python benchmarks/fuzz.py                      # 2000 models, seed 0
    python benchmarks/fuzz.py --examples 5000 --seed 3 --max-steps 12

Models come from the hypothesis strategy in tests/fuzz_models.py (op families in
tests/fuzz_ops.py, tests/fuzz_ops_more.py); part of them (about 40%) are captured through torch.export.
Per model: ``fxprune.verify`` (permutation and removal oracles), and for every tenth the
pruned model at another batch size. A *mismatch* is an oracle failure (or a pruned model
that does not run); a *crash* is any exception from fxprune on a model that runs eagerly.
Prints a table and every failing spec (paste it into tests/test_regressions.py).
Exits 1 on any mismatch or crash.
"""
from __future__ import annotations

import argparse
import collections
import logging
import os
import sys
import time
import warnings

import torch
from hypothesis import HealthCheck, Phase, given, seed, settings
from tabulate import tabulate

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from fuzz_models import OPS, FuzzNet, check, check_other_batch, example, models  # noqa: E402

import fxprune  # noqa: E402


def _forms(spec) -> set:
    """(op family, variant) pairs: the ``form``/``kind``/``fn`` parameter where the op has one."""
    out = set()
    for name, _, params in spec.steps:
        p = dict(params)
        out.add((name, p.get("form", p.get("kind", p.get("fn", "")))))
    return out


def _rules(spec) -> set:
    net = FuzzNet(spec)
    dg = fxprune.analyze(net, (), {"x": example(spec)}) if spec.export else fxprune.analyze(net, (example(spec),))
    return {n.meta["fxprune"].rule for n in dg.gm.graph.nodes if n.op.startswith("call")}


def run(examples: int, seed_: int, max_steps: int) -> tuple:
    stats = collections.Counter()
    forms, rules, failures = set(), set(), []

    @seed(seed_)
    @settings(max_examples=examples, phases=[Phase.generate], deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(models(max_steps=max_steps, export=True))
    def one(spec):
        stats["models"] += 1
        stats["export"] += spec.export
        forms.update(_forms(spec))
        try:
            rep = check(spec, raise_on_mismatch=False)
            stats["groups"] += rep.groups
            stats["with groups"] += rep.groups > 0
            rules.update(_rules(spec))
            ok = rep.passed and (stats["models"] % 10 or spec.export or check_other_batch(spec))
            if not ok:
                stats["mismatches"] += 1
                failures.append(("mismatch", spec, str(rep)))
        except Exception as e:  # noqa: BLE001 - every fxprune failure is a finding
            stats["crashes"] += 1
            failures.append(("crash", spec, f"{type(e).__name__}: {str(e)[:400]}"))

    t = time.perf_counter()
    one()
    stats["seconds"] = round(time.perf_counter() - t)
    return stats, forms, rules, failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=10)
    ap.add_argument("--md", default=None, help="also write the table to this markdown file (benchmarks/FUZZ.md)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    stats, forms, rules, failures = run(args.examples, args.seed, args.max_steps)
    rows = [["models checked", stats["models"]], ["  captured by torch.export", stats["export"]],
            ["  with at least one group", stats["with groups"]], ["groups checked", stats["groups"]],
            ["op families covered", f"{len({f for f, _ in forms})} of {len(OPS)}"],
            ["op variants covered", len(forms)], ["fxprune rules exercised", len(rules - {'unknown'})],
            ["mismatches", stats["mismatches"]], ["crashes", stats["crashes"]], ["seconds", stats["seconds"]]]
    table = tabulate(rows, headers=["fuzz run", f"seed {args.seed}, max {args.max_steps} steps"], tablefmt="github")
    print(table)
    for kind, spec, msg in failures:
        print(f"\n{kind}: {spec!r}\n{msg}")
    if args.md:
        with open(args.md, "w") as f:
            f.write(f"## Model fuzzer\n\n`python benchmarks/fuzz.py --examples {args.examples} --seed {args.seed}` "
                    f"({time.strftime('%Y-%m-%d')}, one thread): random models from the hypothesis strategy of "
                    "tests/fuzz_models.py, each through both oracles in float64 (part of them captured by torch.export; "
                    "every tenth traced model also run pruned at another batch size).\n\n" + table + "\n"
                    + "".join(f"\n- {kind}: `{spec!r}`: {msg.splitlines()[0] if msg else ''}" for kind, spec, msg
                              in failures[:20]) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
