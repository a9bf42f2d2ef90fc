"""fxprune.backend inside torch.compile: compile-time overhead and compiled latency, in one run.

    python benchmarks/bench_compile.py                 # DemoNet + MidViT + MidCNN, 2 threads
    python benchmarks/bench_compile.py --threads 4 --runs 50 --models demonet,midvit

Per model (float32, eval, CPU, no downloads), each row is one fresh process state
(``torch._dynamo.reset()``; inductor's FX graph cache is off, so nothing is reused
between the two compiles or between runs of this script):

* **compile unpruned**: wall time of the first call of
  ``torch.compile(model, backend="inductor", dynamic=False)`` (dynamo trace + inductor);
* **compile fxprune**: the same with ``backend=fxprune.backend(ratio=R, then="inductor")``;
  timed inside the backend: **prune pass** (analysis, l2 scores, selection, rewrite) and
  **inductor on pruned** (the next backend compiling the pruned graph);
* **overhead** = prune pass / inductor on pruned graph (what pruning adds to the compile);
* **latency**: median of ``--runs`` calls (after 3 warm-up calls) of each compiled model under
  ``torch.no_grad()``, with ``torch.set_num_threads(--threads)``;
* **MACs** of the eager model and of ``backend.pruned_gm`` (``fxprune.count_macs``).

A warm-up compile of a tiny function first takes inductor's one-time start-up cost out of
the first row. The compiled pruned model is checked against ``fxprune.prune`` with the same
options (max abs difference printed).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tabulate import tabulate

import fxprune
from fxprune.tools.demo import DemoNet


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(self.n1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, c))
        return x + self.fc2(F.gelu(self.fc1(self.n2(x))))


class MidViT(nn.Module):
    """A ViT-Tiny-like transformer: 64x64 images, 8x8 patches (64 tokens), dim 192, 6 heads, 4 blocks."""

    def __init__(self, dim: int = 192, heads: int = 6, depth: int = 4, classes: int = 100):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, stride=8)
        self.pos = nn.Parameter(torch.randn(1, 64, dim) * 0.02)
        self.blocks = nn.Sequential(*[_Block(dim, heads) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(x)).mean(1))


class _Bottleneck(nn.Module):
    def __init__(self, c: int, mid: int):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(c, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                               nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                               nn.Conv2d(mid, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(x + self.f(x))


class MidCNN(nn.Module):
    """A small ResNet: stem, three stages of two bottlenecks (64/128/256 channels), 64x64 input."""

    def __init__(self, classes: int = 100):
        super().__init__()
        layers = [nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
        c = 64
        for i, w in enumerate((64, 128, 256)):
            if i:
                layers += [nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            layers += [_Bottleneck(w, w // 2), _Bottleneck(w, w // 2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


MODELS = {
    "demonet": lambda: (DemoNet(), (torch.randn(8, 3, 64, 64),)),
    "midvit": lambda: (MidViT(), (torch.randn(8, 3, 64, 64),)),
    "midcnn": lambda: (MidCNN(), (torch.randn(8, 3, 64, 64),)),
}


def _first_call(compiled, inputs) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        compiled(*inputs)
    return time.perf_counter() - start


def _latency_ms(fn, inputs, runs: int) -> float:
    with torch.no_grad():
        for _ in range(3):
            fn(*inputs)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn(*inputs)
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _warm_up() -> None:
    torch._dynamo.reset()
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    _first_call(torch.compile(net, backend="inductor", dynamic=False), (torch.randn(1, 3, 8, 8),))


def bench(name: str, ratio: float, runs: int) -> list:
    torch.manual_seed(0)
    model, inputs = MODELS[name]()
    model.eval()
    ref = fxprune.prune(model, inputs, ratio=ratio)

    torch._dynamo.reset()
    plain = torch.compile(model, backend="inductor", dynamic=False)
    t_plain = _first_call(plain, inputs)

    torch._dynamo.reset()
    be = fxprune.backend(ratio=ratio, then="inductor")
    pruned = torch.compile(model, backend=be, dynamic=False)
    t_pruned = _first_call(pruned, inputs)
    (timing,) = be.timings
    with torch.no_grad():
        err = (pruned(*inputs) - ref(*inputs)).abs().max().item()

    lat_plain, lat_pruned = _latency_ms(plain, inputs, runs), _latency_ms(pruned, inputs, runs)
    macs0, macs1 = fxprune.count_macs(model, inputs), fxprune.count_macs(be.pruned_gm, inputs)
    return [name, f"{t_plain:.1f}", f"{t_pruned:.1f}", f"{timing['prune_s']:.2f}", f"{timing['compile_s']:.1f}",
            f"{timing['prune_s'] / timing['compile_s']:.1%}", f"{lat_plain:.2f}", f"{lat_pruned:.2f}",
            f"{lat_plain / lat_pruned:.2f}x", f"{macs0 / 1e6:.1f}M", f"{macs1 / 1e6:.1f}M", f"{err:.1e}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="demonet,midvit,midcnn")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = False  # every compile is a real one
    inductor_config.fx_graph_remote_cache = False
    _warm_up()
    rows = [bench(name, args.ratio, args.runs) for name in args.models.split(",")]
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads, batch 8 x 3 x 64 x 64, "
          f"ratio {args.ratio} (l2, local), latency median of {args.runs} runs")
    print(tabulate(rows, headers=["model", "compile unpruned s", "compile fxprune s", "prune pass s",
                                  "inductor on pruned s", "overhead", "latency unpruned ms",
                                  "latency pruned ms", "speedup", "MACs before", "MACs after",
                                  "max |compiled - fxprune.prune|"]))


if __name__ == "__main__":
    main()
