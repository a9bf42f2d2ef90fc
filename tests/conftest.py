"""Shared pytest setup: make the helper modules in tests/ (e.g. ``zoo``) importable.

pyproject runs pytest with ``--import-mode=importlib``, which does not put the test
folder on ``sys.path``; the helpers are plain modules next to the tests.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
