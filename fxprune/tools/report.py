"""The CLI's report step: analysis, per-group and per-layer tables, totals, certificate and oracles."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from tabulate import tabulate
from torch.utils._pytree import tree_flatten

from ..capture.modes import eval_copy

__all__ = ["print_tables", "output_shapes", "si", "shape_twin"]


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


def print_tables(args, dg, res, t_analyze: float, cfg, counts: tuple, shapes: tuple, lat, report) -> None:
    """Print everything a non-quiet run shows. ``counts`` is the original's :class:`fxprune.Count` and graph
    shapes as measured before pruning (the CLI's ``_Before``) and the result's Count; ``shapes`` the output
    shapes before and after."""
    from ..policy.counting import compare_counts, group_table
    before, after = counts
    print(dg.report())
    if args.groups:
        for g in dg.groups:
            print("\n" + g.details())
    if not args.no_tables:
        print("\nper group (each row: that group pruned alone):")
        print(group_table(dg, res.keep, shapes=before.shapes, before=before.count))
        if res.keep is None:
            print("(iterative pruning re-analyses the shrinking model: kept counts are in the layer table)")
        else:
            from ..calib.allocation import allocation_table
            print("\nallocation per layer (the share of each group removed):")
            print(allocation_table(dg, res.keep))
        print("\nper layer:")
        print(compare_counts(before.count, after))
    cert = res.certificate
    check_s = f", certificate {cert.seconds:.2f} s" if cert is not None and cert.checked else ""
    print(f"\n{_how(cfg, args.importance)} (analysis {t_analyze:.2f} s, pruning {res.seconds:.2f} s{check_s})")
    p0, macs0, p1, macs1 = before.count.params, before.count.macs, after.params, after.macs
    rows = [["parameters", p0, p1, f"{p1 / p0:.1%}"], ["MACs", macs0, macs1, f"{macs1 / macs0:.1%}" if macs0 else "-"]]
    if lat is not None:
        how = f"median of {args.latency_runs}" if res.inplace else "interleaved medians"
        rows.append([f"CPU latency ms ({how})", f"{lat[0]:.2f}", f"{lat[1]:.2f}", f"{lat[1] / lat[0]:.1%}"])
    same = "same" if shapes[0] == shapes[1] else "CHANGED"
    rows.append(["output shapes", _short(shapes[0]), _short(shapes[1]), same])
    print(tabulate(rows, headers=["", "original", "pruned", "ratio"], disable_numparse=True))
    if cert is not None:
        print(f"\ncertificate: {cert}")
    if report is not None:
        print("\nexactness oracles (float64, fresh analysis):\n" + str(report))
    from ..calib import repair_report
    if repair_report(res.model) is not None:
        print("\n" + str(repair_report(res.model)))


def shape_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are on the meta device: its shapes as they are now,
    no tensor memory (what the widths table and plot compare a model pruned in place with).

    Example::

        >>> import torch
        >>> twin = shape_twin(torch.nn.Linear(4, 8))
        >>> twin.weight.shape, twin.weight.device.type
        (torch.Size([8, 4]), 'meta')
    """
    memo: dict = {}
    for t in (*model.parameters(), *model.buffers()):
        if id(t) not in memo:
            meta = t.detach().to("meta")
            memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)
