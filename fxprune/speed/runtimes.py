"""Deploy runtimes: how a model (or one layer) is run and timed.

Note [Runtimes]
~~~~~~~~~~~~~~~
A runtime turns ``(model, example inputs)`` into a zero-argument callable that
runs one forward pass the way the user deploys: PyTorch eager on CPU with
``threads`` threads, ``torch.compile`` with inductor on CPU, or ONNX Runtime on
the model exported with ``torch.onnx.export`` (its outputs checked against the
PyTorch model first, see ``fxprune/speed/onnx.py``). ``key()`` is what makes a
measured table valid elsewhere: CPU model, torch and runtime versions, threads.

Isolated layers are timed on the same runtime, except inductor: on CPU it calls
the same oneDNN/MKL kernels as eager for convolutions and matmuls, and compiling
every layer at every width would cost minutes, so its layer table is eager's
(the whole model is still timed compiled).
"""
from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..capture.modes import eval_copy

__all__ = ["Runtime", "RUNTIMES", "get_runtime", "threads_of", "cpu_name"]

RUNTIMES = ("eager", "inductor", "onnxruntime")


def cpu_name() -> str:
    """The CPU model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@contextlib.contextmanager
def threads_of(n: Optional[int]):
    """Run the block with ``torch.set_num_threads(n)`` (``None``: unchanged)."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass(frozen=True)
class Runtime:
    """One deploy runtime (Note [Runtimes]).

    Example::

        >>> import torch
        >>> from fxprune.speed import get_runtime
        >>> rt = get_runtime("eager", threads=1)
        >>> run = rt.prepare(torch.nn.Linear(4, 2), (torch.randn(1, 4),))
        >>> tuple(run().shape), rt.key()["threads"]
        ((1, 2), 1)
    """

    name: str = "eager"
    threads: Optional[int] = None

    def key(self) -> dict:
        """What a measured table depends on."""
        key = {"runtime": self.name, "torch": torch.__version__, "cpu": cpu_name(),
               "threads": self.threads or torch.get_num_threads()}
        if self.name == "onnxruntime":
            import onnxruntime
            key["onnxruntime"] = onnxruntime.__version__
        return key

    def layer_runtime(self) -> "Runtime":
        """The runtime isolated layers are timed on (inductor: eager, see Note [Runtimes])."""
        return Runtime("eager", self.threads) if self.name == "inductor" else self

    def prepare(self, model: nn.Module, inputs: tuple, check: bool = False) -> Callable[[], object]:
        """A zero-argument callable running one forward pass of an eval copy of ``model`` on ``inputs``."""
        model = eval_copy(model)
        if self.name == "onnxruntime":
            from .onnx import ort_callable
            return ort_callable(model, inputs, self.threads, check=check)
        if self.name == "inductor":
            model = torch.compile(model, backend="inductor")
        return self._eager(model, inputs)

    def _eager(self, model: nn.Module, inputs: tuple) -> Callable[[], object]:
        def run():
            with threads_of(self.threads), torch.no_grad():
                return model(*inputs)
        return run


def get_runtime(runtime, threads: Optional[int] = None) -> Runtime:
    """A :class:`Runtime` from a name in ``RUNTIMES`` (or a Runtime, returned as is)."""
    if isinstance(runtime, Runtime):
        return runtime
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
            import onnx  # noqa: F401
        except ImportError:
            raise ImportError("runtime='onnxruntime' needs the onnx extra: pip install 'fxprune[onnx]' "
                              "(onnx and onnxruntime)") from None
    return Runtime(runtime, threads)
