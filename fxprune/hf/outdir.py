"""Where a pruned checkpoint may be written, and writing it all at once.

Note [Output directories]
~~~~~~~~~~~~~~~~~~~~~~~~~
Both Hugging Face paths (in memory, ``fxprune hf:DIR --out OUT``, and streamed,
``prune_checkpoint``) call :func:`check_out` before anything is read or written:
``OUT`` must be a new path or an empty directory, and must not resolve (through
symlinks) to the input checkpoint. A directory that holds anything, another
checkpoint or fxprune's own previous output included, is refused: a run never
deletes or overwrites a file it did not create. Remove the old output first.

:func:`staged` then writes into a temporary sibling directory (``.OUT.fxprune-*``)
and renames it to ``OUT`` only when every file is complete, so an interrupted or
failed run leaves no partial checkpoint (shards without config.json, a truncated
config) and no temporary directory. A full disk is a :class:`~fxprune.errors.SaveError`
(``errno.ENOSPC``; the CLI's exit code 5), whatever library raised it.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Optional

from ..errors import FxPruneError, SaveError

__all__ = ["OutDirError", "check_out", "staged", "inside"]


class OutDirError(FxPruneError, ValueError):
    """``--out`` names the input checkpoint, or a directory that already holds files."""


def _source_dir(src: Optional[str]) -> Optional[str]:
    if src is None:
        return None
    src = os.fspath(src)
    return os.path.realpath(os.path.dirname(src) if os.path.isfile(src) else src)


def check_out(src, out) -> str:
    """The real path ``out`` resolves to, after refusing (:class:`OutDirError`) an ``out`` that is the
    input checkpoint ``src`` (a directory or its config.json/.safetensors), a symlink to it, a file, or a
    directory that is not empty (Note [Output directories])."""
    out = os.fspath(out)
    real, source = os.path.realpath(out), _source_dir(src)
    if source is not None and real == source:
        via = f" (through the symlink {out})" if os.path.islink(out.rstrip("/")) else ""
        raise OutDirError(f"--out {out} is the input checkpoint{via}: writing there would destroy it; "
                          "choose a new directory")
    if os.path.exists(real) and not os.path.isdir(real):
        raise OutDirError(f"--out {out} is a file: give a new or empty directory")
    if os.path.isdir(real) and os.listdir(real):
        held = sorted(os.listdir(real))
        raise OutDirError(f"--out {out} already holds files ({', '.join(held[:3])}{', ...' if len(held) > 3 else ''})"
                          "; fxprune writes only to a new or empty directory and never replaces a checkpoint: "
                          "remove it or choose another directory")
    parent = os.path.dirname(real)
    if not os.path.isdir(parent):
        raise SaveError(f"--out {out}: the directory {parent} does not exist; create it first")
    return real


def disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or what caused it) says the disk is full or a file size limit was reached."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            return True
        if any(s in str(e) for s in ("No space left", "File too large", "Disk quota exceeded")):
            return True
        e = e.__cause__ or e.__context__
    return False


@contextmanager
def staged(out: str):
    """Yield a temporary sibling directory of ``out``; rename it to ``out`` when the block succeeds,
    remove it when it fails (Note [Output directories]). ``out`` must have passed :func:`check_out`."""
    parent, name = os.path.split(os.path.abspath(out))
    tmp = tempfile.mkdtemp(prefix=f".{name}.fxprune-", dir=parent)
    try:
        yield tmp
        if os.path.isdir(out):
            os.rmdir(out)  # empty (check_out): rename cannot replace a directory on every platform
        os.rename(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full(e) and not isinstance(e, SaveError):
            raise SaveError(errno.ENOSPC, f"no space left to write {out}: nothing was written "
                                          f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
                            ) from e
        raise


def inside(root: str, name: str) -> str:
    """``root/name`` for a file name read from a checkpoint's index, refusing (CheckpointError) an absolute
    name, a ``..`` component or a symlink that leads outside ``root``."""
    from .load import CheckpointError

    bad = not isinstance(name, str) or not name or os.path.isabs(name) or "\\" in name \
        or ".." in name.replace("\\", "/").split("/")
    full = os.path.join(root, name) if not bad else ""
    real_root = os.path.realpath(root)
    if bad or os.path.commonpath([real_root, os.path.realpath(full)]) != real_root:
        raise CheckpointError(f"{os.path.join(root, 'model.safetensors.index.json')} names the shard {name!r}, "
                              f"which lies outside {root}: refusing to read it (a crafted or corrupt index)")
    return full
