"""The CLI's report step: analysis, per-group and per-layer tables, totals, certificate and oracles."""
from __future__ import annotations

import torch
from tabulate import tabulate
from torch.utils._pytree import tree_flatten

from ..capture.modes import eval_copy

__all__ = ["print_tables", "output_shapes", "si"]


def output_shapes(model, args: tuple, kwargs: dict) -> list:
    """Shapes of the tensors ``model`` returns on the example (an eval-mode copy, no grad)."""
    with torch.no_grad():
        out = eval_copy(model)(*args, **kwargs)
    return [tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def _short(shapes: list) -> str:
    return str(shapes[0]) if len(shapes) == 1 else f"{len(shapes)} tensors"


def si(n: float) -> str:
    """``n`` with a k/M/G suffix (2 decimals), as the CLI prints counts."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:g}"


def _how(cfg, importance: str) -> str:
    if cfg.target_macs or cfg.target_params:
        how = f"to {si(cfg.target_macs or cfg.target_params)} {'MACs' if cfg.target_macs else 'params'}"
    elif cfg.scope == "local":
        how = f"{cfg.ratio:.0%} of every group"
    else:
        how = f"{cfg.ratio:.0%} of all coordinates (global)"
    steps = f" in {cfg.iterative_steps} steps" if cfg.iterative_steps > 1 else ""
    return f"pruned {how} by {importance}{steps}"


def print_tables(args, m, dg, res, t_analyze: float, cfg, counts: tuple, lat, report) -> bool:
    """Print everything a non-quiet run shows; returns whether the output shapes are unchanged."""
    from ..policy.counting import compare, group_table
    print(dg.report())
    if args.groups:
        for g in dg.groups:
            print("\n" + g.details())
    if not args.no_tables:
        print("\nper group (each row: that group pruned alone):")
        print(group_table(dg, res.keep, m.args))
        if res.keep is None:
            print("(iterative pruning re-analyses the shrinking model: kept counts are in the layer table)")
        else:
            from ..calib.allocation import allocation_table
            print("\nallocation per layer (the share of each group removed):")
            print(allocation_table(dg, res.keep))
        print("\nper layer:")
        print(compare(m.model, res.model, m.args, m.kwargs))
    cert = res.certificate
    check_s = f", certificate {cert.seconds:.2f} s" if cert is not None and cert.checked else ""
    print(f"\n{_how(cfg, args.importance)} (analysis {t_analyze:.2f} s, pruning {res.seconds:.2f} s{check_s})")
    p0, macs0, p1, macs1 = counts
    before, after = output_shapes(m.model, m.args, m.kwargs), output_shapes(res.model, m.args, m.kwargs)
    rows = [["parameters", p0, p1, f"{p1 / p0:.1%}"], ["MACs", macs0, macs1, f"{macs1 / macs0:.1%}" if macs0 else "-"]]
    if lat is not None:
        rows.append([f"CPU latency ms (median of {args.latency_runs})", f"{lat[0]:.2f}", f"{lat[1]:.2f}",
                     f"{lat[1] / lat[0]:.1%}"])
    rows.append(["output shapes", _short(before), _short(after), "same" if before == after else "CHANGED"])
    print(tabulate(rows, headers=["", "original", "pruned", "ratio"], disable_numparse=True))
    if cert is not None:
        print(f"\ncertificate: {cert}")
    if report is not None:
        print("\nexactness oracles (float64, fresh analysis):\n" + str(report))
    from ..calib import repair_report
    if repair_report(res.model) is not None:
        print("\n" + str(repair_report(res.model)))
    return before == after
