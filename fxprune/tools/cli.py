"""``fxprune`` / ``python -m fxprune``: prune a model from the shell.

With no MODEL it prunes the built-in DemoNet (no download, no optional
dependency, a few seconds), prints per-group and per-layer tables, CPU latency
before and after, and checks the result with both exactness oracles.

A run is four steps: load (the model and its example inputs), analyse,
prune (one :func:`fxprune.prune_step`, or :func:`fxprune.prune` for iterative
steps; both certify by default), report (tables, save, plot). Every failure
maps to one exit code (``_EXIT_FOR``) and a message; ``--debug`` adds the traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from fxprune.passes import keys

__all__ = ["main", "EXIT_CODES"]

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_CAPTURE, EXIT_MODEL, EXIT_OUTPUT, EXIT_MISSING = 0, 1, 2, 3, 4, 5, 6
EXIT_MEMORY, EXIT_INTERNAL, EXIT_INTERRUPTED = 7, 70, 130
EXIT_CODES = {
    EXIT_OK: "pruned (and, unless --no-verify, certified and both oracles exact)",
    EXIT_MISMATCH: "oracle mismatch: the analysis misses a coupling (please report it)",
    EXIT_USAGE: "bad usage: bad ratio/option, unknown model, missing factory, unreachable target; refused "
                "input: --out is the input or not empty, an unsafe or inconsistent checkpoint (index outside its "
                "folder, unknown architecture, missing/unexpected/mismatched tensors)",
    EXIT_CAPTURE: "capture failure: the model cannot be traced into an FX graph (try --leaf NAME), or it is "
                  "one fxprune refuses (quantization-aware, quantized, parametrized, or writes its input)",
    EXIT_MODEL: "the model does not run on its example inputs (wrong shape or rank, unsupported input or "
                "output kind) or is on the meta device where values are needed",
    EXIT_OUTPUT: "cannot write --save/--plot/--out/--onnx: missing directory, no permission, disk full (nothing "
                 "is left behind), model not serializable (or its ONNX export computes something else)",
    EXIT_MISSING: "a missing optional package (torchvision, timm, matplotlib)",
    EXIT_MEMORY: "--in-memory: the in-memory path's estimated peak exceeds free memory (drop it to stream), "
                 "or an allocation failed",
    EXIT_INTERNAL: "internal error: a bug in fxprune (please report it with the --debug output)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}

_EPILOG = """\
MODEL:
  (none) or demo          the built-in DemoNet, input 2x3x32x32
  resnet18                a torchvision model (weights=None), input 1x3x224x224
  timm:vit_tiny_patch16_224, or a timm name torchvision does not know (weights not downloaded)
  path/to/file.py:factory factory() returns a module or (module, example_inputs); a dict of
                          example inputs is passed as keywords. This RUNS the file's code (it is
                          imported): only use files you trust
  hf:PATH                 a Hugging Face checkpoint directory (or a config.json alone: built on the
                          meta device, weight-free criteria only, nothing certified); --out DIR writes
                          the model pruned in place as a checkpoint and prints its per-layer widths;
                          --stream prunes the safetensors shards tensor by tensor and block by block;
                          without --stream or --in-memory the path is chosen from an estimate of each
                          path's peak memory (printed): in memory only where the model is small enough
                          for the float64 checks and fits in free memory, else streamed. --out must be a
                          new or empty directory, never the input; it appears only once complete

exit codes:
{codes}

checks: the pruned model carries a certificate (the permutation oracle on the analysis it was pruned
with, on a float64 copy, or in float32 when that copy does not fit in memory), and both oracles run
again on a fresh float64 analysis: about 5 extra forward passes and 2-3x the model's memory; on large
models (>100M params or big inputs) that can take minutes; --no-verify skips both.
"""


def _parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {k:<3} {v}" for k, v in EXIT_CODES.items())
    p = argparse.ArgumentParser(prog="fxprune", description=__doc__.split("\n\n")[1].replace("\n", " "),
                                epilog=_EPILOG.format(codes=codes), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None, metavar="MODEL", help="what to prune (default: DemoNet)")
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224 (default: the model's)")
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--ratio", type=float, default=None,
                        help="fraction of every group to remove, in [0, 1) (default 0.5)")
    amount.add_argument("--target-macs", type=float, metavar="X",
                        help="reach X MACs (X <= 1: fraction of the original), found by bisection")
    amount.add_argument("--target-params", type=float, metavar="X",
                        help="reach X parameters (X <= 1: fraction of the original)")
    p.add_argument("--depth-ratio", type=_depth_arg, default=None, metavar="X",
                   help="also remove whole residual blocks: a fraction in [0, 1) of the removable blocks, or a "
                        "count (an integer >= 1); combine with --ratio 0 for depth alone")
    p.add_argument("--block-importance", default="angular", metavar="NAME",
                   help="how blocks are ranked: angular (default; on --calib batches, else the example input), "
                        "cosine, loss (needs --calib-batches), last, random")
    amount.add_argument("--target-latency", metavar="X",
                        help="reach latency X on --runtime (default eager): a fraction of the dense latency "
                             "(0.5) or a time (12ms); measured, cached latency table + knapsack + timing")
    p.add_argument("--runtime", choices=["eager", "inductor", "onnxruntime"], default=None,
                   help="deploy runtime: widths come from its measured fast widths and the report times dense "
                        "vs pruned on it (with --threads, default all); onnxruntime needs fxprune[onnx]")
    p.add_argument("--onnx", metavar="FILE", help="export the pruned model to ONNX here (torch.onnx.export), "
                   "outputs checked against PyTorch with ONNX Runtime when installed")
    p.add_argument("--tolerance", type=float, default=0.01,
                   help="relative tolerance of --target-macs/--target-params (default 0.01)")
    p.add_argument("--importance", default=None,
                   help="criterion: l1, l2, bn, fpgm, random, ... (fxprune.importance_names()); "
                        "gradient criteria (taylor, hessian) need --calib-batches (default l2; random "
                        "for a model without weights)")
    p.add_argument("--calib-batches", type=int, default=0, metavar="N",
                   help="for gradient criteria: N random batches labelled by the original model's own argmax")
    p.add_argument("--calib", type=int, default=0, metavar="N",
                   help="N random calibration batches shaped like the example input (Gaussian; random token ids "
                        "for integer inputs) for wanda/fluctuation/obs and --repair")
    p.add_argument("--repair", choices=["bias", "lstsq"], default=None,
                   help="refit every layer that reads removed channels on the calibration batches "
                        "(bias: mean compensation; lstsq: damped least squares); needs --calib N")
    p.add_argument("--sequential", action="store_true",
                   help="with --repair: refit layer after layer on the inputs the pruned model feeds them")
    p.add_argument("--scope", choices=["local", "global"], default="local",
                   help="local: every group loses the ratio; global: one ranking of all groups")
    p.add_argument("--ignore", nargs="+", default=[], metavar="NAME",
                   help="module/parameter names (globs allowed) whose groups are never pruned")
    p.add_argument("--round-to", type=int, default=1, metavar="N", help="kept counts rounded up to a multiple of N")
    p.add_argument("--max-ratio", type=float, default=1.0, help="most any one group loses (default 1.0)")
    p.add_argument("--iterative-steps", type=int, default=1, metavar="N", help="prune in N steps (default 1)")
    p.add_argument("--leaf", nargs="+", default=[], metavar="NAME",
                   help="submodules not to trace into (their channels are pinned)")
    p.add_argument("--fold", action="store_true",
                   help="capture each distinct repeated block (ModuleList/Sequential layers) once: deep models")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialization and inputs")
    p.add_argument("--save", metavar="PATH", help="write the pruned model here with fxprune.save (a .pt2 "
                                                  "ExportedProgram; load it with fxprune.load(PATH))")
    p.add_argument("--out", metavar="DIR", help="hf:PATH: write the pruned Hugging Face checkpoint here (stock "
                   "config where one describes the result, else per-layer widths that fxprune.hf.from_pretrained "
                   "loads); in memory the model is pruned in place, loaded back and compared; with --stream "
                   "(or a checkpoint larger than memory) tensor by tensor into new safetensors shards")
    p.add_argument("--uniform", action="store_true", help="with --out: one width per class of layers, so that "
                   "plain transformers loads the checkpoint")
    p.add_argument("--plot", metavar="FILE", help="write a PNG of per-layer widths before and after (matplotlib)")
    p.add_argument("--stream", action="store_true",
                   help="hf:PATH: prune tensor by tensor and block by block without loading the model (the default "
                        "when the checkpoint does not fit in memory)")
    p.add_argument("--in-memory", action="store_true",
                   help="hf:PATH: load and prune in place even where the default would stream (a model too large "
                        "for float64 checks gets a float32 certificate); exit 7 when the estimate exceeds free "
                        "memory")
    p.add_argument("--no-verify", action="store_true", help="skip the certificate and the float64 oracles")
    p.add_argument("--latency-runs", type=int, default=20, metavar="N",
                   help="timed CPU forward passes before/after (median; 0 skips; default 20)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch intra-op threads for the whole run (default: torch's default; 1 is steadier "
                        "for latency on a busy machine)")
    p.add_argument("--groups", action="store_true", help="also print every group's members and layouts")
    p.add_argument("--no-tables", action="store_true", help="skip the per-group and per-layer tables")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, print only the summary line")
    p.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    p.add_argument("--profile", action="store_true", help="print the wall time of capture, analysis and pruning by "
                   "phase (checked trace, scoring, selection, rewrite, certificate, ...)")
    return p


class _Fail(Exception):
    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code = code


def _exit_for():
    """(exception class, exit code), first match wins: which failure is which."""
    from ..errors import CaptureError, ExampleInputError, MetaDeviceError, OracleMismatchError, SaveError
    from ..speed.onnx import OnnxParityError
    from .zoo import MissingPackageError, SpecError
    return [(OracleMismatchError, EXIT_MISMATCH), (MissingPackageError, EXIT_MISSING), (SpecError, EXIT_USAGE),
            (CaptureError, EXIT_CAPTURE), (ExampleInputError, EXIT_MODEL), (MetaDeviceError, EXIT_MODEL),
            (SaveError, EXIT_OUTPUT), (OnnxParityError, EXIT_OUTPUT), (OSError, EXIT_OUTPUT), (ValueError, EXIT_USAGE),
            (KeyError, EXIT_USAGE), (MemoryError, EXIT_MEMORY)]


def _exit_code(e: BaseException) -> int:
    if isinstance(e, _Fail):
        return e.code
    return next((code for cls, code in _exit_for() if isinstance(e, cls)), EXIT_INTERNAL)


class _Progress:
    def __init__(self, quiet: bool):
        self.quiet, self.t0 = quiet, time.perf_counter()
        self.bars = not quiet and sys.stderr.isatty()  # tqdm bars only on a terminal

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# -- step 0: options ------------------------------------------------------------------------------

def _depth_arg(text: str):
    """``--depth-ratio``: ``0.25`` is a fraction, ``3`` a count."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction or a block count, got {text!r}") from None
    return int(value) if value >= 1 and value == int(value) else value


def _config(args):
    from ..policy.pruner import PruneConfig
    if args.fold and args.iterative_steps > 1:
        raise _Fail(EXIT_USAGE, "--fold analyses the model once: use it with --iterative-steps 1")
    try:
        return PruneConfig(ratio=0.5 if args.ratio is None else args.ratio, importance=args.importance or "l2",
                           scope=args.scope, ignore=tuple(args.ignore), round_to=args.round_to,
                           max_ratio=args.max_ratio, target_macs=args.target_macs, target_params=args.target_params,
                           tolerance=args.tolerance,
                           iterative_steps=args.iterative_steps, leaf_modules=tuple(args.leaf), repair=args.repair,
                           uniform=args.uniform, depth_ratio=args.depth_ratio,
                           block_importance=args.block_importance, sequential=args.sequential,
                           **_latency_options(args))
    except (ValueError, TypeError, KeyError) as e:
        raise _Fail(EXIT_USAGE, str(e).strip("'\""))


def _latency_options(args) -> dict:
    if args.target_latency is None and args.runtime is None:
        return {}
    target = args.target_latency
    try:
        target = float(target)
    except (TypeError, ValueError):
        pass
    return {"target_latency": target, "runtime": args.runtime or "eager", "threads": args.threads}


def _check_options(args, cfg) -> None:
    from ..calib.pipeline import needs_calibration
    from ..policy.importance import get_importance
    crit = get_importance(cfg.importance)
    if needs_calibration(crit, args.repair) and not crit.needs_data and args.calib <= 0:
        what = f"--repair {args.repair}" if args.repair else f"importance {args.importance!r}"
        raise _Fail(EXIT_USAGE, f"{what} reads activations: pass --calib N (N random input batches) or use "
                                "the Python API with your own data")
    if crit.needs_data and args.calib_batches <= 0:
        raise _Fail(EXIT_USAGE, f"importance {args.importance!r} needs gradients: pass --calib-batches N "
                                "(random inputs labelled by the model itself) or use the Python API with data")
    if cfg.depth_ratio is not None and cfg.block_importance == "loss" and args.calib_batches <= 0:
        raise _Fail(EXIT_USAGE, "--block-importance loss needs --calib-batches N (inputs labelled by the model)")
    if cfg.depth_ratio is not None and args.out:
        raise _Fail(EXIT_USAGE, "--depth-ratio with --out is not supported yet: use --save (an fx graph)")
    if args.latency_runs < 0:
        raise _Fail(EXIT_USAGE, "--latency-runs must be >= 0")
    if args.threads is not None and args.threads < 1:
        raise _Fail(EXIT_USAGE, "--threads must be >= 1")
    if args.uniform and not args.out:
        raise _Fail(EXIT_USAGE, "--uniform chooses widths plain transformers loads: use it with --out DIR")
    if cfg.runtime == "onnxruntime" or args.onnx:
        import importlib.util
        if importlib.util.find_spec("onnx") is None or (cfg.runtime and importlib.util.find_spec("onnxruntime") is None):
            raise _Fail(EXIT_MISSING, "--runtime onnxruntime / --onnx need the onnx extra: pip install 'fxprune[onnx]'")
    for flag, path in (("--save", args.save), ("--plot", args.plot), ("--out", args.out),
                       ("--onnx", args.onnx)):  # fail now
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not os.path.isdir(folder):
            raise _Fail(EXIT_OUTPUT, f"{flag} {path}: the directory {folder} does not exist; create it first")
        if folder and not os.access(folder, os.W_OK):
            raise _Fail(EXIT_OUTPUT, f"{flag} {path}: the directory {folder} is not writable")
    if args.out and (args.model or "").startswith("hf:"):  # both hf paths: Note [Output directories]
        from ..hf.outdir import check_out
        check_out(args.model[3:], args.out)
    if args.plot:
        import importlib.util
        if importlib.util.find_spec("matplotlib") is None:
            raise _Fail(EXIT_MISSING, "--plot needs matplotlib: pip install 'fxprune[plot]'")


# -- step 1: load -----------------------------------------------------------------------------------

@dataclass
class _Loaded:
    model: torch.nn.Module
    args: tuple
    kwargs: dict
    label: str
    meta: bool = False


def _load(args, say) -> _Loaded:
    from .zoo import load_model, parse_shape
    shape = parse_shape(args.input_shape) if args.input_shape else None
    say(f"building {args.model or 'DemoNet'}")
    loaded = load_model(args.model, shape, args.seed)
    return _Loaded(loaded.model, tuple(loaded.inputs), dict(loaded.kwargs or {}), loaded.label, loaded.meta)


def _describe(m: _Loaded) -> str:
    items = [*m.args, *m.kwargs.values()]
    return ", ".join("x".join(map(str, x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__
                     for x in items) or "no inputs"


def _calibration(m: _Loaded, n: int, say):
    """N random batches shaped like the example input, labelled by the model's own argmax."""
    from ..capture.modes import eval_copy
    model = eval_copy(m.model)
    if m.kwargs or len(m.args) != 1 or not m.args[0].is_floating_point():
        raise _Fail(EXIT_USAGE, "--calib-batches makes random batches like one float input; this model takes "
                                "other inputs: use the Python API with your own data")
    with torch.no_grad():
        out = model(*m.args)
    if not (isinstance(out, torch.Tensor) and out.dim() == 2):
        raise _Fail(EXIT_USAGE, "--calib-batches makes labels from a classifier's (batch, classes) output; "
                                "this model's output is not one: use the Python API with your own data")
    gen, x0 = torch.Generator().manual_seed(1234), m.args[0]
    batches = []
    for _ in range(n):
        x = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
        with torch.no_grad():
            batches.append((x, model(x).argmax(1)))

    class _Counted:
        def __iter__(self):
            for i, b in enumerate(batches, 1):
                say(f"importance: batch {i}/{n}")
                yield b
    return _Counted()


# -- step 2: analyse --------------------------------------------------------------------------------

def _analyse(args, m: _Loaded, cfg, say):
    from ..api import analyze
    say(f"capturing and analysing {m.label} (input {_describe(m)})")
    t = time.perf_counter()
    # torch.export prints the whole graph to stderr when it gives up; the CaptureError says it better
    with contextlib.redirect_stderr(io.StringIO()):
        dg = analyze(m.model, m.args, m.kwargs, leaf_modules=cfg.leaf_modules, fold=args.fold)
    say(f"{len(dg.groups)} groups ({time.perf_counter() - t:.2f} s)")
    return dg, time.perf_counter() - t


# -- step 3: prune ----------------------------------------------------------------------------------

@dataclass
class _Pruned:
    model: torch.nn.Module
    keep: Optional[dict]
    seconds: float
    certificate: object
    inplace: bool = False  # --out: the loaded model itself was pruned; m.model is its meta-device twin as it was
    blocks: tuple = ()  # names of the whole blocks removed (--depth-ratio)


def _prune(args, m: _Loaded, dg, cfg, say) -> _Pruned:
    from fxprune.passes import keys

    from ..calib import random_batches
    from ..policy.pruner import prune, prune_step
    from ..hf.output import prunes_in_place
    from ..policy.counting import count_params
    from ..policy.importance import get_importance
    from .report import shape_twin
    crit = get_importance(cfg.importance)
    data = _calibration(m, args.calib_batches, say) if crit.needs_data else _plain_calibration(args, crit, m)
    check = not args.no_verify
    t = time.perf_counter()
    if args.out and prunes_in_place(m.model, m.meta, say):  # the report's "before" was measured already
        model, m.model = m.model, shape_twin(m.model)  # shapes as they were (meta: no tensor memory)
        step = prune_step(dg, cfg, data=data, check=check, progress=say.bars, inplace=True) \
            if cfg.iterative_steps == 1 else None
        model = step.model if step else prune(model, m.args, cfg, example_kwargs=m.kwargs, data=data, check=check,
                                               progress=say.bars, inplace=True)
        return _Pruned(model, step.keep if step else None, time.perf_counter() - t,
                       getattr(model, keys.CERTIFICATE_ATTR, None), inplace=True)
    if cfg.iterative_steps == 1:
        what = (f"searching the ratio that reaches {'MACs' if cfg.target_macs else 'params'} "
                f"{cfg.target_macs or cfg.target_params:g}" if cfg.target_macs or cfg.target_params else "selecting")
        say(f"scoring {len(dg.groups)} groups ({args.importance}), {what}, rewriting" + (", certifying" if check else ""))
        if cfg.depth_ratio is not None and cfg.block_importance == "loss" and data is None:
            data = _calibration(m, args.calib_batches, say)
        elif cfg.depth_ratio is not None and data is None and args.calib > 0:
            data = random_batches(m.args, args.calib, args.seed + 1)
        step = prune_step(dg, cfg, data=data, check=check, progress=say.bars)
        return _Pruned(step.model, step.keep, time.perf_counter() - t, step.certificate, blocks=step.blocks)
    n, params0 = cfg.iterative_steps, count_params(m.model)
    say(f"pruning step 1/{n}")

    def step(k, pruned):
        if k < n:
            say(f"pruning step {k + 1}/{n} ({count_params(pruned) / params0:.1%} params left)")
    pruned = prune(m.model, m.args, cfg, example_kwargs=m.kwargs, data=data, callback=step, check=check,
                   progress=say.bars)
    return _Pruned(pruned, None, time.perf_counter() - t, getattr(pruned, keys.CERTIFICATE_ATTR, None))


def _plain_calibration(args, crit, m: _Loaded):
    """``--calib N`` random model inputs, where a calibrated criterion or ``--repair`` needs them
    (with a gradient criterion, its labelled batches calibrate the repair too)."""
    from ..calib import random_batches
    from ..calib.pipeline import needs_calibration
    if not needs_calibration(crit, args.repair):
        return None
    return random_batches(m.args, args.calib, args.seed + 1)


# -- step 4: report ---------------------------------------------------------------------------------

@dataclass
class _Before:
    """The original, measured before pruning (Note [Count before the rewrite])."""
    count: object  # fxprune.Count
    shapes: dict  # the analysed graph's parameter shapes
    outputs: list  # output shapes
    latency: Optional[float] = None
    report: object = None  # fxprune.verify's VerifyReport, or None with --no-verify


# Note [Count before the rewrite]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# With --out the loaded model is pruned in place, and the captured graph shares its
# tensors while keeping the old shape literals (a LayerNorm's normalized_shape, a
# view's head count): running that graph on the rewritten model fails or counts a
# wrong model. So everything about the original (counts per layer and per group,
# output shapes, latency, the fresh-analysis oracles) is measured before pruning,
# and everything about the result from the pruned model as it now is.

def _measure_before(args, m: _Loaded, dg, cfg, say) -> _Before:
    from ..policy.counting import count, latency, param_shapes
    from .report import output_shapes
    kw = m.kwargs
    before = _Before(count(m.model, m.args, kw), param_shapes(dg), output_shapes(m.model, m.args, kw))
    est = getattr(args, "memory", None)
    if not args.no_verify and est is not None and est.check_dtype is torch.float32 and cfg.iterative_steps == 1:
        _certify_float32(dg, say)
    if not args.no_verify and (est is None or est.oracles):
        say("verifying: permutation and removal oracles on a fresh float64 analysis")
        if cfg.depth_ratio is None:
            before.report = _verify(args, m, cfg)
        # else: the oracles remove the blocks pruning chooses, so they run after it (_report); depth pruning is
        # never in place (--depth-ratio with --out is refused), so m.model is still the original then
    elif not args.no_verify:
        say("fresh-analysis float64 oracles skipped: four float64 copies of this model do not fit the estimate "
            "(the certificate checks the pruning)")
    if args.latency_runs and args.out and cfg.runtime is None:  # --out may prune in place: time the original now
        say(f"timing CPU latency ({args.latency_runs} runs, {torch.get_num_threads()} threads)")
        before.latency = latency(m.model, m.args, kw, repeats=args.latency_runs)["median_ms"]
    return before


def _verify(args, m: _Loaded, cfg, blocks: tuple = ()):
    from ..verify import verify
    return verify(m.model, m.args, m.kwargs, leaf_modules=cfg.leaf_modules, raise_on_mismatch=False, fold=args.fold,
                  depth=blocks or None)


def _certify_float32(dg, say) -> None:
    """The certificate of ``dg`` in float32 (Note [Choosing the path]): a budget under which a float64 copy does
    not fit and a float32 one does; ``prune_step`` uses this certificate (``fxprune.api.certificate``)."""
    from ..checks.certificate import certify
    numel = sum(t.numel() for t in (*dg.gm.parameters(), *dg.gm.buffers()) if t.is_floating_point())
    say("certifying in float32 (a float64 copy of this model is over the estimate's limit)")
    dg._certificate = certify(dg, max_bytes=2 * 3 * 4 * numel)


def _report(args, m: _Loaded, dg, res: _Pruned, before: _Before, t_analyze: float, cfg, say) -> tuple:
    from ..policy.counting import count, latency
    from .report import output_shapes, print_tables, si
    kw = m.kwargs
    if cfg.depth_ratio is not None and not args.no_verify and not res.inplace:
        before.report = _verify(args, m, cfg, res.blocks)
    after = count(res.model, m.args, kw)
    counts = (before.count.params, before.count.macs, after.params, after.macs)
    lat = None
    speed = getattr(res.model, keys.LATENCY_ATTR, None)
    if speed is not None:  # timed already, dense and pruned interleaved on the runtime
        lat = (speed.dense_s * 1e3, speed.pruned_s * 1e3)
        say(speed.summary())
    elif args.latency_runs and not res.inplace:
        say(f"timing CPU latency (original and pruned interleaved, {torch.get_num_threads()} threads)")
        lat = _interleaved_ms(m, res, args)
    elif args.latency_runs:  # the original is gone (pruned in place): its time was taken before
        lat = (before.latency, latency(res.model, m.args, kw, repeats=args.latency_runs)["median_ms"])
    shapes = (before.outputs, output_shapes(res.model, m.args, kw))
    if not args.quiet:
        print_tables(args, dg, res, t_analyze, cfg, (before, after), shapes, lat, before.report)
    _write_outputs(args, m, res, say, counts)
    report = before.report
    passed = report is None or (report.passed and shapes[0] == shapes[1])
    status = ("not run (--no-verify)" if args.no_verify else "not run (model too large: certificate only)") \
        if report is None else "exact" if passed else "MISMATCH"
    p0, macs0, p1, macs1 = counts
    lat_s = f", latency {lat[0]:.2f} -> {lat[1]:.2f} ms" if lat else ""
    if lat and macs1:
        where = f" on {speed.runtime}" if speed is not None else ""
        lat_s += f"{where} (efficiency {(lat[0] / lat[1]) / (macs0 / macs1):.2f})"
    depth = f", {len(res.blocks)} blocks removed" if res.blocks else ""
    summary = (f"{m.label}: {len(dg.groups)} groups{depth}, params {p0} -> {p1} ({p1 / p0:.1%}), "
               f"MACs {si(macs0)} -> {si(macs1)}{lat_s}, oracles {status}")
    return summary, (EXIT_OK if passed else EXIT_MISMATCH)


def _interleaved_ms(m: _Loaded, res: _Pruned, args) -> tuple:
    """Dense and pruned latency in ms, timed in alternation (Note [Interleaved timing] in
    fxprune/speed/timing.py): timing one after the other on a shared machine once showed the demo's pruned
    model at 154% of dense, where interleaved rounds give 88-93%."""
    from ..capture.modes import eval_copy
    from ..speed.timing import interleaved
    dense, pruned = eval_copy(m.model), eval_copy(res.model)
    calls = [lambda: dense(*m.args, **m.kwargs), lambda: pruned(*m.args, **m.kwargs)]
    with torch.no_grad():
        d, p = interleaved(calls, rounds=max(3, args.latency_runs // 4))
    return d * 1e3, p * 1e3


def _write_outputs(args, m: _Loaded, res: _Pruned, say, counts=None) -> None:
    from ..io import save
    if args.out:
        from ..hf.output import write_outputs
        write_outputs(args, m.model, res.model, res.inplace, m.kwargs, say)
    if args.save:
        say(f"saving to {args.save}")
        say(f"saved as {save(res.model, args.save, m.args, m.kwargs)}")
    if args.onnx:
        _write_onnx(args.onnx, res.model, m, say)
    speed = getattr(res.model, keys.LATENCY_ATTR, None)
    if args.plot and speed is not None and speed.cache and os.path.exists(speed.cache):
        from .latency_plot import plot_latency
        point = (counts[3] / counts[1], speed.ratio) if counts and counts[1] else None
        n = plot_latency(speed.cache, args.plot, point, title=f"{m.label}: latency vs MACs on {speed.runtime}",
                         kinds=speed.kinds)
        say(f"plotted the latency/MACs curves of {n} layer kinds to {args.plot}")
    elif args.plot:
        from .plot import plot_widths
        n = plot_widths(m.model, res.model, args.plot, title=f"{m.label}: per-layer widths")
        say(f"plotted {n} layers to {args.plot}")


def _write_onnx(path: str, model, m: _Loaded, say) -> None:
    import importlib.util
    from ..speed.onnx import check_parity, export_onnx, ort_session
    if m.kwargs:
        raise _Fail(EXIT_USAGE, "--onnx exports positional inputs only; this model takes keyword inputs")
    data = export_onnx(model, m.args, path)
    if importlib.util.find_spec("onnxruntime") is not None:
        err = check_parity(model.eval(), ort_session(data), m.args)
        say(f"exported to {path}; ONNX Runtime matches PyTorch (relative error {err:.1e})")
    else:
        say(f"exported to {path} (onnxruntime not installed: outputs not checked)")


def _run(args, say) -> tuple:
    cfg = _config(args)
    _check_options(args, cfg)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from ..hf.stream import run_cli
    if _streams(args, say):  # Note [Choosing the path] in fxprune/hf/memory.py; Note [Streamed pruning]
        return run_cli(args, cfg, say)
    m = _load(args, say)
    if m.meta:  # no values: nothing to certify, verify or time
        import dataclasses
        say("no weights (meta device): nothing certified, verified or timed"
            + ("; importance 'random', the only weight-free criterion" if args.importance is None else ""))
        args.no_verify, args.latency_runs = True, 0
        cfg = dataclasses.replace(cfg, importance=args.importance or "random")
    args.importance = args.importance or cfg.importance  # what the report names
    from ..profile import profiling
    with profiling(args.profile) as prof:
        dg, t_analyze = _analyse(args, m, cfg, say)
        before = _measure_before(args, m, dg, cfg, say)
        res = _prune(args, m, dg, cfg, say)
    if prof is not None:
        print(prof, flush=True)
    return _report(args, m, dg, res, before, t_analyze, cfg, say)


def _streams(args, say) -> bool:
    """Whether ``hf:PATH`` is streamed; the estimate of the path taken is printed and kept on ``args.memory``."""
    from ..hf.stream import wants_stream
    args.memory = None
    spec = args.model or ""
    if args.in_memory and args.stream:
        raise _Fail(EXIT_USAGE, "--in-memory and --stream choose opposite paths: pass one")
    if args.in_memory and not spec.startswith("hf:"):
        raise _Fail(EXIT_USAGE, "--in-memory chooses how an hf:PATH checkpoint is pruned: use it with MODEL hf:PATH")
    path = spec[3:]
    if not spec.startswith("hf:") or not os.path.isdir(path) or not _has_safetensors(path):
        return wants_stream(args)
    from ..hf.memory import choose_path
    choice = choose_path(path, stream=args.stream, in_memory=args.in_memory, check=not args.no_verify)
    say(f"memory: {choice}")
    args.memory = choice.estimate
    if choice.stream and not args.out:
        raise _Fail(EXIT_USAGE, f"{choice.why}; a streamed run writes a new checkpoint: pass --out DIR (or "
                                "--in-memory to prune a copy in memory)")
    return choice.stream


def _has_safetensors(path: str) -> bool:
    return any(f.endswith(".safetensors") for f in os.listdir(path))


@contextlib.contextmanager
def _quiet_logs():
    """torch.export prints whole graphs as warnings when it gives up on a model; the CLI reports that itself."""
    noisy = [logging.getLogger(n) for n in ("torch.fx.experimental.symbolic_shapes", "torch._dynamo", "torch.export",
                                          "torch._export")]
    levels = [lg.level for lg in noisy]
    try:
        for lg in noisy:
            lg.setLevel(logging.ERROR)
        yield
    finally:
        for lg, level in zip(noisy, levels):
            lg.setLevel(level)


def _interrupted(e: BaseException) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def main(argv=None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); returns the exit code (see ``EXIT_CODES``)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or an argparse usage error (2)
        return int(e.code or 0)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    say = _Progress(args.quiet)
    try:
        with _quiet_logs(), warnings.catch_warnings():
            if args.quiet:
                warnings.simplefilter("ignore")
            summary, code = _run(args, say)
    except KeyboardInterrupt:
        print("fxprune: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if _interrupted(e):  # Ctrl-C inside an import or a library that wraps it (transformers' lazy imports)
            print("fxprune: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        code = _exit_code(e)
        msg = (str(e).strip("'\"") if isinstance(e, KeyError) else str(e)) or type(e).__name__
        if code == EXIT_INTERNAL:
            msg = f"internal error: {type(e).__name__}: {msg}"
        if args.debug:
            traceback.print_exc(file=sys.stderr)
        hint = "" if args.debug else "\n(run with --debug for the traceback)" if code == EXIT_INTERNAL else ""
        print(f"fxprune: error (exit {code}): {msg}{hint}", file=sys.stderr)
        if args.quiet:
            print(f"fxprune: failed (exit {code}): {msg.splitlines()[0]}")
        return code
    print(summary)
    return code


if __name__ == "__main__":
    sys.exit(main())
