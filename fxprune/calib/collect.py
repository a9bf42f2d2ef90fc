"""The calibration pass: stream batches through the captured graph, accumulate consumer statistics.

Note [Calibration pass]
~~~~~~~~~~~~~~~~~~~~~~~
An ``fx.Interpreter`` runs the runnable graph (:func:`fxprune.passes.runnable`)
one batch at a time, with ``garbage_collect_values``: an activation is freed
as soon as its last user has run. After each consumer site (Note [Consumer
sites]) runs, its input, still alive, is folded into float64 running sums:
the count, ``sum x``, ``sum x^2`` and, where a criterion or a repair needs it,
``sum x x^T`` over the contracted coordinates. A folded model (Note [Folded
blocks]) calls its blocks as GraphModules; the interpreter runs each block
with its own interpreter, so only one block's activations are alive at a time.
Memory is one layer's activations plus the statistics.

The model runs in eval mode (no BatchNorm statistic moves; the flags are
restored) under ``torch.no_grad``: the user's model is never changed.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch
import torch.fx as fx
import torch.fx._pytree as fx_pytree
from torch.fx.graph import _PyTreeCodeGen

from fxprune.passes import runnable

from .sites import Site, find_sites, getattr_path, param_uses

__all__ = ["ConsumerStats", "Calibration", "calibrate", "batch_inputs", "random_batches"]


@dataclass
class ConsumerStats:
    """Running float64 sums over the contracted coordinates of one site."""

    n: int = 0
    s1: Optional[torch.Tensor] = None
    s2: Optional[torch.Tensor] = None
    gram: Optional[torch.Tensor] = None
    patch_n: int = 0
    patch_s1: Optional[torch.Tensor] = None  # 2-D convolutions: (channels, kernel offsets)

    def add_patches(self, sums: Optional[tuple]) -> None:
        if sums is not None:
            n, s1 = sums
            self.patch_n += n
            self.patch_s1 = s1 if self.patch_s1 is None else self.patch_s1 + s1

    @property
    def patch_mean(self) -> Optional[torch.Tensor]:
        """``E[x]`` of every (channel, kernel offset) input over the output positions (2-D convs)."""
        return None if self.patch_s1 is None else self.patch_s1 / self.patch_n

    def add(self, rows: torch.Tensor, gram: bool) -> None:
        if self.s1 is None:
            k = rows.shape[1]
            self.s1 = torch.zeros(k, dtype=torch.float64)
            self.s2 = torch.zeros(k, dtype=torch.float64)
            self.gram = torch.zeros(k, k, dtype=torch.float64) if gram else None
        self.n += rows.shape[0]
        self.s1 += rows.sum(0)
        self.s2 += rows.pow(2).sum(0)
        if gram:
            self.gram += rows.T @ rows

    @property
    def mean(self) -> torch.Tensor:
        return self.s1 / self.n

    @property
    def second(self) -> torch.Tensor:
        """``E[x_j^2]`` per coordinate."""
        return self.s2 / self.n

    @property
    def var(self) -> torch.Tensor:
        """Population variance ``E[x_j^2] - E[x_j]^2`` (clamped at 0)."""
        return (self.second - self.mean.pow(2)).clamp_min(0)

    @property
    def moment(self) -> torch.Tensor:
        """``G = E[x x^T]``; needs ``gram=True`` at calibration."""
        if self.gram is None:
            raise ValueError("this calibration has no Gram matrices: calibrate with gram=True")
        return self.gram / self.n


@dataclass
class Calibration:
    """What :func:`calibrate` measured: the sites and their statistics.

    Attributes:
        sites: ``{key: Site}`` for every consumer with statistics.
        stats: ``{key: ConsumerStats}``.
        uses: ``{parameter: number of ops reading it}`` (tied weights are never repaired).
        gram: whether the Gram matrices were accumulated.
        batches: how many batches were read.
    """

    dg: object
    sites: dict
    stats: dict
    uses: dict
    gram: bool
    batches: int = 0
    _by_group: dict = field(default_factory=dict, repr=False)

    def consumers(self, group) -> list:
        """``[(site, stats)]`` of the sites whose contracted dim carries ``group``."""
        if group.atom not in self._by_group:
            members = set(group.members)
            self._by_group[group.atom] = [(s, self.stats[k]) for k, s in self.sites.items()
                                          if (s.weight, s.dim) in members and self.stats[k].n]
        return self._by_group[group.atom]

    def weight(self, site: Site) -> torch.Tensor:
        """The original weight of ``site`` (as analysed)."""
        return getattr_path(self.dg.gm, site.weight)


def batch_inputs(batch, n_args: int) -> tuple:
    """``(args, kwargs)`` of one calibration batch.

    A tensor is one positional input; a dict is keyword inputs; a tuple/list holds
    positional inputs. A pair ``(inputs, labels)`` (the batches of gradient criteria)
    for a model with one positional input gives ``inputs``: labels are ignored.
    """
    if isinstance(batch, torch.Tensor):
        return (batch,), {}
    if isinstance(batch, dict):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)):
        if n_args == 1 and len(batch) == 2:
            inner = batch[0]
            return ((inner,), {}) if isinstance(inner, torch.Tensor) else batch_inputs(inner, n_args)
        return tuple(batch), {}
    raise TypeError(f"a calibration batch is a tensor, a tuple of positional inputs or a dict of keyword "
                    f"inputs; got {type(batch).__name__}")


def _flat_inputs(gm: fx.GraphModule, args: tuple, kwargs: dict) -> list:
    """The placeholder values ``gm.forward(*args, **kwargs)`` binds, in placeholder order."""
    bound = inspect.signature(gm.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    codegen = gm.graph._codegen
    if not isinstance(codegen, _PyTreeCodeGen) or codegen.pytree_info is None:
        return list(bound.arguments.values())
    info = codegen.pytree_info
    values = [bound.arguments[name] for name in info.orig_args]
    spec = info.in_spec
    if spec.type is tuple and spec.num_children == 2 and spec.child(0).type is tuple and spec.child(1).type is dict:
        count = spec.child(0).num_children
        packed = (values[:count], dict(zip(spec.child(1).context, values[count:])))
    else:
        packed = values
    return fx_pytree.tree_flatten_spec(packed, spec)


class _Calibrator(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, prefix: str, cal: "Calibration", sites: dict):
        super().__init__(gm, garbage_collect_values=True)
        self.prefix, self.cal, self.sites = prefix, cal, sites

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        site = self.sites.get((self.prefix, n.name))
        if site is not None:
            x = n.args[site.x_arg]
            if isinstance(x, fx.Node) and isinstance(self.env.get(x), torch.Tensor):
                st, w = self.cal.stats[site.key], self.cal.weight(site)
                st.add(site.rows(self.env[x], w), self.cal.gram)
                st.add_patches(site.patch_sums(self.env[x], w))
        return out

    def call_module(self, target, args, kwargs):
        sub = self.fetch_attr(target)
        if isinstance(sub, fx.GraphModule):  # a folded block: run it node by node too
            return _run(sub, f"{self.prefix}{target}.", self.cal, self.sites, args, kwargs)
        return super().call_module(target, args, kwargs)


def _run(gm: fx.GraphModule, prefix: str, cal: "Calibration", sites: dict, args: tuple, kwargs: dict):
    return _Calibrator(gm, prefix, cal, sites).run(*_flat_inputs(gm, args, kwargs))


def _check_data(data) -> None:
    if data is None:
        raise ValueError("calibrated criteria and repairs need data: pass data=[batch, ...] of model inputs "
                         "(a tensor, a tuple of positional inputs or a dict of keyword inputs per batch)")
    if iter(data) is data:
        raise ValueError("data is an iterator, which can be read only once; pass a list of batches")


def _run_batches(cal: Calibration, gm: fx.GraphModule, data: Iterable) -> None:
    dg = cal.dg
    n_args = len(dg.example_args)
    consts = {k: v for k, v in dg.example_kwargs.items() if not isinstance(v, torch.Tensor)}
    for batch in data:
        args, kwargs = batch_inputs(batch, n_args)
        kwargs = {**consts, **kwargs}
        try:
            _run(gm, "", cal, cal.sites, args, kwargs)
        except (TypeError, RuntimeError, AssertionError) as e:  # export guards raise AssertionError
            raise ValueError(f"a calibration batch does not fit the captured graph ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]}); batches are model inputs like the example "
                             "inputs (a graph captured with static shapes needs the example's shapes)") from e
        cal.batches += 1


@torch.no_grad()
def calibrate(dg, data: Iterable, *, gram: bool = False, groups: Optional[Iterable] = None) -> Calibration:
    """Stream ``data`` through the analysed graph; statistics of every consumer of ``groups``.

    Args:
        dg: a :class:`~fxprune.DependencyGraph`.
        data: a list of batches of model inputs (see :func:`batch_inputs`), read once.
        gram: also accumulate ``sum x x^T`` (for ``importance="obs"`` and repairs).
        groups: only consumers of these groups (default: every group).

    Returns:
        A :class:`Calibration`.

    Example::

        >>> import torch, fxprune
        >>> from fxprune.calib import calibrate
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> dg = fxprune.analyze(net, (torch.randn(1, 4),))
        >>> cal = calibrate(dg, [torch.randn(16, 4), torch.randn(16, 4)], gram=True)
        >>> [(s.weight, cal.stats[k].n, tuple(cal.stats[k].moment.shape)) for k, s in cal.sites.items()]
        [('2.weight', 32, (8, 8))]
    """
    _check_data(data)
    if dg.lifted:
        raise ValueError("this graph takes its parameters as inputs (torch.compile); calibrate the model itself")
    gm = runnable(dg.gm)
    wanted = list(dg.groups if groups is None else groups)
    members = {m for g in wanted for m in g.members}
    sites = {k: s for k, s in find_sites(dg, gm).items() if (s.weight, s.dim) in members}
    cal = Calibration(dg, sites, {k: ConsumerStats() for k in sites}, param_uses(gm), gram)
    flags = {m: m.training for m in gm.modules()}
    for m in flags:  # not gm.eval(): exported graphs refuse it
        m.training = False
    try:
        _run_batches(cal, gm, data)
    finally:
        for m, t in flags.items():
            m.training = t
    if cal.batches == 0:
        raise ValueError("data yielded no batch: pass a non-empty list of batches")
    return cal



def random_batches(example_inputs: tuple, n: int, seed: int = 0) -> list:
    """``n`` synthetic calibration batches shaped like ``example_inputs`` (what the CLI's ``--calib`` uses).

    Floating inputs are standard Gaussian; integer inputs (token ids) are uniform in
    ``[0, max(example) + 1)``. Real data calibrates better: pass your own batches to the API.
    """
    gen = torch.Generator().manual_seed(seed)

    def fake(x):
        if not isinstance(x, torch.Tensor):
            return x
        if x.is_floating_point():
            return torch.randn(x.shape, generator=gen, dtype=x.dtype)
        return torch.randint(0, int(x.max()) + 1 if x.numel() else 1, x.shape, generator=gen, dtype=x.dtype)
    return [tuple(fake(x) for x in example_inputs) for _ in range(n)]
