"""The config of a pruned Hugging Face model, derived from its tensor shapes alone.

Note [Config from shapes]
~~~~~~~~~~~~~~~~~~~~~~~~~
No table of per-family attribute names (``n_head``, ``ffn_dim``, ``d_kv``, ...):
the model class tells. Building it on the meta device costs no memory and a few
milliseconds, so

* **probe**: for every numeric config attribute (nested sub-configs included,
  ``text_config.intermediate_size``), build the class with that one attribute
  changed and record which parameter dims move, and by how much (cached per
  class and config);
* **solve**: from the original values, repeatedly take the single attribute
  change that makes the most dims agree with the pruned shapes. A candidate
  value comes from the probe's slope at the current point (a dim that is
  ``heads * head_dim`` or ``(heads + 2 * kv) * head_dim`` is affine in each
  attribute), or, for an unset attribute (GPT-2's ``n_inner``), from the
  target sizes themselves;
* **verify**: the config is written to a dict and read back (as
  ``from_pretrained`` would), rebuilt on meta, and every shape compared.

When one config reproduces every shape, it is a stock config (``uniform``).
Otherwise (widths that differ per layer, a head size no attribute describes,
a bias a repair added) an attribute keeps a solved value only where every dim
it governs agrees with the checkpoint, and the original value elsewhere:
the loader (``fxprune.hf.from_pretrained``) builds from that config and
resizes the tensors the config does not describe, listed in the
``fxprune`` section. Keeping the original values, not the widest, preserves
what a forward derives from them at build time (a head size of
``hidden_size // num_heads``). An attribute that governs a module holding
an added tensor keeps its original value, so that a stock class loading the
checkpoint meets a size mismatch instead of dropping the tensor.
"""
from __future__ import annotations

import copy
import json
import logging
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch

__all__ = ["PrunedConfig", "pruned_config", "config_shapes", "model_class", "SECTION", "PREFIX", "ORIGINAL", "FORMAT_VERSION"]

SECTION, PREFIX, FORMAT_VERSION = "fxprune", "fxprune_", 1
# not "model_type": transformers reads a nested dict whose model_type matches the class as the whole config
ORIGINAL = "original_model_type"
_SKIP = {"num_hidden_layers", "vocab_size", "max_position_embeddings", "num_labels", "chunk_size_feed_forward"}
_UNSET_PROBE = 7  # a value no tiny dim has by accident, for attributes that are None
# Names a forward reads with a default when the config lacks them (``getattr(config, "head_dim",
# hidden_size // num_attention_heads)``, Phi-3): set to the value they stand for, they free the others.
_OPTIONAL = ("head_dim",)


@dataclass(frozen=True)
class PrunedConfig:
    """What :func:`pruned_config` derived.

    Attributes:
        config: the config to save (a new object). Not uniform: it carries ``config.fxprune``, the
            section :func:`fxprune.hf.save_pretrained` writes (with ``model_type = "fxprune_<type>"``).
        uniform: a stock config describes every tensor: plain ``AutoModel*.from_pretrained`` loads it.
        changed: ``{attribute path: (old, new)}``, e.g. ``{"intermediate_size": (48, 32)}``.
        per_layer: ``{tensor name: shape}`` for the tensors the config does not describe (per-layer
            widths, added biases); empty when uniform.
    """

    config: Any
    uniform: bool
    changed: dict = field(default_factory=dict)
    per_layer: dict = field(default_factory=dict)


def model_class(config, model_cls=None) -> type:
    """The model class to build ``config`` with: ``model_cls``, else its ``architectures``, else AutoModel's."""
    if model_cls is not None:
        return model_cls
    import transformers

    names = list(getattr(config, "architectures", None) or ())
    unknown = [n for n in names if not isinstance(getattr(transformers, str(n), None), type)]
    if unknown:  # never another class in its place: it would load a different model (no head, say)
        raise ValueError(f"config.json names the architecture {unknown[0]!r}, which transformers "
                         f"{transformers.__version__} does not have (custom code or a newer transformers); "
                         "fxprune builds only classes of the installed transformers: upgrade it, or load the "
                         "model yourself and use the Python API (model_cls=)")
    if names:
        return getattr(transformers, names[0])
    try:
        return transformers.MODEL_MAPPING[type(config)]
    except KeyError:
        raise ValueError(f"cannot tell which model class {type(config).__name__} builds: it names no known "
                         "architecture; pass model_cls=") from None


# -- building on meta ----------------------------------------------------------------------------------------

_CACHE: "OrderedDict[tuple, Optional[dict]]" = OrderedDict()


def _fingerprint(config) -> str:
    try:
        return config.to_json_string(use_diff=False)
    except Exception:  # a config with values JSON cannot hold
        return repr(sorted((k, repr(v)) for k, v in vars(config).items()))


def config_shapes(config, model_cls: type) -> dict:
    """``{state-dict name: shape}`` of ``model_cls(config)``, built on the meta device (cached)."""
    shapes = _build(config, model_cls)
    if shapes is None:
        model_cls(copy.deepcopy(config))  # raise the error itself
    return shapes


def _build(config, model_cls: type) -> Optional[dict]:
    key = (model_cls, _fingerprint(config))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    quiet = logging.getLogger("transformers")
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = model_cls(copy.deepcopy(config))
        shapes = {**{k: tuple(v.shape) for k, v in model.named_buffers()},  # non-persistent ones too
                  **{k: tuple(v.shape) for k, v in model.state_dict().items()}}
    except Exception:  # this value is not a valid config for the class
        shapes = None
    finally:
        quiet.setLevel(level)
    _CACHE[key] = shapes
    if len(_CACHE) > 512:
        _CACHE.popitem(last=False)
    return shapes


# -- attributes ----------------------------------------------------------------------------------------------

def _is_config(v) -> bool:
    return hasattr(v, "to_dict") and hasattr(v, "model_type") and hasattr(v, "to_json_string")


def _attributes(config, prefix: str = "") -> dict:
    """``{path: value}`` of the numeric (or unset) attributes of ``config`` and its sub-configs."""
    out = {}
    for k, v in vars(config).items():
        if k.startswith("_") or k in _SKIP or k.endswith(("_token_id", "_token_ids")):
            continue
        if _is_config(v):
            out.update(_attributes(v, f"{prefix}{k}."))
        elif v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            out[prefix + k] = v
    return out


def _get(config, path: str):
    for part in path.split("."):
        config = getattr(config, part)
    return config


def _with(config, changes: Mapping[str, Any]):
    out = copy.deepcopy(config)
    for path, value in changes.items():
        owner, _, leaf = path.rpartition(".")
        setattr(_get(out, owner) if owner else out, leaf, value)
    return out


def _with_or_none(config, changes: Mapping[str, Any]):
    """``_with``, or None where the config refuses a value (typed fields validate assignments)."""
    try:
        return _with(config, changes)
    except Exception:
        return None


# -- solving -------------------------------------------------------------------------------------------------

def _mismatch(built: dict, target: dict) -> set:
    """Dims ``(name, d)`` (or ``(name, None)`` for a rank change) where ``built`` differs from ``target``."""
    out = set()
    for k, t in target.items():
        b = built.get(k)
        if b is None:
            continue
        if len(b) != len(t):
            out.add((k, None))
        else:
            out.update((k, d) for d, (x, y) in enumerate(zip(b, t)) if x != y)
    return out


@dataclass
class _Probe:
    path: str
    before: Any
    after: Any
    dims: dict  # (name, d) -> (size before, size after)


class _Solver:
    def __init__(self, config, cls: type, target: dict, frozen=()):
        self.cls, self.target, self.base, self.frozen = cls, target, config, set(frozen)
        self.paths = _attributes(config)
        self.implicit_values: dict = {}

    def shapes(self, config) -> Optional[dict]:
        return _build(config, self.cls)

    def build(self, config) -> Optional[dict]:
        return None if config is None else _build(config, self.cls)

    def probe(self, config, shapes: dict, path: str) -> Optional[_Probe]:
        v = _get(config, path)
        after = _UNSET_PROBE if v is None else 2 * v if v else None
        if after is None:
            return None
        moved = self.build(_with_or_none(config, {path: after}))
        if moved is None or moved.keys() != shapes.keys():
            return None  # invalid, or it changes the structure (layers, experts as modules)
        dims = {(k, d): (a, b) for k in shapes for d, (a, b) in enumerate(zip(shapes[k], moved[k]))
                if len(shapes[k]) == len(moved[k]) and a != b}
        return _Probe(path, v, after, dims) if dims else None

    def candidates(self, pr: _Probe, wrong: set) -> set:
        out = set()
        for kd in wrong & pr.dims.keys():
            a, b = pr.dims[kd]
            t = self.target[kd[0]][kd[1]]
            if pr.before is None:
                out.add(t)
                continue
            slope = (b - a) / (pr.after - pr.before)
            v = pr.before + (t - a) / slope
            if abs(v - round(v)) < 1e-9 and round(v) >= 1:
                out.add(type(pr.before)(round(v)))
            elif v > 0:  # a ratio (Dinov2's mlp_ratio); an int field refuses it
                out.update({float(v), float(v) * (1 + 1e-12)})
        out.discard(pr.before)
        return out

    def implicit(self, shapes: dict) -> dict:
        """``{name: value}`` for each absent or unset ``_OPTIONAL`` attribute whose value, set, changes no shape
        (tried: a size of the model divided by an attribute's value)."""
        out = {}
        ints = {v for v in self.paths.values() if isinstance(v, int) and v > 1}
        sizes = sorted({n for s in shapes.values() for n in s})
        for name in _OPTIONAL:
            if getattr(self.base, name, None) is not None:
                continue
            moved = self.build(_with_or_none(self.base, {name: _UNSET_PROBE}))
            if moved is None or moved == shapes:
                continue  # the class does not read it
            for v in sorted({n // a for n in sizes for a in ints if n % a == 0 and n // a > 1}):
                if self.build(_with_or_none(self.base, {name: v})) == shapes:
                    out[name] = v
                    self.paths[name] = v
                    break
        return out

    def solve(self, rounds: int = 32) -> tuple:
        """Greedy: the one attribute change that breaks the fewest right dims and fixes the most wrong ones,
        until none helps. Breaking right dims last keeps ``head_dim`` from standing in for the head counts
        where the rotary table (a buffer of ``head_dim / 2``) says it did not change."""
        cur, shapes = self.base, self.shapes(self.base)
        changes = self.implicit(shapes) if _mismatch(shapes, self.target) else {}
        implicit = self.implicit_values = dict(changes)
        cur = _with(self.base, changes)
        wrong = _mismatch(shapes, self.target)
        relevant = {p: pr for p in self.paths if (pr := self.probe(cur, shapes, p)) is not None}
        for _ in range(rounds):
            if not wrong:
                break
            best = None
            for path, first in relevant.items():
                if path in self.frozen or not first.dims.keys() & wrong:
                    continue
                pr = self.probe(cur, shapes, path) if changes else first
                for v in self.candidates(pr, wrong) if pr else ():
                    trial = {**changes, path: v}
                    built = self.build(_with_or_none(self.base, trial))
                    if built is None or built.keys() != shapes.keys():
                        continue
                    w = _mismatch(built, self.target)
                    score = (len(w - wrong), len(w))  # dims broken, then dims still wrong
                    if len(w) < len(wrong) and (best is None or score < best[0]):
                        best = (score, trial, built, w)
            if best is None:
                break
            _, changes, shapes, wrong = best
            cur = _with(self.base, changes)
        for name, v in implicit.items():  # only where the solution needs it
            rest = {p: x for p, x in changes.items() if p != name}
            if changes.get(name) == v and self.build(_with_or_none(self.base, rest)) == shapes:
                changes = rest
        return changes, wrong

    def partial(self, changes: dict, protected: set) -> dict:
        """Keep a change only where every dim it governs agrees with the target and no dim is protected."""
        changes = dict(changes)
        while changes:
            cur = _with(self.base, changes)
            shapes = self.shapes(cur)
            wrong = _mismatch(shapes, self.target)
            bad = []
            for path in changes:
                if self.implicit_values.get(path) == changes[path]:
                    continue  # pins a derived value: changes no shape by itself
                pr = self.probe(cur, shapes, path)
                dims = set(pr.dims) if pr else set()
                if dims & wrong or any(k in protected for k, _ in dims):
                    bad.append(path)
            if not bad:
                break
            for path in bad:
                del changes[path]
        for name, v in self.implicit_values.items():  # only where a kept change needs it
            rest = {p: x for p, x in changes.items() if p != name}
            if changes.get(name) == v and self.build(_with_or_none(self.base, rest)) == \
                    self.build(_with_or_none(self.base, changes)):
                changes = rest
        return changes


def _owners(names) -> set:
    """Module paths of tensors (``a.b.bias`` -> ``a.b``) and their tensors' siblings' names."""
    return {n.rpartition(".")[0] for n in names}


def _round_trip(config):
    """The config as ``from_pretrained`` reads it back from config.json."""
    return type(config).from_dict(json.loads(config.to_json_string(use_diff=False)))


def pruned_config(config, shapes: Mapping[str, tuple], model_cls: Optional[type] = None, *,
                  frozen=()) -> PrunedConfig:
    """Derive the config of a model whose tensors have ``shapes`` (Note [Config from shapes]).

    Args:
        config: the original ``PretrainedConfig`` (not modified).
        shapes: ``{state-dict name: shape}`` of the pruned model: every tensor, or only the changed ones.
            A name the original does not have (a bias added by a repair) makes the result not uniform.
            Non-persistent buffers may be included (``named_buffers()``): a rotary table tells a pruned
            head count from a pruned head dim, which the weights alone cannot.
        model_cls: the model class (default: from ``config.architectures``).
        frozen: attribute paths that must keep their values (to look for another solution).

    Returns:
        A :class:`PrunedConfig`.

    Example::

        >>> import torch, transformers, fxprune.hf
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
        ...                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        >>> shapes = {f"model.layers.{i}.mlp.{p}.weight": s for i in range(2)
        ...           for p, s in (("gate_proj", (40, 32)), ("up_proj", (40, 32)), ("down_proj", (32, 40)))}
        >>> out = fxprune.hf.pruned_config(cfg, shapes, transformers.LlamaForCausalLM)
        >>> out.uniform, out.changed
        (True, {'intermediate_size': (48, 40)})
        >>> shapes["model.layers.1.mlp.up_proj.weight"] = (24, 32)
        >>> shapes["model.layers.1.mlp.gate_proj.weight"], shapes["model.layers.1.mlp.down_proj.weight"] = (24, 32), (32, 24)
        >>> out = fxprune.hf.pruned_config(cfg, shapes, transformers.LlamaForCausalLM)
        >>> out.uniform, out.changed, sorted(out.per_layer)[:2]
        (False, {}, ['model.layers.0.mlp.down_proj.weight', 'model.layers.0.mlp.gate_proj.weight'])
    """
    cls = model_class(config, model_cls)
    base = config_shapes(config, cls)
    target = {k: tuple(int(n) for n in s) for k, s in shapes.items()}
    extra = sorted(k for k in target if k not in base)
    solver = _Solver(config, cls, {k: s for k, s in target.items() if k in base}, frozen)
    changes, wrong = solver.solve()
    if not wrong and not extra:
        out = _read_back(_with(config, changes), cls)
        if out is not None and not _mismatch(config_shapes(out, cls), solver.target):
            return PrunedConfig(out, True, _diff(config, changes))
    changes = solver.partial(changes, _owners(extra))
    while changes and _read_back(_with(config, changes), cls) is None:  # a validator refuses the combination
        changes.popitem()
    out = _with(config, changes)
    built = config_shapes(_round_trip(out), cls)
    described = {k for k in solver.target if k in built and tuple(built[k]) == solver.target[k]}
    per_layer = {k: list(target[k]) for k in sorted(target) if k not in described}
    setattr(out, SECTION, {"version": FORMAT_VERSION, ORIGINAL: config.model_type, "per_layer": per_layer})
    return PrunedConfig(out, False, _diff(config, changes), per_layer)


def _read_back(config, cls: type):
    """``config`` as read back from JSON and built on meta, or None where its validators or the class refuse it
    (LLaMA's config refuses a hidden size that is no multiple of the head count)."""
    config.__dict__.pop(SECTION, None)  # from an earlier per-layer step
    try:
        out = _round_trip(config)
    except Exception:
        return None
    return out if _build(out, cls) is not None else None


def _diff(config, changes: dict) -> dict:
    def old(p):
        try:
            return _get(config, p)
        except AttributeError:
            return None
    return {p: (old(p), v) for p, v in changes.items()}
