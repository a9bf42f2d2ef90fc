"""Saving and loading pruned models: ``fxprune.save`` / ``fxprune.load``.

Note [Saving]
~~~~~~~~~~~~~
A pruned model is a ``GraphModule`` whose code may call classes of the user's
(leaf modules) and whose export-captured graphs hold unpicklable guard
functions, so ``torch.save(model)`` is neither safe to load nor always
possible. The right form is an ``ExportedProgram`` (``.pt2``): the graph is
re-exported from an eval-mode copy on the example inputs (every dim dynamic
where export can prove it, else the example's sizes) and written with
``torch.export.save``. It loads in any process without the user's code and
without unpickling code (``torch.export.load``), as an eval-mode graph that
refuses ``train()``.

Where export cannot capture the model (Python that only a leaf module could
hide), ``save`` falls back to a pickle, recording the source files of classes
that a fresh process could not import (``path/to/file.py:factory`` models);
``load`` needs ``weights_only=False`` to read it, as ``torch.load`` does.

Files are written to a temporary name in the target directory and renamed at
the end: a failure leaves no file behind, never a corrupt one.
"""
from __future__ import annotations

import importlib.util
import errno
import inspect
import io
import json
import os
import sys
import tempfile
from typing import Optional

import torch
import torch.nn as nn
from torch.utils._pytree import tree_map

from fxprune.passes import keys

from .archive import check_pt2, is_pt2
from .capture.modes import eval_copy, on_meta, refuse_train, train_refusal
from .errors import SaveError

__all__ = ["save", "load", "atomic_write"]

_EXTRA = keys.SAVED_EXTRA
_PICKLE_KEY = keys.SAVED_PICKLE
_USER_PREFIX = keys.USER_MODULE_PREFIX  # modules fxprune.tools.zoo imports from path/to/file.py
_LOADED_PT2 = ("it was loaded from a .pt2 file: an exported graph of the model in eval mode (save with "
               "format='pickle' to keep a model that trains)")


def _example(model: nn.Module, example_inputs, example_kwargs) -> tuple:
    if example_inputs is None:
        recorded = getattr(model, "meta", {}).get(keys.EXAMPLE) if isinstance(getattr(model, "meta", None),
                                                                                  dict) else None
        if recorded is None:
            raise ValueError("fxprune.save needs example_inputs (a tuple of positional inputs) to export the model; "
                             "models returned by fxprune.prune/apply remember theirs")
        return recorded
    args = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    return args, dict(example_kwargs or {})


def _dynamic(model: nn.Module, args: tuple, kwargs: dict):
    from torch.export import Dim

    bound = inspect.signature(model.forward).bind_partial(*args, **kwargs)
    spec = lambda t: {i: Dim.AUTO for i in range(t.ndim)} if isinstance(t, torch.Tensor) else None  # noqa: E731
    return {k: tree_map(spec, v) for k, v in bound.arguments.items()}


def _double_batch(args: tuple, kwargs: dict):
    """The example with every batch dim of size 1 doubled (export specializes size-1 dims), or None."""
    tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
    if not any(t.dim() and t.shape[0] == 1 for t in tensors):
        return None
    grow = lambda t: torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == 1 else t  # noqa
    return tree_map(grow, args), tree_map(grow, kwargs)


def _dynamic_dims(ep) -> list:
    """``name[dim]`` of every user-input dim the exported program keeps symbolic."""
    names = set(ep.graph_signature.user_inputs)
    out = []
    for node in ep.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder" and node.name in names and isinstance(val, torch.Tensor):
            out += [f"{node.name}[{i}]" for i, d in enumerate(val.shape) if isinstance(d, torch.SymInt)]
    return out


def _export(model: nn.Module, args: tuple, kwargs: dict) -> tuple:
    """(ExportedProgram of an eval-mode copy of ``model``, what stays dynamic)."""
    copy_ = eval_copy(model)
    for example in filter(None, (_double_batch(args, kwargs), (args, kwargs))):
        try:
            ep = torch.export.export(copy_, example[0], example[1], strict=False,
                                     dynamic_shapes=_dynamic(copy_, *example))
        except Exception:
            continue
        dims = _dynamic_dims(ep)
        if dims:
            return ep, f"dynamic dims {', '.join(dims)}"
    return torch.export.export(copy_, args, kwargs, strict=False), "static shapes: the example's sizes"


def _meta_json(model: nn.Module, shapes: str) -> str:
    cert = getattr(model, keys.CERTIFICATE_ATTR, None)
    return json.dumps({"format": 1, "shapes": shapes, "train_refused": train_refusal(model),
                       "certificate": None if cert is None else str(cert)})


def atomic_write(path: str, write, suffix: str = ".tmp") -> None:
    """``write(tmp)`` to a temporary file next to ``path``, then rename it to ``path``; on failure,
    remove it. Raises :class:`SaveError` when the directory does not exist, ``path`` is a directory,
    or the disk is full (nothing is left behind)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise SaveError(f"cannot save to {path}: the directory {folder} does not exist; create it first")
    if os.path.isdir(path):
        raise SaveError(f"cannot save to {path}: it is a directory; give a file name such as {path}/model.pt2")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise SaveError(f"cannot write {path}: {e.strerror or e}" + (
            "; nothing was written (free some space and retry)" if e.errno == errno.ENOSPC else "")) from e
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: str) -> None:
    if os.path.exists(tmp):
        os.remove(tmp)


def _serialized(write) -> bytes:
    """What ``write(buffer)`` writes, in memory: torch's zip writer aborts the process when a disk fills
    under it (an error in its destructor), so files are written by plain Python I/O instead."""
    buf = io.BytesIO()
    write(buf)
    return buf.getvalue()


def _write_bytes(data: bytes):
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return write


def _sources(model: nn.Module) -> dict:
    """``{module name: file}`` for classes a fresh process could not import (user model files)."""
    out = {}
    for m in model.modules():
        name = type(m).__module__
        mod = sys.modules.get(name)
        file = getattr(mod, "__file__", None)
        if name.startswith(_USER_PREFIX) and file:
            out[name] = os.path.abspath(file)
    return out


def save(model: nn.Module, path, example_inputs=None, example_kwargs: Optional[dict] = None, *,
         format: str = "auto") -> str:
    """Save a (pruned) model so that :func:`load` gives it back in a fresh process (Note [Saving]).

    Args:
        model: what :func:`fxprune.prune`/:func:`fxprune.apply` returned, or any module.
        path: the file to write (conventionally ``.pt2``); written atomically.
        example_inputs, example_kwargs: the inputs to export with (default: the example the
            model was pruned with).
        format: ``"pt2"`` (``torch.export.save``), ``"pickle"``, or ``"auto"``: pt2 where export
            can capture the model, else pickle.

    Returns:
        What was written, e.g. ``"pt2 (dynamic dims x[0], x[2], x[3])"``; a ``pt2 (static shapes: ...)``
        runs only at the example's sizes.

    Raises:
        SaveError: the directory does not exist, the file cannot be written, or the model can be
            saved in no requested format.

    Example::

        >>> import torch, fxprune, tempfile, os
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> small = fxprune.prune(net, (torch.randn(2, 4),), ratio=0.5)
        >>> path = os.path.join(tempfile.mkdtemp(), "small.pt2")
        >>> fxprune.save(small, path)
        'pt2 (dynamic dims input[0], input[1])'
        >>> fxprune.load(path)(torch.randn(5, 4)).shape
        torch.Size([5, 2])
    """
    if format not in ("auto", "pt2", "pickle"):
        raise ValueError(f"format must be 'auto', 'pt2' or 'pickle', got {format!r}")
    if on_meta(model):
        raise SaveError(f"{type(model).__name__} is on the meta device: its tensors have no values to save")
    export_error = None
    if format in ("auto", "pt2"):
        args, kwargs = _example(model, example_inputs, example_kwargs)
        try:
            ep, shapes = _export(model, args, kwargs)
        except Exception as e:
            export_error = e
            if format == "pt2":
                raise SaveError(f"torch.export cannot capture {type(model).__name__} to save it as .pt2: "
                                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
                                "use format='pickle'") from e
        else:
            extra = {_EXTRA: _meta_json(model, shapes)}
            data = _serialized(lambda buf: torch.export.save(ep, buf, extra_files=extra))
            atomic_write(path, _write_bytes(data), suffix=".tmp.pt2")
            return f"pt2 ({shapes})"
    try:
        inner = io.BytesIO()
        torch.save(model, inner)
        payload = {_PICKLE_KEY: inner.getvalue(), "sources": _sources(model), "meta": _meta_json(model, "any")}
        atomic_write(path, _write_bytes(_serialized(lambda buf: torch.save(payload, buf))))
    except SaveError:
        raise
    except Exception as e:
        why = f" (torch.export failed first: {type(export_error).__name__})" if export_error else ""
        raise SaveError(f"cannot pickle {type(model).__name__}{why}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from e
    return "pickle (load with weights_only=False)"


def _import_sources(sources: dict) -> None:
    for name, file in sources.items():
        if name in sys.modules or not os.path.isfile(file):
            continue
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


def load(path, *, weights_only: bool = True) -> nn.Module:
    """Load a model written by :func:`save`.

    A ``.pt2`` file is checked first (Note [Loading .pt2 safely] in ``fxprune/archive.py``: nothing
    in it is unpickled beyond what ``torch.load(weights_only=True)`` allows), then loads with
    ``torch.export.load`` as an eval-mode graph that refuses ``train()``. A pickled model (export could not capture it) runs the
    pickled code, so it needs ``weights_only=False``: only for files you trust.

    Raises:
        SaveError: the file is missing, not written by :func:`save`, a ``.pt2`` holding a pickle
            or payload that could run code, or pickled and ``weights_only`` is True.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SaveError(f"cannot load {path}: no such file")
    if is_pt2(path):
        check_pt2(path)  # Note [Loading .pt2 safely] in fxprune/archive.py: nothing beyond weights_only=True
        extra = {_EXTRA: ""}
        try:
            model = torch.export.load(path, extra_files=extra).module()
        except Exception as e:
            raise SaveError(f"{path}: torch.export.load cannot read it: {type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''}") from e
        info = json.loads(extra[_EXTRA] or "{}")
        return refuse_train(model, info.get("train_refused") or _LOADED_PT2)
    try:
        payload = torch.load(path, weights_only=True)  # the envelope: bytes and strings only
    except Exception as e:
        raise SaveError(f"{path} was not written by fxprune.save ({type(e).__name__})") from None
    if not isinstance(payload, dict) or _PICKLE_KEY not in payload:
        raise SaveError(f"{path} was not written by fxprune.save")
    if weights_only:
        raise SaveError(f"{path} holds a pickled model (saved with format='pickle', or torch.export could not "
                        "capture it); loading runs pickled code: pass weights_only=False if you trust the file")
    _import_sources(payload["sources"])
    return torch.load(io.BytesIO(payload[_PICKLE_KEY]), weights_only=False)


