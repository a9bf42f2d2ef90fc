"""Prune a checkpoint larger than memory: plan on meta, score and rewrite tensor by tensor.

Note [Streamed pruning]
~~~~~~~~~~~~~~~~~~~~~~~
:func:`prune_checkpoint` never holds the model. The plan comes from the config
(Note [Planning on meta] in ``plan.py``). Then one pass over the checkpoint's
tensors, in file order:

1. read a tensor (``safe_open``), add its members' scores to the groups it carries
   (``Elementwise.member_scores``, the code in-memory pruning runs, in float64
   slices);
2. a group whose member tensors have all been read is *complete*; with
   ``scope="local"`` it is decided at once (``select_local``, as in memory);
3. a tensor whose groups are all decided is rewritten at once: every dim whose
   layout the keep map touches is ``index_select``-ed with the layout's flat
   indices, exactly as the rewrite pass does, and queued into the current output
   shard (``ShardWriter``); a tensor still waiting for a decision is held, while
   the held tensors stay under ``hold_bytes``, and otherwise dropped and read
   again after the pass.

With local decisions and groups inside one decoder layer (heads, MLP width) a
tensor waits at most for the rest of its layer: one read of every tensor, and
memory is one layer plus one output shard. ``scope="global"`` decides after the
pass, so most tensors are read twice. Then the config of the pruned widths
(``fxprune.hf.config.pruned_config``: stock when the widths are uniform, else an
``fxprune`` section that plain transformers refuses), the index and the
tokenizer files are written.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from tqdm.auto import tqdm

from ..policy.importance import Elementwise, Random, get_importance
from ..policy.pruner import PruneConfig
from ..policy.selection import group_ratios, select_global, select_local
from .checkpoint import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, Checkpoint, ShardWriter
from .plan import CheckpointPlan, candidates, plan_checkpoint

__all__ = ["prune_checkpoint", "StreamResult", "rewrite_tensor", "fits_in_memory", "stream_keep"]

_WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, "config.json")


@dataclass
class StreamResult:
    """What :func:`prune_checkpoint` did.

    Attributes:
        out: the output directory.
        keep: ``{group: kept indices}`` for the groups that lost coordinates (groups of ``plan.dg``).
        scores: ``{group: scores}`` of the candidate groups (empty when ``keep`` was given).
        plan: the :class:`~fxprune.hf.plan.CheckpointPlan` (the analysis on meta).
        left_out: ``{group: why}`` for groups the streamed pruning may not change.
        config: what ``pruned_config`` returned (the new config, ``uniform``, ...).
        bytes_read, bytes_written: tensor bytes read (all passes) and file bytes written.
        reads: tensors read, counting second reads; ``tensors``: tensors in the checkpoint.
        seconds: wall time.
        files: the output shard names.
    """

    out: str
    keep: dict
    plan: CheckpointPlan
    left_out: dict
    scores: dict = field(default_factory=dict)
    config: object = None
    bytes_read: int = 0
    bytes_written: int = 0
    reads: int = 0
    tensors: int = 0
    seconds: float = 0.0
    files: list = field(default_factory=list)

    def summary(self) -> str:
        ck = self.plan.checkpoint
        pruned = ", ".join(f"{g.name} {g.size}->{len(k)}" for g, k in list(self.keep.items())[:6])
        more = f" (+{len(self.keep) - 6} more)" if len(self.keep) > 6 else ""
        return (f"{ck.path} -> {self.out}: {len(self.keep)} groups pruned [{pruned}{more}], "
                f"{self.bytes_read / 2**30:.2f} GiB read ({self.reads}/{self.tensors} tensor reads), "
                f"{self.bytes_written / 2**30:.2f} GiB written in {len(self.files)} shard(s), {self.seconds:.1f} s")


def fits_in_memory(path, factor: float = 2.5) -> bool:
    """Whether pruning in memory fits: ``factor`` x the checkpoint's tensor bytes under MemAvailable.

    In memory, the model, its pruned copy and the work space of the checks are alive together.
    """
    need = Checkpoint(path).nbytes * factor
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return True  # not Linux: nothing tells us it does not fit
    return need <= avail


@torch.no_grad()
def rewrite_tensor(t: torch.Tensor, dims: tuple, atom_keep: dict) -> torch.Tensor:
    """``t`` with every dim whose layout ``atom_keep`` touches ``index_select``-ed, as the rewrite pass does."""
    out = t
    for d, layout in enumerate(dims):
        if layout.touches(atom_keep):
            out = out.index_select(d, layout.flat_indices(atom_keep))
    return out.contiguous()


def _streamable(crit) -> None:
    if isinstance(crit, Random) or (isinstance(crit, Elementwise) and not crit.needs_data):
        return
    raise ValueError(f"importance {type(crit).__name__} cannot be computed tensor by tensor; streamed pruning "
                     "scores with magnitude criteria (l1, l2, lamp, bn_scale) or random")


class _Scores:
    """Member scores of the candidate groups, filled tensor by tensor."""

    def __init__(self, plan: CheckpointPlan, crit, groups: list):
        self.crit, self.dg = crit, plan.dg
        params = {n for n, _ in plan.dg.gm.named_parameters()}
        self.wanted: dict = {}  # checkpoint name -> [(group, member index, MemberLayout)]
        self.per: dict = {g: {} for g in groups}
        self.waiting: dict = {g: set() for g in groups}
        if isinstance(crit, Random):
            return
        for g in groups:
            for i, m in enumerate(g.layouts):
                stored = plan.aliases.get(m.param)
                info = plan.checkpoint.tensors.get(stored) if stored else None
                if m.param not in params or stored is None or not crit.counts(plan.dg, m.param) or \
                        not info.dtype.is_floating_point:
                    continue
                self.wanted.setdefault(stored, []).append((g, i, m))
                self.waiting[g].add(stored)

    def add(self, name: str, t: torch.Tensor) -> list:
        """Score ``t``'s members; returns the groups this completes."""
        done = []
        for g, i, m in self.wanted.get(name, ()):
            self.per[g][i] = self.crit.member_scores(t, m, g)
            self.waiting[g].discard(name)
            if not self.waiting[g]:
                done.append(g)
        return done

    def ready(self) -> list:
        """Groups complete before any tensor is read (no member to score)."""
        return [g for g, w in self.waiting.items() if not w]

    def score(self, g) -> Optional[torch.Tensor]:
        if isinstance(self.crit, Random):
            return self.crit.score(self.dg, g, None)
        return self.crit.combine([self.per[g][i] for i in sorted(self.per[g])])


class _Engine:
    """One pass over the tensors: score, decide, rewrite, write (Note [Streamed pruning])."""

    def __init__(self, plan, cfg, crit, ratios: dict, writer, hold_bytes, bar, keep=None):
        self.plan, self.cfg, self.writer, self.hold_bytes, self.bar = plan, cfg, writer, hold_bytes, bar
        self.ratios = ratios
        self.scores = _Scores(plan, crit, list(self.ratios)) if keep is None else None
        self.decided: dict = dict(keep) if keep is not None else {}  # group -> kept indices or None (all kept)
        self.raw: dict = {}
        self.atom_keep: dict = {g.atom: torch.as_tensor(k, dtype=torch.long) for g, k in self.decided.items()}
        self.held: dict = {}  # name -> tensor
        self.held_size, self.deferred = 0, []
        self.reads = self.bytes_read = 0
        self.waits = {n: self._groups_of(n) for n in plan.checkpoint.tensors}
        if self.scores is not None:
            for g in self.scores.ready():
                self._complete(g)

    def _groups_of(self, name: str) -> set:
        """Candidate groups whose decision the rewrite of ``name`` waits for."""
        target = self.plan.target_of.get(name)
        if target is None:
            return set()
        atoms = {a.id for layout in self.plan.dg.param_use(target).dims for a in layout.atoms()}
        return {g for g in self.ratios if g.atom in atoms}

    def _complete(self, g) -> None:
        s = self.raw[g] = self.scores.score(g)
        if self.cfg.scope == "local":
            self._decide(select_local({g: s}, {g: self.ratios[g]}, self.cfg).get(g), g)

    def _decide(self, kept, g) -> None:
        self.decided[g] = kept
        if kept is not None:
            self.atom_keep[g.atom] = torch.as_tensor(kept, dtype=torch.long)

    def _ready(self, name: str) -> bool:
        return all(g in self.decided for g in self.waits[name])

    def read(self, name: str) -> torch.Tensor:
        t = self.plan.checkpoint.read(name)
        self.reads += 1
        self.bytes_read += t.numel() * t.element_size()
        return t

    def step(self, name: str) -> None:
        t = self.read(name)
        for g in self.scores.add(name, t) if self.scores is not None else ():
            self._complete(g)
        if self._ready(name):
            self._emit(name, t)
        elif self.held_size + t.numel() * t.element_size() <= self.hold_bytes:
            self.held[name] = t
            self.held_size += t.numel() * t.element_size()
        else:
            self.deferred.append(name)
        self._flush_held()

    def _flush_held(self) -> None:
        for name in [n for n in self.held if self._ready(n)]:
            t = self.held.pop(name)
            self.held_size -= t.numel() * t.element_size()
            self._emit(name, t)

    def _emit(self, name: str, t: torch.Tensor) -> None:
        target = self.plan.target_of.get(name)
        out = t if target is None else rewrite_tensor(t, self.plan.dg.param_use(target).dims, self.atom_keep)
        self.writer.add(name, out)
        self.bar.update(1)

    def finish(self) -> None:
        """Decide what is left (global ranking), write the held tensors, read the dropped ones again."""
        undecided = [g for g in self.ratios if g not in self.decided]
        if undecided and self.cfg.scope == "global":
            chosen = select_global({g: self.raw.get(g) for g in undecided}, self.ratios, self.cfg.ratio, self.cfg)
            for g in undecided:
                self._decide(chosen.get(g), g)
        for g in undecided:
            if g not in self.decided:
                self._decide(None, g)
        self._flush_held()
        for name in self.deferred:
            self._emit(name, self.read(name))

    @property
    def keep(self) -> dict:
        return {g: k for g, k in self.decided.items() if k is not None}


def stream_keep(plan: CheckpointPlan, keep: dict) -> dict:
    """A keep map of another analysis of the same architecture, as groups of ``plan.dg`` (matched by members)."""
    by_members = {tuple(sorted(g.members)): g for g in plan.dg.groups}
    out = {}
    for g, idx in keep.items():
        key = tuple(sorted(g.members)) if hasattr(g, "members") else None
        mine = by_members.get(key) if key else (plan.dg.groups[g] if isinstance(g, int) else None)
        if mine is None:
            raise ValueError(f"keep names {g!r}, which is not a group of this checkpoint's analysis")
        out[mine] = idx
    return out


def _check_out(src: str, out: str) -> str:
    out = os.path.abspath(out)
    if out == os.path.abspath(src):
        raise ValueError(f"--out {out} is the input checkpoint: write the pruned checkpoint to another directory")
    if os.path.isdir(out) and any(os.path.exists(os.path.join(out, f)) for f in _WEIGHT_FILES):
        raise FileExistsError(f"{out} already holds a checkpoint; choose an empty or new directory")
    return out


def _copy_side_files(src: str, out: str) -> None:
    """Tokenizer, generation config and other small files travel with the weights."""
    for f in os.listdir(src):
        p = os.path.join(src, f)
        if os.path.isfile(p) and not f.endswith(".safetensors") and f not in _WEIGHT_FILES and \
                not f.startswith(".") and os.path.getsize(p) < 64 * 2**20:
            shutil.copy2(p, os.path.join(out, f))


def _write_config(plan: CheckpointPlan, shapes: dict, out: str):
    from .config import pruned_config

    result = pruned_config(plan.config, shapes, model_cls=type(plan.model))
    save = getattr(result, "save", None)
    if callable(save):
        save(out)
    else:
        result.config.save_pretrained(out)
    return result


def prune_checkpoint(path, out, config: Optional[PruneConfig] = None, *, keep: Optional[dict] = None,
                     example_kwargs: Optional[dict] = None, max_shard_size="1GB", hold_bytes: int = 2**30,
                     progress: bool = False, plan: Optional[CheckpointPlan] = None, **options) -> StreamResult:
    """Prune the safetensors checkpoint at ``path`` into ``out`` without loading the model.

    Args:
        path: a checkpoint directory (``config.json`` + ``model.safetensors`` or shards + index).
        out: the new checkpoint's directory (new or empty).
        config: a :class:`fxprune.PruneConfig`; keyword ``options`` override its fields (``ratio``,
            ``importance`` (l1/l2/lamp/bn_scale/random), ``scope``, ``ignore``, ``ratios``, ``round_to``, ...).
            Targets (``target_macs``/``target_params``) are not supported here.
        keep: ``{group: indices}`` to apply instead of scoring (groups of ``plan.dg``, or of another
            analysis of the same architecture, matched by members).
        example_kwargs: the capture's example inputs (default: 2 x 8 token ids).
        max_shard_size: the cap of an output shard (``"1GB"``); memory holds one shard.
        hold_bytes: tensors waiting for a decision stay in memory up to this; beyond, they are read again.
        progress: a tqdm bar over the tensors (stderr).
        plan: a :class:`CheckpointPlan` of ``path`` made already.

    Returns:
        A :class:`StreamResult`.

    Example::

        >>> res = prune_checkpoint("llama-7b", "llama-7b-pruned", ratio=0.2)   # doctest: +SKIP
        >>> fxprune.hf.from_pretrained("llama-7b-pruned")                      # doctest: +SKIP
    """
    t0 = time.perf_counter()
    cfg = dataclasses.replace(config, **options) if config is not None else PruneConfig(**options)
    if cfg.target_macs is not None or cfg.target_params is not None or cfg.iterative_steps != 1:
        raise ValueError("streamed pruning takes a ratio (scope local or global), not a MACs/params target or "
                         "iterative steps: they need the pruned model in memory")
    crit = get_importance(cfg.importance)
    if keep is None:
        _streamable(crit)
    plan = plan or plan_checkpoint(path, example_kwargs)
    out = _check_out(plan.checkpoint.path, out)
    groups, left_out = candidates(plan.dg)
    keep = stream_keep(plan, keep) if keep is not None else None
    ck = plan.checkpoint
    if keep is None:
        ratios = group_ratios(plan.dg, cfg, cfg.max_ratio if cfg.scope == "global" else cfg.ratio)
        ratios = {g: r for g, r in ratios.items() if g in set(groups)}
    else:
        ratios = {g: 0.0 for g in keep}
    with ShardWriter(out, max_shard_size) as writer, \
            tqdm(total=len(ck.tensors), desc="streaming tensors", unit="tensor", disable=not progress) as bar:
        eng = _Engine(plan, cfg, crit, ratios, writer, hold_bytes, bar, keep)
        for name in ck.tensors:
            eng.step(name)
        eng.finish()
    written = Checkpoint(out)
    res = StreamResult(out, eng.keep, plan, left_out, eng.raw, None, eng.bytes_read, writer.bytes_written,
                       eng.reads, len(ck.tensors))
    res.config = _write_config(plan, {n: i.shape for n, i in written.tensors.items()}, out)
    _copy_side_files(ck.path, out)
    res.files = sorted({os.path.basename(i.file) for i in written.tensors.values()})
    res.seconds = time.perf_counter() - t0
    return res
