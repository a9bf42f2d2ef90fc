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
from ..policy.selection import group_ratios
from .checkpoint import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, Checkpoint, ShardWriter
from .calibrated import needs_calibration, run_calibrated
from .engine import Engine, TensorScores, rewrite_tensor
from .outdir import check_out, staged
from .plan import CheckpointPlan, candidates, plan_checkpoint

__all__ = ["prune_checkpoint", "StreamResult", "rewrite_tensor", "fits_in_memory", "stream_keep", "wants_stream",
           "run_cli", "describe"]

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
        repair: the ``fxprune.calib.RepairReport`` of ``repair=``, else None.
        calibration_bytes: tensor bytes the block-by-block calibration read (besides ``bytes_read``).
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
    repair: object = None
    calibration_bytes: int = 0

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


def _register_calibrated() -> None:
    """Import :mod:`fxprune.calib` where installed: its criteria names (wanda, fluctuation, obs) register."""
    try:
        import fxprune.calib  # noqa: F401
    except ImportError:
        pass


def _streamable(crit) -> None:
    if isinstance(crit, Random) or (isinstance(crit, Elementwise) and not crit.needs_data):
        return
    raise ValueError(f"importance {type(crit).__name__} cannot be computed tensor by tensor; streamed pruning "
                     "scores with magnitude criteria (l1, l2, lamp, bn_scale) or random, or with calibrated "
                     "criteria (wanda, fluctuation, obs) given data=")


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


def _copy_side_files(src: str, out: str) -> None:
    """Tokenizer, generation config and other small files travel with the weights."""
    for f in os.listdir(src):
        p = os.path.join(src, f)
        inside = os.path.dirname(os.path.realpath(p)) == os.path.realpath(src)  # no symlink out of the checkpoint
        if inside and os.path.isfile(p) and not f.endswith(".safetensors") and f not in _WEIGHT_FILES and \
                not f.startswith(".") and os.path.getsize(p) < 64 * 2**20:
            shutil.copy2(p, os.path.join(out, f))


def _buffer_shapes(plan: CheckpointPlan, atom_keep: dict) -> dict:
    """Pruned shapes of the model's buffers the checkpoint does not hold (a rotary table of ``head_dim / 2``
    tells ``pruned_config`` a pruned head count from a pruned head dim)."""
    out = {}
    for name, b in plan.model.named_buffers():
        if name in plan.checkpoint:
            continue
        dims = plan.dg.param_use(name).dims if name in plan.dg.param_names else None
        out[name] = tuple(b.shape) if dims is None else tuple(layout.new_size(atom_keep) for layout in dims)
    return out


def _write_config(plan: CheckpointPlan, shapes: dict, out: str):
    """config.json of the pruned widths (``pruned_config``): stock when uniform, else marked ``fxprune_``."""
    from .config import pruned_config
    from .save import mark_config_file

    result = pruned_config(plan.config, shapes, model_cls=type(plan.model))
    result.config.save_pretrained(out)
    mark_config_file(out)
    return result


def _stream(plan, cfg, ratios, keep, crit, calibrated, out, max_shard_size, hold_bytes, data, repair, damping,
            dtype, progress):
    """One pass over the checkpoint's tensors (or the block-by-block calibration) writing into ``out``."""
    ck = plan.checkpoint
    with ShardWriter(out, max_shard_size) as writer, \
            tqdm(total=len(ck.tensors), desc="streaming tensors", unit="tensor", disable=not progress) as bar:
        scores = TensorScores(plan, crit, list(ratios)) if keep is None and not calibrated else None
        eng = Engine(plan, cfg, ratios, writer, hold_bytes, keep=keep, scores=scores, bar=bar)
        report = runner = None
        if calibrated:
            report, runner = run_calibrated(plan, crit, eng, data, repair=repair, damping=damping,
                                            dtype=dtype or torch.float32, progress=progress)
        else:
            for name in ck.tensors:
                eng.step(name)
            eng.finish()
    return eng, report, runner


def prune_checkpoint(path, out, config: Optional[PruneConfig] = None, *, keep: Optional[dict] = None,
                     data=None, repair: Optional[str] = None, damping: Optional[float] = None,
                     example_kwargs: Optional[dict] = None, max_shard_size="512MB", hold_bytes: int = 2**30,
                     dtype=None, progress: bool = False, plan: Optional[CheckpointPlan] = None,
                     **options) -> StreamResult:
    """Prune the safetensors checkpoint at ``path`` into ``out`` without loading the model.

    Args:
        path: a checkpoint directory (``config.json`` + ``model.safetensors`` or shards + index).
        out: the new checkpoint's directory: a new path or an empty directory, not the input (Note [Output
            directories] in ``outdir.py``); written into a temporary sibling and renamed when complete.
        config: a :class:`fxprune.PruneConfig`; keyword ``options`` override its fields (``ratio``,
            ``importance`` (l1/l2/lamp/bn_scale/random), ``scope``, ``ignore``, ``ratios``, ``round_to``, ...).
            Targets (``target_macs``/``target_params``) are not supported here.
        keep: ``{group: indices}`` to apply instead of scoring (groups of ``plan.dg``, or of another
            analysis of the same architecture, matched by members).
        data: calibration batches (token-id tensors or dicts of keyword inputs) for the calibrated
            criteria (``wanda``, ``fluctuation``, ``obs``) and repairs: run block by block (Note
            [Streamed calibration] in ``calibrated.py``; needs :mod:`fxprune.calib`).
        repair: ``"bias"`` or ``"lstsq"`` (see :func:`fxprune.calib.repair`), or None.
        damping: of the ``lstsq`` repair (default ``fxprune.calib.DAMPING``).
        dtype: the calibration's compute dtype (default float32).
        example_kwargs: the capture's example inputs (default: 2 x 8 token ids).
        max_shard_size: the cap of an output shard (``"512MB"``). Memory holds one shard, twice while it is
            written (safetensors serializes a copy): at 7B shape, peak RSS 1.9 GiB with 512 MB shards and
            2.3 GiB with 1 GB ones (``benchmarks/STREAM.md``).
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
    _register_calibrated()
    cfg = dataclasses.replace(config, **options) if config is not None else PruneConfig(**options)
    if cfg.target_macs is not None or cfg.target_params is not None or cfg.iterative_steps != 1:
        raise ValueError("streamed pruning takes a ratio (scope local or global), not a MACs/params target or "
                         "iterative steps: they need the pruned model in memory")
    crit = get_importance(cfg.importance)
    calibrated = needs_calibration(crit, repair)
    if calibrated and data is None:
        raise ValueError(f"importance {cfg.importance!r} with repair={repair!r} reads activations: pass data=[batch, "
                         "...] (token-id tensors or dicts of keyword inputs)")
    if keep is None and not getattr(crit, "needs_calibration", False):
        _streamable(crit)
    out = check_out(plan.checkpoint.path if plan is not None else path, out)  # Note [Output directories]
    plan = plan or plan_checkpoint(path, example_kwargs)
    groups, left_out = candidates(plan.dg)
    keep = stream_keep(plan, keep) if keep is not None else None
    ck = plan.checkpoint
    if keep is None:
        ratios = group_ratios(plan.dg, cfg, cfg.max_ratio if cfg.scope == "global" else cfg.ratio)
        ratios = {g: r for g, r in ratios.items() if g in set(groups)}
    else:
        ratios = {g: 0.0 for g in keep}
    with staged(out) as tmp:  # renamed to ``out`` once every file is written
        eng, report, runner = _stream(plan, cfg, ratios, keep, crit, calibrated, tmp, max_shard_size, hold_bytes,
                                      data, repair, damping, dtype, progress)
        written = Checkpoint(tmp)
        res = StreamResult(out, eng.keep, plan, left_out, eng.raw, None, eng.bytes_read, eng.writer.bytes_written,
                           eng.reads, len(ck.tensors), repair=report,
                           calibration_bytes=runner.bytes_read if runner is not None else 0)
        if eng.keep:
            shapes = {**_buffer_shapes(plan, eng.atom_keep), **{n: i.shape for n, i in written.tensors.items()}}
            res.config = _write_config(plan, shapes, tmp)
        else:  # nothing pruned: the config stays the input's, byte for byte (never relabelled fxprune_)
            shutil.copy2(os.path.join(ck.path, "config.json"), os.path.join(tmp, "config.json"))
        _copy_side_files(ck.path, tmp)
    res.files = sorted({os.path.basename(i.file) for i in written.tensors.values()})
    res.seconds = time.perf_counter() - t0
    return res


# -- command line --------------------------------------------------------------------------------------------
def wants_stream(args) -> bool:
    """``fxprune hf:PATH`` streams with ``--stream``, or when the checkpoint does not fit in memory."""
    spec = getattr(args, "model", None) or ""
    if not spec.startswith("hf:"):
        if getattr(args, "stream", False):
            raise ValueError("--stream prunes a safetensors checkpoint: use it with MODEL hf:PATH")
        return False
    path = spec[3:]
    return bool(getattr(args, "stream", False)) or (os.path.isdir(path) and not fits_in_memory(path))


def run_cli(args, cfg: PruneConfig, say) -> tuple:
    """The CLI's streamed run (``fxprune hf:PATH --out DIR [--stream]``): (summary line, exit code 0)."""
    path, out = args.model[3:], getattr(args, "out", None)
    if not out:
        raise ValueError("streaming writes a new checkpoint: pass --out DIR")
    if cfg.uniform and cfg.scope == "global":
        raise ValueError("--uniform keeps one width per class of layers; a streamed run gets that from local "
                         "ratios: drop --scope global")
    check_out(path, out)
    say(f"planning {path} on the meta device (config.json, tensor headers)")
    plan = plan_checkpoint(path)
    data = None
    if getattr(args, "calib", 0):  # fxprune.calib's --calib N: random token ids, 128 per sequence
        gen = torch.Generator().manual_seed(args.seed)
        vocab = int(getattr(plan.config, "vocab_size", 2))
        data = [torch.randint(0, vocab, (1, 128), generator=gen) for _ in range(args.calib)]
    say(f"{len(plan.dg.groups)} groups; streaming {len(plan.checkpoint.tensors)} tensors "
        f"({plan.checkpoint.nbytes / 2**30:.2f} GiB) into {out}")
    res = prune_checkpoint(path, out, cfg, plan=plan, data=data, repair=getattr(args, "repair", None),
                           progress=say.bars)
    if not args.quiet:
        print(describe(res))
    return res.summary(), 0


def describe(res: StreamResult) -> str:
    """What changed: the config attributes, per-layer widths, groups left out and the repair."""
    lines = []
    pc = res.config
    if pc is not None:
        kind = "uniform: loads with plain transformers" if pc.uniform else \
            "per-layer widths: load with fxprune.hf.from_pretrained (plain transformers refuses it)"
        lines.append(f"config ({kind}): " + (", ".join(f"{k} {a} -> {b}" for k, (a, b) in pc.changed.items())
                                                or "no stock attribute changed"))
    by_layer: dict = {}
    for g, k in res.keep.items():
        owner = res.plan.block_of(g.producers[0].param if g.producers else g.members[0][0]) or "(outside the layers)"
        by_layer.setdefault(owner, []).append(f"{g.name} {g.size}->{len(k)}")
    for layer, items in by_layer.items():
        lines.append(f"  {layer}: {', '.join(items)}")
    if res.left_out:
        lines.append(f"left out: {len(res.left_out)} groups ({'; '.join(sorted(set(res.left_out.values())))})")
    if res.repair is not None:
        lines.append(str(res.repair))
    return "\n".join(lines)
