"""``fxprune --plot FILE``: a PNG of per-layer widths before and after pruning (matplotlib, extra ``plot``)."""
from __future__ import annotations

import torch.nn as nn

from ..io import atomic_write
from .zoo import MissingPackageError

__all__ = ["layer_widths", "plot_widths"]


def layer_widths(original: nn.Module, pruned: nn.Module) -> list:
    """``[(weight name, width before, width after)]``: dim 0 (output channels/features) of every weight
    with two or more dims that both models hold under the same name (``fxprune.apply`` keeps names)."""
    after = {name: p for name, p in pruned.named_parameters()}
    return [(name, p.shape[0], after[name].shape[0]) for name, p in original.named_parameters()
            if p.dim() >= 2 and name in after and after[name].dim() == p.dim()]


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or :class:`MissingPackageError` naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingPackageError(f"--plot needs matplotlib ({e}): pip install 'fxprune[plot]'") from None
    return plt


def plot_widths(original: nn.Module, pruned: nn.Module, path: str, title: str = "") -> int:
    """Write the bar chart of :func:`layer_widths` to ``path`` (PNG, atomically); returns the layer count.

    Raises:
        MissingPackageError: matplotlib is not installed (``pip install 'fxprune[plot]'``).
    """
    plt = pyplot()
    rows = layer_widths(original, pruned)
    names = [n.removesuffix(".weight") for n, _, _ in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.22 * len(rows) + 2), 40.0), 4.5))
    try:
        ax.bar(xs, [b for _, b, _ in rows], color="0.82", label="before")
        ax.bar(xs, [a for _, _, a in rows], color="tab:blue", width=0.6, label="after")
        for i, (_, b, a) in enumerate(rows):  # the allocation: the share each layer lost
            if a < b:
                ax.annotate(f"-{1 - a / b:.0%}", (i, b), ha="center", va="bottom", rotation=90, fontsize=6)
        ax.set_xticks(list(xs), names, rotation=90, fontsize=6 if len(rows) > 30 else 8)
        ax.set_ylabel("width (dim 0 of the weight)")
        ax.set_title(title or "per-layer widths before and after pruning", fontsize=10)
        ax.legend()
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120), suffix=".tmp.png")
    finally:
        plt.close(fig)
    return len(rows)
