"""The latency estimate of a choice of widths, from the measured table.

Note [Separable layer cost]
~~~~~~~~~~~~~~~~~~~~~~~~~~~
A layer's time at widths ``(w_in, w_out)`` is estimated as
``T(W_in, W_out) * p_out(w_out) * p_in(w_in)``, where ``p_out``/``p_in`` are the
enveloped profiles of Note [Latency table] divided by their full-width time (a
depthwise conv reads its one tied profile). Two one-dimensional staircases per
layer instead of a grid keep the table cheap; the error of the product form
(and of the unmodelled residual) is what the correction loop of
``fxprune/speed/search.py`` removes by timing the real pruned model.
"""
from __future__ import annotations

from dataclasses import dataclass

from .table import fast_mask, staircase

__all__ = ["LatencyModel"]


@dataclass
class LatencyModel:
    """Estimated seconds of the model for widths ``{group index: kept count}``.

    Attributes:
        layers: the timed :class:`~fxprune.speed.layers.Layer` s.
        table: the :class:`~fxprune.speed.table.LatencyTable` with their profiles.
        sizes: ``{group index: full size}``.
        residual: seconds of everything else (dense measured minus the layers' sum).
    """

    layers: list
    table: object
    sizes: dict
    residual: float = 0.0

    def __post_init__(self):
        self.touching = {g: [] for g in self.sizes}
        for layer in self.layers:
            for g in layer.groups:
                self.touching.setdefault(g, []).append(layer)

    def layer_time(self, layer, widths: dict) -> float:
        w_in, w_out = layer.widths(widths, self.sizes)
        spec, look = layer.spec, self.table.lookup
        if spec.depthwise:
            return look(spec, "tied", w_out)
        full = look(spec, "out", spec.out_ch)
        return look(spec, "out", w_out) * look(spec, "in", w_in) / full if full > 0 else 0.0

    def estimate(self, widths: dict) -> float:
        """Residual plus every layer's estimated seconds."""
        return self.residual + sum(self.layer_time(l, widths) for l in self.layers)

    def group_cost(self, g: int, widths: dict) -> float:
        """Seconds of the layers touching group ``g`` at ``widths``."""
        return sum(self.layer_time(l, widths) for l in self.touching.get(g, ()))

    def fast_widths(self, g: int, widths: dict = None) -> list:
        """The staircase widths of group ``g`` that are strictly quicker than every larger one
        (the others at ``widths``, default full); all of them when no timed layer touches ``g``."""
        widths = dict(widths or {})
        cands = staircase(self.sizes[g])
        if not self.touching.get(g):
            return cands
        times = [self.group_cost(g, {**widths, g: w}) for w in cands]
        return [w for w, ok in zip(cands, fast_mask(times)) if ok]
