"""Layer repair: refit each consumer of removed coordinates to reproduce its original output.

Note [Repair]
~~~~~~~~~~~~~
Removing coordinates ``R`` of a consumer ``y = W x + b`` (keeping ``K``) changes
only that consumer's output. Two repairs, from the calibration statistics of
the *original* model (``mu = E[x]``, ``G = E[x x^T]``), each consumer on its own:

* ``"bias"`` (FLAP's mean compensation): ``b' = b + W[:, R] mu_R``; exact when
  ``x_R`` is constant. A 2-D convolution uses the mean of each (channel, kernel
  offset) input over the output positions, zero padding included: the best
  constant, exact away from borders. A consumer without a bias gets one: the module's ``bias``
  (``nn.Linear``/``nn.Conv*``) or a new parameter named ``<layer>.bias`` wired
  into the op (``F.linear``/``aten.linear``/conv: the bias argument; ``x @ W``: an
  added ``+ b`` node).
* ``"lstsq"`` (damped least squares, as SparseGPT/SlimGPT's OBS update): the kept
  columns become ``W'_K = (W G[:, K] + lambda W_K) (G[K, K] + lambda I)^-1``, the
  minimiser of ``E||W x - W'_K x_K||^2 + lambda ||W'_K - W_K||^2``; exact when ``x_R``
  is a linear function of ``x_K`` and ``lambda = 0``. ``lambda = damping *
  mean(diag(G))``, ``damping`` 0.01 by default (:data:`fxprune.calib.criteria.DAMPING`).
  The ridge pulls toward the original weights, not toward zero as the plain ridge
  ``W G[:, K] (G[K, K] + lambda I)^-1`` does: a poorly observed input keeps its weight
  instead of shrinking, and the repair is exactly the update whose error ``importance="obs"``
  scores.

A repair changes parameter values (and may add a bias), never a coupling or a
shape the analysis derived, so everything it does not touch stays exact under
the oracles. Not repaired, and reported: a weight read by more than one op (tied
weights), a computed bias (for ``"bias"``), and in place a module without a bias
slot. The report gives, per layer, the relative output error
``E||W x - W' x'||^2 / E||W x||^2`` on the calibration data before (plain
removal) and after the repair; for convolutions these use the per-channel
statistics (Note [Consumer sites]) and ignore correlations between kernel offsets.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.fx as fx
import torch.nn as nn
from tabulate import tabulate

from fxprune.passes import keys

from . import adapter
from .collect import Calibration
from .criteria import DAMPING, ridge
from .sites import COMPUTED, Site, as_matrix, from_matrix, getattr_path

__all__ = ["REPAIRS", "LayerRepair", "RepairReport", "RepairPlan", "plan_repair", "repair", "repair_report"]

REPAIRS = ("bias", "lstsq")
REPORT_KEY = keys.REPAIR


@dataclass
class LayerRepair:
    """One consumer: what was removed from its input, and its output error before/after."""

    layer: str
    method: str
    kept: int
    removed: int
    before: float = float("nan")
    after: float = float("nan")
    note: str = ""
    energy: float = float("nan")  # E||W x||^2: the errors times this are absolute (the objective)


@dataclass
class RepairReport:
    """Which layers a repair changed, how, and the calibration output error before/after each."""

    method: str
    layers: list = field(default_factory=list)

    @property
    def repaired(self) -> list:
        return [r for r in self.layers if not r.note.startswith("skipped")]

    def __str__(self) -> str:
        rows = [[r.layer, r.method, f"{r.kept}/{r.kept + r.removed}", f"{r.before:.3g}", f"{r.after:.3g}", r.note]
                for r in self.layers]
        head = f"repair {self.method!r}: {len(self.repaired)} of {len(self.layers)} consumers repaired"
        return head + "\n" + tabulate(rows, headers=["layer", "method", "inputs kept", "rel. error before",
                                                     "after", "note"], disable_numparse=True)


@dataclass
class _Edit:
    site: Site
    weight: Optional[torch.Tensor] = None  # pruned shape
    bias: Optional[torch.Tensor] = None  # pruned shape


def repair_report(model) -> Optional[RepairReport]:
    """The :class:`RepairReport` that ``fxprune.prune(..., repair=...)`` attached to its result."""
    meta = getattr(model, "meta", None)
    if isinstance(meta, dict) and REPORT_KEY in meta:
        return meta[REPORT_KEY]
    return getattr(model, REPORT_KEY, None)


def _skip_reason(cal: Calibration, site: Site, method: str, model: Optional[nn.Module]) -> str:
    if cal.uses.get(site.weight, 0) > 1:
        return f"skipped: {site.weight} is read by {cal.uses[site.weight]} ops (tied)"
    if method != "bias":
        return ""
    if site.bias == COMPUTED:
        return "skipped: the bias is computed in the graph"
    if site.bias is not None and cal.uses.get(site.bias, 0) > 1:
        return f"skipped: {site.bias} is read by {cal.uses[site.bias]} ops (tied)"
    if site.bias is None and model is not None and _bias_slot(model, site) is None:
        return "skipped: in place, the module has no bias slot (an nn.Linear/Conv with bias=None)"
    return ""


def _bias_slot(model: nn.Module, site: Site) -> Optional[nn.Module]:
    owner, _, attr = site.weight.rpartition(".")
    try:
        mod = model.get_submodule(owner)
    except AttributeError:
        return None
    ok = attr == "weight" and isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)) and mod.bias is None
    return mod if ok else None


def _quad(a: torch.Tensor, g: torch.Tensor) -> float:
    """``tr(a G a^T)``: the mean squared output of ``a x`` when ``E[x x^T] = G``."""
    return float(((a @ g) * a).sum())


def _one(dg, cal: Calibration, site: Site, keep: dict, method: str, damping: float, row: LayerRepair) -> _Edit:
    st = cal.stats[site.key]
    w = cal.weight(site)
    m3, perm = as_matrix(w, site)
    m = m3.reshape(-1, m3.shape[-1])
    k = adapter.kept_flat(dg, site.weight, site.dim, keep)
    r = torch.ones(m.shape[1], dtype=torch.bool)
    r[k] = False
    r = torch.nonzero(r).flatten()
    g = st.moment
    dropped = torch.zeros_like(m)
    dropped[:, r] = m[:, r]
    energy = _quad(m, g) or 1.0
    row.energy = energy
    row.before = _quad(dropped, g) / energy
    edit = _Edit(site)
    if method == "bias":
        mu = st.mean
        cov = g - torch.outer(mu, mu)
        row.after = _quad(dropped, cov) / energy
        pm = st.patch_mean  # 2-D conv: per (channel, kernel offset), zero padding included
        delta = (m3[:, :, r] @ mu[r]).sum(1) if pm is None else _patch_delta(w, pm, r)
        edit.bias = _new_bias(dg, cal, site, keep, delta, w.dtype)
        row.note = "bias added" if site.bias is None else ""
        return edit
    lam = ridge(g, damping)
    h = g[k][:, k] + lam * torch.eye(len(k), dtype=g.dtype)
    fitted = torch.linalg.lstsq(h, (m @ g[:, k] + lam * m[:, k]).T).solution.T
    full = torch.zeros_like(m)
    full[:, k] = fitted
    row.after = _quad(m - full, g) / energy
    new = from_matrix(full.reshape(m3.shape[0], m3.shape[1], -1), perm, w)
    edit.weight = adapter.prune_like(dg, site.weight, new, keep).to(w.dtype)
    return edit


def _patch_delta(w: torch.Tensor, patch_mean: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``sum_{c in R, k} W[o, c, k] E[x_{c,k}]`` for a 2-D convolution (out dim 0)."""
    wr = w.detach().double().flatten(2)[:, r]  # (out, |R|, K)
    return (wr * patch_mean[r]).sum((1, 2))


def _new_bias(dg, cal: Calibration, site: Site, keep: dict, delta: torch.Tensor, dtype) -> torch.Tensor:
    if site.bias is not None:
        b = getattr_path(dg.gm, site.bias).detach().double() + delta
        return adapter.prune_like(dg, site.bias, b, keep).to(dtype)
    layouts = (adapter.dim_layout(dg, site.weight, site.out),)
    return adapter.prune_like(dg, site.weight, delta, keep, layouts=layouts).to(dtype)


def _plan(dg, keep: dict, cal: Calibration, method: str, damping: float, model) -> tuple:
    report, edits = RepairReport(method), []
    for key, site in cal.sites.items():
        if not cal.stats[key].n or not adapter.touched(dg, site.weight, site.dim, keep):
            continue
        size = cal.stats[key].s1.numel()
        kept = adapter.kept_flat(dg, site.weight, site.dim, keep).numel()
        if kept == size:
            continue
        row = LayerRepair(site.name, method, kept, size - kept)
        report.layers.append(row)
        row.note = _skip_reason(cal, site, method, model)
        if not row.note:
            edits.append(_one(dg, cal, site, keep, method, damping, row))
    return edits, report


# -- writing -------------------------------------------------------------------------------
def _set_data(root: nn.Module, target: str, t: torch.Tensor, swap: Optional[Callable] = None) -> None:
    """``root.<target>.data = t``; ``swap(tensor, new_data)`` does it where the caller records changes
    (the in-place transaction of fxprune/checks/inplace.py)."""
    p = getattr_path(root, target)
    if p.shape != t.shape:
        raise RuntimeError(f"repair of {target}: shape {tuple(t.shape)} does not match the pruned {tuple(p.shape)}")
    new = t.to(p.device).clone()
    if swap is not None:
        swap(p, new)
    else:
        p.data = new


def _plant(root: nn.Module, name: str, p: nn.Parameter) -> None:
    owner_path, _, leaf = name.rpartition(".")
    owner = root
    for part in owner_path.split(".") if owner_path else ():
        if part not in owner._modules:
            owner.add_module(part, nn.Module())
        owner = owner._modules[part]
    owner.register_parameter(leaf, p)


def _free_name(gm: nn.Module, name: str) -> str:
    taken = {n for n, _ in gm.named_parameters()} | {n for n, _ in gm.named_buffers()}
    out, i = name, 0
    while out in taken:
        i += 1
        out = f"{name}_{i}"
    return out


def _add_bias(pruned: fx.GraphModule, site: Site, b: torch.Tensor) -> None:
    prefix, node_name = site.key
    gm = pruned.get_submodule(prefix[:-1]) if prefix else pruned
    node = next(n for n in gm.graph.nodes if n.name == node_name)
    if node.op == "call_module":
        gm.get_submodule(node.target).bias = nn.Parameter(b.clone())
        return
    local = site.weight[len(prefix):].rpartition(".")[0]
    name = _free_name(gm, f"{local}.bias" if local else "bias")
    _plant(gm, name, nn.Parameter(b.clone()))
    with gm.graph.inserting_before(node):
        attr = gm.graph.get_attr(name)
    if site.kind == "matmul":
        with gm.graph.inserting_after(node):
            add = gm.graph.call_function(operator.add, (node, attr))
        node.replace_all_uses_with(add, delete_user_cb=lambda user: user is not add)
    elif "bias" in node.kwargs:
        node.kwargs = {**node.kwargs, "bias": attr}
    else:
        args = list(node.args) + [None] * max(0, 3 - len(node.args))
        args[2] = attr
        node.args = tuple(args)
    gm.graph.lint()
    gm.recompile()


def _write_graph(pruned: fx.GraphModule, edits: list) -> None:
    for e in edits:
        if e.weight is not None:
            _set_data(pruned, e.site.weight, e.weight)
        if e.bias is not None and e.site.bias is not None:
            _set_data(pruned, e.site.bias, e.bias)
        elif e.bias is not None:
            _add_bias(pruned, e.site, e.bias)


def _write_module(model: nn.Module, edits: list, swap: Optional[Callable]) -> None:
    for e in edits:
        if e.weight is not None:
            _set_data(model, e.site.weight, e.weight, swap)
        if e.bias is not None and e.site.bias is not None:
            _set_data(model, e.site.bias, e.bias, swap)
        elif e.bias is not None:
            mod = _bias_slot(model, e.site)
            mod.bias = nn.Parameter(e.bias.to(mod.weight.device).clone())


@dataclass
class RepairPlan:
    """Repairs computed from the original weights, ready to write into a pruned model."""

    edits: list
    report: RepairReport

    def write(self, pruned: fx.GraphModule) -> None:
        """Into the pruned GraphModule (``fxprune.apply(dg, keep)``); attaches the report."""
        _write_graph(pruned, self.edits)
        pruned.meta[REPORT_KEY] = self.report

    def write_module(self, model: nn.Module, swap: Optional[Callable] = None) -> None:
        """Into the user's model, already pruned in place; attaches the report. ``fxprune.apply(dg, keep,
        inplace=True, repair=plan)`` calls it inside its transaction, with ``swap`` recording every change
        (a failed in-place check restores the model bit for bit, new biases removed)."""
        _write_module(model, self.edits, swap)
        object.__setattr__(model, REPORT_KEY, self.report)


@torch.no_grad()
def plan_repair(dg, keep: dict, cal: Calibration, method: str = "lstsq", *, damping: float = DAMPING,
                inplace_model: Optional[nn.Module] = None) -> RepairPlan:
    """Compute the repair of every consumer of the removed coordinates (Note [Repair]).

    Reads the original weights of ``dg``: call it before ``apply(dg, keep, inplace=True)``
    resizes them. ``inplace_model``: the model that will be pruned in place (consumers whose
    new bias has no slot there are skipped).
    """
    if method not in REPAIRS:
        raise ValueError(f"repair must be one of {REPAIRS} or None, got {method!r}")
    if not cal.gram:
        raise ValueError("repairs need Gram matrices: calibrate(dg, data, gram=True)")
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    return RepairPlan(*_plan(dg, keep, cal, method, damping, inplace_model))


def repair(dg, keep: dict, pruned: fx.GraphModule, cal: Calibration, method: str = "lstsq", *,
           damping: float = DAMPING) -> RepairReport:
    """Repair every consumer of the removed coordinates of ``pruned`` (Note [Repair]).

    Args:
        dg: the analysis ``pruned`` was made from (``fxprune.apply(dg, keep)``).
        keep: the keep-indices ``{group: indices}`` given to ``apply``.
        pruned: the pruned GraphModule; its tensors are changed (and biases added) in place.
        cal: :func:`fxprune.calib.calibrate` of ``dg`` with ``gram=True``.
        method: ``"bias"`` or ``"lstsq"``.
        damping: ``lambda`` of ``"lstsq"`` relative to the mean of ``diag(G)``.

    Returns:
        A :class:`RepairReport` (also in ``pruned.meta["fxprune_repair"]``).

    Example::

        >>> import torch, fxprune
        >>> from fxprune.calib import calibrate, repair
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <...>
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> dg = fxprune.analyze(net, (torch.randn(1, 4),))
        >>> cal = calibrate(dg, [torch.randn(64, 4)], gram=True)
        >>> keep = {dg.groups[0]: [0, 1, 2, 3]}
        >>> small = fxprune.apply(dg, keep)
        >>> rep = repair(dg, keep, small, cal, "lstsq")
        >>> [(r.layer, r.kept, r.removed, r.after <= r.before) for r in rep.layers]
        [('2', 4, 4, True)]
    """
    fix = plan_repair(dg, keep, cal, method, damping=damping)
    fix.write(pruned)
    return fix.report
