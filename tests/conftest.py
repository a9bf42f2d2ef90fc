"""Shared pytest setup.

* The helper modules in tests/ (e.g. ``zoo``) are importable: pyproject runs pytest
  with ``--import-mode=importlib``, which does not put the test folder on ``sys.path``.
* The suite runs the analysis in strict mode (Note [Strict mode] in passes/errors.py):
  a rule that raises anything but ``RuleError`` fails the test instead of pinning
  quietly. Subprocesses (the CLI tests) inherit it. ``FXPRUNE_STRICT=0`` turns it off.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

os.environ.setdefault("FXPRUNE_STRICT", "1")
