"""Sequential repair: refit each consumer on the inputs the *pruned* model feeds it, in graph order.

Note [Sequential repair]
~~~~~~~~~~~~~~~~~~~~~~~~
The one-shot repair (Note [Repair]) fits every consumer on the dense model's
inputs: after pruning, a later layer receives inputs that earlier removals
(and repairs) have changed, and its fit no longer matches. Sequential repair,
as SparseGPT and its structured successors do, walks the consumer sites in
graph order; for each one it runs the calibration batches through the dense
model and through the pruned model *with every earlier repair written*, up to
that site, and fits the kept columns to reproduce the dense output:

    min_A  E||W x - A x'_K||^2 + lambda ||A - W_K||^2
    A = (W C + lambda W_K) (H + lambda I)^-1,   C = E[x x'^T],  H = E[x' x'^T]

(``x``: the dense input, ``x'_K``: the pruned model's input on the same rows;
``lambda = damping * mean(diag(E[x x^T]))``, as the one-shot repair). ``"bias"`` adds ``W E[x] - W_K E[x'_K]``
instead. Both reduce to the one-shot repair on the first layer, where ``x' = x_K``.
The report gives each consumer's relative output error against the dense
output, before (plain removal, pruned inputs) and after its refit.

Cost: two forward passes per repaired consumer and batch, each stopped at the
consumer; memory: the rows of one consumer's input. Tied weights are skipped as
in the one-shot repair. Streamed (block by block) checkpoints are not repaired
sequentially: that path calibrates one block at a time on dense inputs.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.fx as fx

from fxprune.passes import keys, runnable

from . import adapter
from .collect import _check_data, _flat_inputs, batch_inputs
from .criteria import DAMPING, ridge
from .repair import REPAIRS, LayerRepair, RepairPlan, RepairReport, _Edit, _new_bias, _quad, _skip_reason, _write_graph
from .sites import Site, as_matrix, find_sites, from_matrix, getattr_path, param_uses

__all__ = ["sequential_repair"]


class _Found(Exception):
    def __init__(self, value):
        self.value = value


class _Capture(fx.Interpreter):
    """Runs a graph until ``site``'s node, then raises :class:`_Found` with its activation input."""

    def __init__(self, gm: fx.GraphModule, prefix: str, site: Site):
        super().__init__(gm, garbage_collect_values=True)
        self.prefix, self.site = prefix, site

    def run_node(self, n: fx.Node):
        if (self.prefix, n.name) == self.site.key:
            raise _Found(self.env[n.args[self.site.x_arg]])
        return super().run_node(n)

    def call_module(self, target, args, kwargs):
        sub = self.fetch_attr(target)
        if isinstance(sub, fx.GraphModule):
            return _Capture(sub, f"{self.prefix}{target}.", self.site).run(*_flat_inputs(sub, args, kwargs))
        return super().call_module(target, args, kwargs)


def _rows(gm: fx.GraphModule, site: Site, args: tuple, kwargs: dict) -> torch.Tensor:
    flags = {m: m.training for m in gm.modules()}
    for m in flags:
        m.training = False
    try:
        _Capture(gm, "", site).run(*_flat_inputs(gm, args, kwargs))
    except _Found as found:
        return site.rows(found.value, getattr_path(gm, site.weight))
    finally:
        for m, t in flags.items():
            m.training = t
    raise RuntimeError(f"the pruned model never reached {site.name}: its graph differs from the analysed one")


class _Moments:
    """Float64 sums over the rows of one consumer: dense ``x``, pruned ``x'``."""

    def __init__(self):
        self.n, self.g, self.c, self.h, self.mu, self.mu_p = 0, 0.0, 0.0, 0.0, 0.0, 0.0

    def add(self, x: torch.Tensor, xp: torch.Tensor) -> None:
        self.n += x.shape[0]
        self.g = self.g + x.T @ x
        self.c = self.c + x.T @ xp
        self.h = self.h + xp.T @ xp
        self.mu, self.mu_p = self.mu + x.sum(0), self.mu_p + xp.sum(0)

    def normalised(self) -> tuple:
        n = max(self.n, 1)
        return self.g / n, self.c / n, self.h / n, self.mu / n, self.mu_p / n


def _error(m, a, g, c, h) -> float:
    """``E||m x - a x'||^2``."""
    return _quad(m, g) - 2 * float(((m @ c) * a).sum()) + _quad(a, h)


def _fit(dg, site: Site, keep: dict, method: str, damping: float, moments: _Moments, row: LayerRepair) -> _Edit:
    g, c, h, mu, mu_p = moments.normalised()
    w = getattr_path(dg.gm, site.weight)
    m3, perm = as_matrix(w, site)
    m = m3.reshape(-1, m3.shape[-1])
    k = adapter.kept_flat(dg, site.weight, site.dim, keep)
    energy = _quad(m, g) or 1.0
    row.energy = energy
    row.before = _error(m, m[:, k], g, c, h) / energy
    edit = _Edit(site)
    if method == "bias":
        delta = (m @ mu - m[:, k] @ mu_p).reshape(m3.shape[0], m3.shape[1]).sum(1)
        row.after = max(row.before - float((m @ mu - m[:, k] @ mu_p).pow(2).sum()) / energy, 0.0)
        edit.bias = _new_bias(dg, None, site, keep, delta, w.dtype)
        row.note = "bias added" if site.bias is None else ""
        return edit
    lam = ridge(g, damping)  # as the one-shot repair: equal to it where x' = x_K
    a = torch.linalg.lstsq(h + lam * torch.eye(len(k), dtype=h.dtype), (m @ c + lam * m[:, k]).T).solution.T
    row.after = _error(m, a, g, c, h) / energy
    full = torch.zeros_like(m)
    full[:, k] = a
    new = from_matrix(full.reshape(m3.shape[0], m3.shape[1], -1), perm, w)
    edit.weight = adapter.prune_like(dg, site.weight, new, keep).to(w.dtype)
    return edit


def _sites(dg, keep: dict, dense: fx.GraphModule) -> list:
    members = {mb for grp in keep for mb in grp.members}
    out = []
    for site in find_sites(dg, dense).values():
        if (site.weight, site.dim) in members and adapter.touched(dg, site.weight, site.dim, keep):
            out.append(site)
    return out


class _Uses:
    def __init__(self, uses: dict):
        self.uses = uses


@torch.no_grad()
def sequential_repair(dg, keep: dict, pruned: fx.GraphModule, data: Iterable, method: str = "lstsq", *,
                      damping: float = DAMPING, inplace_model=None) -> RepairPlan:
    """Refit every consumer of removed coordinates of ``pruned``, in graph order, on the inputs the pruned
    and already repaired model feeds it (Note [Sequential repair]); writes into ``pruned``.

    Args:
        dg: the analysis ``pruned`` was made from (``fxprune.apply(dg, keep)``, no repair).
        keep: the keep-indices given to ``apply``.
        pruned: the pruned GraphModule; changed in place (weights refit, biases added).
        data: calibration batches of model inputs (a list, read once per consumer).
        method: ``"lstsq"`` or ``"bias"``.
        inplace_model: the user's model, when the edits will be written into it (skips consumers whose new
            bias has no slot there).

    Returns:
        A :class:`~fxprune.calib.RepairPlan` (the edits, and the report, also in ``pruned.meta``).

    Example::

        >>> import torch, fxprune
        >>> from fxprune.calib.sequential import sequential_repair
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8),
        ...                           torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> dg = fxprune.analyze(net, (torch.randn(1, 4),))
        >>> keep = {g: list(range(4)) for g in dg.groups}
        >>> small = fxprune.apply(dg, keep)
        >>> fix = sequential_repair(dg, keep, small, [torch.randn(64, 4)])
        >>> [(r.layer, r.after <= r.before) for r in fix.report.layers]
        [('2', True), ('4', True)]
    """
    if method not in REPAIRS:
        raise ValueError(f"repair must be one of {REPAIRS}, got {method!r}")
    _check_data(data)
    dense = runnable(dg.gm)
    n_args = len(dg.example_args)
    consts = {k: v for k, v in dg.example_kwargs.items() if not isinstance(v, torch.Tensor)}
    batches = [batch_inputs(b, n_args) for b in data]
    uses = _Uses(param_uses(dense))
    report, edits = RepairReport(f"{method} (sequential)"), []
    for site in _sites(dg, keep, dense):
        k = adapter.kept_flat(dg, site.weight, site.dim, keep)
        row = LayerRepair(site.name, method, len(k), adapter.dim_layout(dg, site.weight, site.dim).size - len(k))
        report.layers.append(row)
        row.note = _skip_reason(uses, site, method, inplace_model)
        if row.note:
            continue
        moments, now = _Moments(), runnable(pruned)
        for args, kwargs in batches:
            kwargs = {**consts, **kwargs}
            moments.add(_rows(dense, site, args, kwargs), _rows(now, site, args, kwargs))
        edit = _fit(dg, site, keep, method, damping, moments, row)
        _write_graph(pruned, [edit])
        edits.append(edit)
    fix = RepairPlan(edits, report)
    pruned.meta[keys.REPAIR] = report
    return fix
