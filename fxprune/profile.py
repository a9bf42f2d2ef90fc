"""Where a call's time goes: wall time by phase (``fxprune.prune(..., profile=True)``, CLI ``--profile``).

Note [Phase timer]
~~~~~~~~~~~~~~~~~~
A :class:`Profile` is active for the duration of :func:`profiling`; code marks
its phases with ``with phase("rewrite"):``. Phases nest, and each second is
counted once, in the innermost phase running at that moment (a rewrite inside
the certificate's check is ``certificate``'s when the certificate wraps it, the
MAC counts of a target search are ``counting``'s, not ``selection``'s). So the
phases never add up to more than the total; the rest (argument checks, copies
between phases) is ``other``. Without an active profile, ``phase`` is one
context-variable read: nothing is recorded.
"""
from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from typing import Iterator, Optional

from fxprune.passes import keys

__all__ = ["PHASES", "Profile", "phase", "profiling", "attach_profile", "PROFILE_KEY"]

PHASES = ("capture", "checked trace", "analysis", "scoring", "selection", "rewrite", "certificate",
          "in-place trials", "counting")
PROFILE_KEY = keys.PROFILE

_ACTIVE: ContextVar[Optional["Profile"]] = ContextVar(keys.PROFILE_VAR, default=None)


class Profile:
    """Seconds by phase (exclusive: nested phases are not counted twice) and the total.

    Example::

        >>> import torch, fxprune
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> small = fxprune.prune(net, (torch.randn(1, 4),), ratio=0.5, profile=True)
        >>> prof = small.fxprune_profile
        >>> sorted(prof.seconds) == sorted(set(prof.seconds) & set(fxprune.profile.PHASES))
        True
        >>> sum(prof.seconds.values()) <= prof.total
        True
    """

    def __init__(self) -> None:
        self.seconds: dict = {}
        self.total = 0.0
        self._stack: list = []  # [name, start of its current stretch]

    def _enter(self, name: str) -> None:
        now = time.perf_counter()
        if self._stack:
            self._close_stretch(now)
        self._stack.append([name, now])

    def _exit(self) -> None:
        now = time.perf_counter()
        self._close_stretch(now)
        self._stack.pop()
        if self._stack:
            self._stack[-1][1] = now

    def _close_stretch(self, now: float) -> None:
        name, start = self._stack[-1]
        self.seconds[name] = self.seconds.get(name, 0.0) + (now - start)

    @property
    def other(self) -> float:
        return max(0.0, self.total - sum(self.seconds.values()))

    def __str__(self) -> str:
        rows = [(n, self.seconds[n]) for n in (*PHASES, *sorted(set(self.seconds) - set(PHASES))) if n in self.seconds]
        rows.append(("other", self.other))
        width = max(len(n) for n, _ in rows)
        lines = [f"  {n:<{width}}  {s:8.3f} s  {s / self.total if self.total else 0:5.0%}" for n, s in rows]
        return "\n".join([f"profile: {self.total:.3f} s in all", *lines])

    def __repr__(self) -> str:
        return f"Profile(total={self.total:.3f}, " + ", ".join(f"{k}={v:.3f}" for k, v in self.seconds.items()) + ")"


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the time of the ``with`` body as ``name`` in the active profile (if any)."""
    prof = _ACTIVE.get()
    if prof is None:
        yield
        return
    prof._enter(name)
    try:
        yield
    finally:
        prof._exit()


@contextlib.contextmanager
def profiling(enabled: bool = True) -> Iterator[Optional[Profile]]:
    """Activate a new :class:`Profile` for the ``with`` body (None when ``enabled`` is False, or when
    a profile is already active: the outer call owns the timing)."""
    if not enabled or _ACTIVE.get() is not None:
        yield None
        return
    prof = Profile()
    token = _ACTIVE.set(prof)
    start = time.perf_counter()
    try:
        yield prof
    finally:
        prof.total = time.perf_counter() - start
        _ACTIVE.reset(token)


def attach_profile(model, prof: Optional[Profile]) -> None:
    """Record ``prof`` on a result: ``model.meta[PROFILE_KEY]`` (GraphModules) and ``model.fxprune_profile``."""
    if prof is None:
        return
    meta = getattr(model, "meta", None)
    if isinstance(meta, dict):
        meta[PROFILE_KEY] = prof
    model.__dict__[keys.PROFILE_ATTR] = prof
