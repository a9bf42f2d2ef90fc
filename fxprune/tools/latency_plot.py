"""``fxprune --runtime R --plot FILE``: the measured latency/MACs curves of the latency table."""
from __future__ import annotations

import json

from ..io import atomic_write
from .plot import pyplot
from ..speed.table import envelope

__all__ = ["plot_latency"]


def _curves(path: str, most: int, kinds=()) -> list:
    """``[(label, MACs fractions, latency fractions, enveloped)]`` of the ``most`` slowest profiles
    (of the spec keys ``kinds`` only, when given)."""
    with open(path) as f:
        layers = json.load(f)["layers"]
    out = []
    for key, axes in layers.items():
        if kinds and key not in kinds:
            continue
        for axis, pts in axes.items():
            ws, ts = [w for w, _ in pts], [t for _, t in pts]
            label = key.split("|")[0].split("=")[1] + f" {key.split('|')[1].split('=')[1]} {axis}"
            out.append((ts[-1], label, [w / ws[-1] for w in ws], [t / ts[-1] for t in ts],
                        [t / ts[-1] for t in envelope(ts)]))
    return [o[1:] for o in sorted(out, key=lambda o: -o[0])[:most]]


def plot_latency(table_path: str, path: str, point=None, title: str = "", most: int = 8, kinds=()) -> int:
    """Write latency vs MACs (both as fractions of full width) of the slowest layer kinds in the cached
    table ``table_path`` to ``path`` (PNG), with ``point = (MACs fraction, latency fraction)`` of the
    pruned model; ``kinds``: the spec keys to draw (default all); returns the number of curves.

    Raises:
        MissingPackageError: matplotlib is not installed (``pip install 'fxprune[plot]'``).
    """
    plt = pyplot()
    curves = _curves(table_path, most, kinds)
    fig, ax = plt.subplots(figsize=(7, 5))
    try:
        for label, xs, raw, env in curves:
            line, = ax.plot(xs, env, lw=1.2, label=label)
            ax.plot(xs, raw, ".", color=line.get_color(), ms=4)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="latency = MACs")
        if point is not None:
            ax.plot(*point, "r*", ms=14, label="pruned model")
        ax.set(xlabel="MACs (fraction of full width)", ylabel="latency (fraction of full width)",
               title=title or "measured latency per layer kind (dots) and its monotone envelope")
        ax.legend(fontsize=6)
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110), suffix=".tmp.png")
    finally:
        plt.close(fig)
    return len(curves)
