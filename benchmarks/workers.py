"""Reading replies from benchmark worker subprocesses, with a time cap."""
from __future__ import annotations

import json
import select
import subprocess
import time

__all__ = ["Timeout", "WorkerDied", "read_json_line"]


class Timeout(Exception):
    """The worker did not reply within its cap."""


class WorkerDied(RuntimeError):
    """The worker closed its output; ``code`` is its exit code."""

    def __init__(self, code: int):
        super().__init__(f"worker died (exit code {code})")
        self.code = code


def read_json_line(proc: subprocess.Popen, timeout: float) -> dict:
    """The next line of ``proc``'s stdout that is a JSON object; other lines are skipped."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Timeout()
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            line = proc.stdout.readline()
            if not line:
                raise WorkerDied(proc.wait())
            if line.startswith("{"):
                return json.loads(line)
