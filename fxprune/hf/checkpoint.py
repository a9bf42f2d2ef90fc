"""Safetensors checkpoints read tensor by tensor and written shard by shard.

Note [Checkpoint I/O]
~~~~~~~~~~~~~~~~~~~~~
A Hugging Face checkpoint directory holds either one ``model.safetensors`` or
shards ``model-0000i-of-0000n.safetensors`` with ``model.safetensors.index.json``
(``{"metadata": {"total_size": bytes}, "weight_map": {tensor: shard file}}``).
:class:`Checkpoint` reads the shapes and dtypes of every tensor from the shard
headers (no tensor data) and one tensor at a time with ``safetensors.safe_open``;
a file is opened per read and closed after, so no mapping of a whole shard stays
resident. :class:`ShardWriter` buffers tensors until the next one would pass the
shard size cap, writes the shard with ``safetensors.torch.save_file`` and frees
it; at :meth:`ShardWriter.close` the shards get their final ``-of-n`` names and
the index is written as ``save_pretrained`` writes it (one shard: a plain
``model.safetensors`` and no index). Memory: one shard plus the tensor being
added. Files are written under temporary names first, so a failed run leaves no
file that looks like a checkpoint.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Iterator, Optional, Union

import torch

from .load import CheckpointError

__all__ = ["Checkpoint", "TensorInfo", "ShardWriter", "parse_size", "CheckpointError", "shard_files",
           "SAFE_WEIGHTS_NAME", "SAFE_WEIGHTS_INDEX_NAME"]

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lies and what it is, from its shard's header."""

    name: str
    file: str
    shape: tuple
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


def parse_size(size: Union[int, str]) -> int:
    """Bytes from ``1073741824``, ``"1GB"``, ``"500MB"``, ``"2GiB"`` (as ``save_pretrained``'s max_shard_size)."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise ValueError(f"a size must be positive, got {size}")
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B\s*", str(size), re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot read the size {size!r}: use bytes (an int) or a string like '1GB', '500MB', '2GiB'")
    base = 1024 if m.group(3) else 1000
    n = int(float(m.group(1)) * base ** " KMGT".index((m.group(2) or " ").upper()))
    if n <= 0:
        raise ValueError(f"a size must be positive, got {size!r}")
    return n


class Checkpoint:
    """A safetensors checkpoint (a directory or one ``.safetensors`` file), read lazily.

    Attributes:
        path: the directory holding the weights (and ``config.json``).
        tensors: ``{name: TensorInfo}`` in file order, from the headers only.

    Example::

        >>> import tempfile, torch
        >>> from safetensors.torch import save_file
        >>> d = tempfile.mkdtemp()
        >>> save_file({"w": torch.ones(2, 3)}, f"{d}/model.safetensors", {"format": "pt"})
        >>> ck = Checkpoint(d)
        >>> ck.tensors["w"].shape, ck.read("w").sum().item()
        ((2, 3), 6.0)
    """

    def __init__(self, path: Union[str, os.PathLike]):
        path = os.fspath(path)
        if os.path.isfile(path) and path.endswith(".safetensors"):
            self.path, files = os.path.dirname(os.path.abspath(path)), [os.path.abspath(path)]
        elif os.path.isdir(path):
            self.path, files = os.path.abspath(path), self._files(os.path.abspath(path))
        else:
            raise CheckpointError(f"{path} is neither a checkpoint directory nor a .safetensors file")
        self.tensors = {}
        for f in files:
            for info in _headers(f):
                self.tensors[info.name] = info

    @staticmethod
    def _files(path: str) -> list:
        index = os.path.join(path, SAFE_WEIGHTS_INDEX_NAME)
        if os.path.isfile(index):
            with open(index) as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index} has no weight_map: it is not a safetensors index")
            return shard_files(path, weight_map)
        single = os.path.join(path, SAFE_WEIGHTS_NAME)
        if os.path.isfile(single):
            return [single]
        other = sorted(f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth", ".ckpt")))
        hint = (f" It holds {', '.join(other[:3])}: pickled weights cannot be read tensor by tensor; convert them "
                "once with transformers (from_pretrained, then save_pretrained(dir, safe_serialization=True)).") \
            if other else ""
        raise CheckpointError(f"{path} has no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}.{hint}")

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data in the checkpoint."""
        return sum(t.nbytes for t in self.tensors.values())

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def read(self, name: str, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Tensor ``name`` (a fresh CPU tensor; the shard is closed again), optionally cast to ``dtype``."""
        from safetensors import safe_open

        info = self._info(name)
        with safe_open(info.file, framework="pt", device="cpu") as f:
            t = f.get_tensor(name)
        return t if dtype is None or t.dtype == dtype else t.to(dtype)

    def read_slice(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        """``read(name).narrow(dim, start, stop - start)`` without reading the rest of the tensor."""
        from safetensors import safe_open

        info = self._info(name)
        index = tuple([slice(None)] * dim + [slice(start, stop)])
        with safe_open(info.file, framework="pt", device="cpu") as f:
            return f.get_slice(name)[index]

    def _info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a tensor of the checkpoint in {self.path}") from None


def shard_files(path: str, weight_map: dict) -> list:
    """The shard files an index's ``weight_map`` names, each checked to lie inside ``path`` (no ``..``,
    absolute name or symlink out of it: a crafted index could make fxprune read, and copy into its
    output, any file) and to exist."""
    from .outdir import inside

    files = [inside(path, f) for f in dict.fromkeys(weight_map.values())]
    missing = [os.path.basename(f) for f in files if not os.path.isfile(f)]
    if missing:
        raise CheckpointError(f"{os.path.join(path, SAFE_WEIGHTS_INDEX_NAME)} names shards that are not in "
                              f"{path}: {', '.join(missing[:3])}")
    return files


def _headers(file: str) -> list:
    """The tensors of one safetensors file, in data order, from its header (no tensor data is read)."""
    from safetensors import SafetensorError, safe_open

    out = []
    try:
        with safe_open(file, framework="pt", device="cpu") as f:
            for name in f.offset_keys():
                piece = f.get_slice(name)
                dtype = piece.get_dtype()
                if dtype not in _DTYPES:
                    raise CheckpointError(f"{file}: tensor {name} has dtype {dtype}, which fxprune does not stream")
                out.append(TensorInfo(name, file, tuple(piece.get_shape()), _DTYPES[dtype]))
    except SafetensorError as e:
        raise CheckpointError(f"{file} is not a readable safetensors file: {e}") from None
    return out


class ShardWriter:
    """Write tensors into size-capped safetensors shards plus the index, as ``save_pretrained`` does.

    Args:
        out: the output directory (created if missing).
        max_shard_size: the cap on a shard's tensor bytes (a tensor larger than it gets a shard of its own).
        metadata: extra string metadata of every shard (``{"format": "pt"}`` is always set).

    Example::

        >>> import tempfile, torch
        >>> d = tempfile.mkdtemp()
        >>> with ShardWriter(d, max_shard_size=40) as w:
        ...     w.add("a", torch.zeros(8)); w.add("b", torch.zeros(8)); w.add("c", torch.zeros(2))
        >>> sorted(os.listdir(d))
        ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']
        >>> Checkpoint(d).tensors["c"].file.endswith("00002.safetensors")
        True
    """

    def __init__(self, out: Union[str, os.PathLike], max_shard_size: Union[int, str] = "1GB",
                 metadata: Optional[dict] = None):
        self.out, self.cap = os.fspath(out), parse_size(max_shard_size)
        os.makedirs(self.out, exist_ok=True)
        self.metadata = {**(metadata or {}), "format": "pt"}
        self._buffer: dict = {}
        self._buffered = 0
        self._shards: list = []  # (temporary file, [names])
        self.total_size = 0
        self.bytes_written = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue ``tensor`` under ``name``; writes the current shard first if ``tensor`` would overflow it."""
        if name in self._buffer or any(name in names for _, names in self._shards):
            raise CheckpointError(f"tensor {name!r} is written twice")
        n = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffered + n > self.cap:
            self.flush()
        self._buffer[name] = tensor.contiguous()
        self._buffered += n
        self.total_size += n

    def flush(self) -> None:
        """Write the buffered tensors as one shard (under a temporary name) and free them."""
        if not self._buffer:
            return
        from safetensors.torch import save_file

        tmp = os.path.join(self.out, f".fxprune-shard-{len(self._shards):05d}.tmp")
        save_file(self._buffer, tmp, metadata=self.metadata)
        self._shards.append((tmp, list(self._buffer)))
        self.bytes_written += os.path.getsize(tmp)
        self._buffer, self._buffered = {}, 0

    def close(self) -> list:
        """Write the last shard, give every shard its final name and write the index; the file names."""
        self.flush()
        n = len(self._shards)
        names = [SAFE_WEIGHTS_NAME] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for (tmp, _), final in zip(self._shards, names):
            os.replace(tmp, os.path.join(self.out, final))
        if n > 1:
            weight_map = {t: final for (_, tensors), final in zip(self._shards, names) for t in tensors}
            index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(weight_map.items()))}
            with open(os.path.join(self.out, SAFE_WEIGHTS_INDEX_NAME), "w") as f:
                json.dump(index, f, indent=2, sort_keys=True)
                f.write("\n")
                self.bytes_written += f.tell()
        return names

    def abort(self) -> None:
        """Remove the shards written so far (a failed run leaves nothing behind)."""
        for tmp, _ in self._shards:
            if os.path.exists(tmp):
                os.remove(tmp)
        self._shards, self._buffer, self._buffered = [], {}, 0

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
