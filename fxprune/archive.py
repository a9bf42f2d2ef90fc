"""What ``fxprune.load`` trusts in a ``.pt2`` file, checked before ``torch.export.load`` reads it.

Note [Loading .pt2 safely]
~~~~~~~~~~~~~~~~~~~~~~~~~~
``torch.export.load`` unpickles parts of the archive: the sample inputs
(``data/sample_inputs/<model>.pt``, retried with ``weights_only=False`` when the
safe load fails), every weight or constant whose payload config says
``use_pickle``, custom and opaque objects (``pickle.loads``), and legacy weight
files. A crafted file can therefore run code. :func:`check_pt2` reads the zip
itself, before torch does, and accepts only what :func:`fxprune.save` writes:

* one archive root, no entry name with ``..`` or an absolute path;
* ``archive_format`` ``pt2`` and exactly one exported program (``models/<name>.json``);
* no AOTInductor, ExecuTorch, MTIA or legacy ``.pt`` weight/constant payloads, no
  custom or opaque objects;
* every pickled payload (the sample inputs, ``use_pickle`` weights and constants)
  loads with ``torch.load(weights_only=True)``: tensors, containers and numbers only.

Then ``torch.export.load``'s own safe load succeeds first, so its
``weights_only=False`` retry never runs. Anything else raises
:class:`~fxprune.errors.SaveError` naming the entry, and nothing is unpickled
beyond ``weights_only=True``.
"""
from __future__ import annotations

import io
import json
import posixpath
import zipfile

import torch

from .errors import SaveError

__all__ = ["check_pt2", "is_pt2"]

_REFUSED_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia", "xl_model_weights/")
_OBJECT_PREFIXES = ("custom_obj_", "opaque_obj_")


def is_pt2(path: str) -> bool:
    """Whether ``path`` is a zip that claims to be an export archive (an ``archive_format`` or ``models/`` entry)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/archive_format") or "/models/" in n or n.endswith("serialized_exported_program.json")
                   for n in z.namelist())


def _root(path: str, names: list) -> str:
    roots = {n.split("/", 1)[0] for n in names}
    for n in names:
        if n.startswith("/") or "\\" in n or ".." in n.split("/") or posixpath.isabs(n):
            raise SaveError(f"{path}: refusing an archive entry with an unsafe name: {n!r}")
    if len(roots) != 1 or not all("/" in n for n in names):
        raise SaveError(f"{path} is a zip, but not an archive written by torch.export.save (no single root folder)")
    return roots.pop() + "/"


def _safe_unpickle(path: str, z: zipfile.ZipFile, entry: str) -> None:
    try:
        torch.load(io.BytesIO(z.read(entry)), weights_only=True)
    except Exception as e:  # an UnpicklingError that names the global it refused
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        first = next((ln for ln in lines if "Unsupported" in ln or "GLOBAL" in ln), lines[0])[:200]
        raise SaveError(f"{path}: refusing to load: {entry} is a pickle that torch.load(weights_only=True) rejects "
                        f"({first}); it could run code. Load only files you trust with "
                        "torch.export.load(path) directly") from None


def _payloads(path: str, z: zipfile.ZipFile, root: str, config: str, folder: str) -> None:
    """The ``use_pickle`` entries of a payload config load with ``weights_only=True``; no objects."""
    try:
        entries = json.loads(z.read(root + config))["config"]
    except KeyError:
        raise SaveError(f"{path}: {config} is missing: not an archive written by torch.export.save") from None
    except Exception:
        raise SaveError(f"{path}: {config} is not a payload config: not an archive written by torch.export.save") \
            from None
    for fqn, meta in entries.items():
        name = str(meta.get("path_name", ""))
        if name.startswith(_OBJECT_PREFIXES) or "/" in name or name in ("", ".", ".."):
            raise SaveError(f"{path}: refusing to load {fqn!r}: its payload {name!r} is a pickled object "
                            "(custom or opaque), which fxprune.save never writes")
        if meta.get("use_pickle"):
            _safe_unpickle(path, z, root + folder + name)


def check_pt2(path: str) -> None:
    """Raise :class:`SaveError` unless ``path`` is an export archive that loads without unpickling code
    (Note [Loading .pt2 safely])."""
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise SaveError(f"cannot read {path} as a .pt2 archive: {e}") from None
    with z:
        names = [n for n in z.namelist() if not n.endswith("/")]
        root = _root(path, names)
        rel = [n[len(root):] for n in names]
        models = [n for n in rel if n.startswith("models/") and n.endswith(".json")]
        fmt = z.read(root + "archive_format").decode(errors="replace").strip() if "archive_format" in rel else None
        if fmt != "pt2" or len(models) != 1:
            raise SaveError(f"{path} is a zip, but not a .pt2 archive of one exported program (written by "
                            "fxprune.save or torch.export.save)")
        bad = [n for n in rel if n.startswith(_REFUSED_DIRS) or (n.endswith(".pt") and
                                                                 not n.startswith("data/sample_inputs/"))]
        if bad:
            raise SaveError(f"{path}: refusing to load {bad[0]}: compiled code or a legacy pickled payload, "
                            "which fxprune.save never writes")
        model = models[0][len("models/"):-len(".json")]
        _payloads(path, z, root, f"data/weights/{model}_weights_config.json", "data/weights/")
        _payloads(path, z, root, f"data/constants/{model}_constants_config.json", "data/constants/")
        for n in rel:
            if n.startswith("data/sample_inputs/"):
                _safe_unpickle(path, z, root + n)
