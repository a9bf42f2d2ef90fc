"""Resolve a model spec given on the command line into ``(model, example_inputs, label)``.

Specs:

* empty / ``demo``: the built-in :class:`fxprune.tools.demo.DemoNet` (no optional dependency);
* ``resnet18``, ``torchvision:resnet18``: a torchvision builder, ``weights=None``;
* ``timm:vit_tiny_patch16_224``, or a plain name torchvision does not know: ``timm.create_model``;
* ``path/to/file.py:factory``: ``factory()`` returns a module or ``(module, example_inputs)``; a dict of
  example inputs is passed as keywords;
* ``hf:PATH``: a Hugging Face checkpoint directory, or a config.json alone (built on the meta device),
  with example keyword inputs made from its config (``fxprune/hf/spec.py``).

Every failure raises :class:`SpecError` with a message naming the problem (the CLI
turns it into exit code 2); nothing here downloads weights.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from fxprune.passes import keys

from ..compat import import_torchvision  # noqa: F401  (re-exported: the torchvision shim lives in compat)

__all__ = ["SpecError", "MissingPackageError", "Loaded", "load_model", "parse_shape", "torchvision_kwargs",
           "import_torchvision"]


class SpecError(ValueError):
    """The model spec or the input shape cannot be turned into a model and its inputs."""


class MissingPackageError(SpecError):
    """An optional package the spec needs is not installed (or does not import)."""


@dataclass
class Loaded:
    model: nn.Module
    inputs: Optional[tuple]
    label: str
    source: str
    kwargs: Optional[dict] = None
    meta: bool = False  # built on the meta device: no weights


def parse_shape(text: str) -> tuple:
    """``"1,3,224,224"`` (or ``1x3x224x224``) -> ``(1, 3, 224, 224)``."""
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise SpecError(f"--input-shape must be comma-separated positive integers like 1,3,224,224; got {text!r}")
    if not dims or any(d <= 0 for d in dims):
        raise SpecError(f"--input-shape must be comma-separated positive integers like 1,3,224,224; got {text!r}")
    return dims


def _import(package: str, why: str):
    try:
        if package in ("torchvision", "timm", "transformers"):  # these import torchvision
            import_torchvision()
        return importlib.import_module(package)
    except Exception as e:  # ImportError, or a broken install raising RuntimeError at import time
        first = str(e).splitlines()[0] if str(e) else ""
        raise MissingPackageError(f"cannot import {package} (needed for {why}): {type(e).__name__}: {first}"
                        f"\n  install it (pip install {package}) or check that it matches your torch build") from None


def _from_file(spec: str) -> tuple:
    path, _, factory = spec.rpartition(":")
    if not os.path.isfile(path):
        raise SpecError(f"model file {path!r} does not exist")
    name = keys.USER_MODULE_PREFIX + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    mod_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = module  # so the pruned GraphModule can reference classes defined there
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:
        raise SpecError(f"importing {path} failed: {type(e).__name__}: {e}") from None
    fn = getattr(module, factory, None)
    if not callable(fn):
        have = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise SpecError(f"{path} has no callable {factory!r}; callables there: {', '.join(have) or 'none'}")
    try:
        out = fn()
    except Exception as e:
        raise SpecError(f"{path}:{factory}() raised {type(e).__name__}: {e}") from None
    model, inputs = (out[0], out[1]) if isinstance(out, (tuple, list)) and len(out) == 2 else (out, None)
    if not isinstance(model, nn.Module):
        raise SpecError(f"{path}:{factory}() must return an nn.Module or (module, example_inputs); "
                        f"got {type(model).__name__}")
    kwargs = None
    if isinstance(inputs, dict):  # keyword inputs
        inputs, kwargs = (), dict(inputs)
    elif inputs is not None:
        inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    return model, inputs, kwargs, f"{factory} ({os.path.basename(path)})"


def _torchvision_names(tv) -> set:
    M = tv.models
    names = set(M.list_models(module=M))
    for sub in ("segmentation", "video", "optical_flow", "quantization", "detection"):
        if hasattr(M, sub):
            names |= {n for n in M.list_models(module=getattr(M, sub))}
    return names


def torchvision_kwargs(name: str) -> dict:
    """Builder arguments for a torchvision model with random weights and nothing to download."""
    kw: dict = {"weights": None}
    if name.startswith("inception") or name == "googlenet":
        kw.update(aux_logits=False, init_weights=False)
    if name.startswith(("fcn_", "deeplabv3_")):
        kw.update(weights_backbone=None, aux_loss=False)
    elif name.startswith("lraspp"):
        kw.update(weights_backbone=None)
    return kw


def _torchvision(name: str, shape: Optional[tuple]) -> tuple:
    tv = _import("torchvision", f"the torchvision model {name!r}")
    if name not in _torchvision_names(tv):
        raise SpecError(f"unknown torchvision model {name!r}; see torchvision.models.list_models()")
    try:
        model = tv.models.get_model_builder(name)(**torchvision_kwargs(name))
    except Exception as e:
        raise SpecError(f"building torchvision model {name!r} failed: {type(e).__name__}: {e}") from None
    side = 299 if name.startswith("inception") else 224
    return model, (torch.randn(*(shape or (1, 3, side, side))),), f"{name} (torchvision)"


def _timm(name: str, shape: Optional[tuple]) -> tuple:
    timm = _import("timm", f"the timm model {name!r}")
    if not timm.list_models(name):
        raise SpecError(f"unknown model {name!r}: neither a torchvision nor a timm name "
                        "(nor path/to/file.py:factory)")
    try:
        model = timm.create_model(name, pretrained=False)
    except Exception as e:
        raise SpecError(f"building timm model {name!r} failed: {type(e).__name__}: {e}") from None
    size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
    return model, (torch.randn(*(shape or (1,) + size)),), f"{name} (timm)"


def _hf(path: str, shape: Optional[tuple]) -> Loaded:
    if not os.path.exists(path):
        raise SpecError(f"hf:{path}: no such checkpoint directory or config.json")
    _import("transformers", f"the Hugging Face checkpoint {path!r}")
    from ..hf.spec import load_spec

    try:
        spec = load_spec(path, shape)
    except (ValueError, OSError) as e:
        raise SpecError(f"hf:{path}: {str(e).splitlines()[0]}") from None
    return Loaded(spec.model, (), spec.label, "hf", spec.kwargs, spec.meta)


def _has_torchvision_name(name: str) -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    tv = _import("torchvision", f"looking up the model name {name!r}")
    return name in _torchvision_names(tv)


def load_model(spec: Optional[str], shape: Optional[tuple] = None, seed: int = 0) -> Loaded:
    """Build the model named by ``spec`` (see the module docstring), in eval mode, with example inputs."""
    torch.manual_seed(seed)
    if not spec or spec == "demo":
        from .demo import DemoNet, demo_inputs
        inputs = (torch.randn(*shape),) if shape else demo_inputs()
        return Loaded(DemoNet().eval(), inputs, "DemoNet", "builtin")
    if spec.endswith(".py") or ".py:" in spec:
        if ".py:" not in spec:
            raise SpecError(f"a model file needs a factory: {spec}:<function returning a model>")
        model, inputs, kwargs, label = _from_file(spec)
        if shape is not None:
            inputs, kwargs = (torch.randn(*shape),), None
        if inputs is None:
            raise SpecError(f"{label} returned no example inputs: pass --input-shape (e.g. 1,3,224,224) "
                            "or return (model, example_inputs) from the factory")
        return Loaded(model.eval(), inputs, label, "file", kwargs)
    if spec.startswith("hf:"):
        return _hf(spec[3:], shape)
    if spec.startswith("timm:"):
        model, inputs, label = _timm(spec[5:], shape)
        source = "timm"
    elif spec.startswith("torchvision:"):
        model, inputs, label = _torchvision(spec[12:], shape)
        source = "torchvision"
    elif _has_torchvision_name(spec):
        model, inputs, label = _torchvision(spec, shape)
        source = "torchvision"
    elif importlib.util.find_spec("timm") is not None:
        model, inputs, label = _timm(spec, shape)
        source = "timm"
    else:
        raise SpecError(f"unknown model {spec!r}: not a torchvision name, timm is not installed, "
                        "and it is not path/to/file.py:factory")
    return Loaded(model.eval(), inputs, label, source)
