"""Does the ranking work? Prune a small CNN on scikit-learn's digits to 50% of its MACs with
every criterion, fine-tune briefly, and compare test accuracy with random ranking.

    python benchmarks/digits_ranking.py            # full run, a few minutes on one core
    python benchmarks/digits_ranking.py --quick    # what tests/test_digits.py runs

Real data that a package ships (1797 8x8 images, 10 classes), fixed seeds, CPU only.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tabulate import tabulate

import fxprune

QUICK = dict(epochs=10, finetune=1, seeds=3, width=16, criteria=["random", "l1", "l2", "taylor"])
CRITERIA = ["random", "l1", "l2", "lamp", "fpgm", "bn_scale", "taylor", "hessian"]


def digits(seed: int = 0):
    """(train x, train y, test x, test y): 75/25 split, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.75 * len(y))
    return x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]


def cnn(width: int = 32) -> nn.Module:
    """conv-BN-ReLU x3 with a max-pool, global pool, linear head."""
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
    return nn.Sequential(*block(1, width), *block(width, 2 * width), nn.MaxPool2d(2),
                         *block(2 * width, 2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(2 * width, 10))


def batches(x, y, size: int, seed: int):
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return [(x[perm[i:i + size]], y[perm[i:i + size]]) for i in range(0, len(y), size)]


def train(model: nn.Module, x, y, epochs: int, lr: float = 0.05, seed: int = 0) -> nn.Module:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    for e in range(epochs):
        for xb, yb in batches(x, y, 64, seed * 1000 + e):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x, y) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


@torch.no_grad()
def recalibrate(model: nn.Module, x, y) -> nn.Module:
    """Re-estimate BatchNorm statistics of the pruned model (one no-grad pass over the training set)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for xb, _ in batches(x, y, 128, 0):
        model(xb)
    for m in norms:
        m.momentum = 0.1
    return model.eval()


def evaluate(trained: nn.Module, data, criterion, *, target: float, finetune: int, seed: int = 0) -> dict:
    """Prune a copy of ``trained`` to ``target`` of its MACs, recalibrate BN, fine-tune ``finetune`` epochs."""
    xtr, ytr, xte, yte = data
    example = (xtr[:2],)
    importance = fxprune.Random(seed=seed) if criterion == "random" else criterion
    calib = batches(xtr, ytr, 64, seed)[:16]
    torch.manual_seed(seed)
    pruned = fxprune.prune(copy.deepcopy(trained), example, importance=importance, target_macs=target,
                           data=calib, ignore=[nn.Linear])
    raw = accuracy(pruned, xte, yte)
    recal = accuracy(recalibrate(pruned, xtr, ytr), xte, yte)
    train(pruned, xtr, ytr, finetune, lr=0.005, seed=seed + 1)
    return {"macs": fxprune.count_macs(pruned, example), "pruned": raw, "recalibrated": recal,
            "finetuned": accuracy(pruned, xte, yte)}


def run(*, epochs: int, finetune: int, seeds: int, criteria=CRITERIA, width: int = 16, target: float = 0.5):
    """{criterion: {"pruned": mean acc., "finetuned": mean acc., "macs": ...}} plus the dense baseline."""
    data = digits(0)
    torch.manual_seed(0)
    trained = train(cnn(width), data[0], data[1], epochs)
    dense = accuracy(trained, data[2], data[3])
    dense_macs = fxprune.count_macs(trained, (data[0][:2],))
    out = {}
    for c in criteria:
        runs = [evaluate(trained, data, c, target=target, finetune=finetune, seed=s) for s in range(seeds)]
        out[c] = {k: statistics.fmean(r[k] for r in runs) for k in runs[0]}
    return dense, dense_macs, out


def table(dense: float, dense_macs: int, results: dict) -> str:
    rows = [["dense", dense_macs, "100%"] + [f"{dense:.3f}"] * 3]
    for c, r in results.items():
        rows.append([c, int(r["macs"]), f"{r['macs'] / dense_macs:.1%}"]
                    + [f"{r[k]:.3f}" for k in ("pruned", "recalibrated", "finetuned")])
    return tabulate(rows, headers=["criterion", "MACs", "of dense", "acc. pruned", "+ BN recal.", "+ fine-tune"])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the small configuration the test runs")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # tiny ops: more threads only contend
    t0 = time.perf_counter()
    kw = QUICK if args.quick else dict(epochs=10, finetune=1, seeds=5, width=16)
    dense, macs, results = run(**kw)
    print(f"digits: {kw}, target 50% MACs, accuracy averaged over seeds ({time.perf_counter() - t0:.0f} s)")
    print(table(dense, macs, results))


if __name__ == "__main__":
    main()
