"""Alias ops take the rule of the op they alias, from torch's own alias table.

Note [Alias table]
~~~~~~~~~~~~~~~~~~
torch documents every alias in its docstrings (``torch.multiply``: "Alias for
:func:`torch.mul`", written by ``torch/_torch_docs.py``); that is the table used
here, not a hand list. A pair is trusted only where the aten schemas agree: every
overload of the alias (``aten::multiply.Tensor(Tensor self, Tensor other)``) has an
overload of the target with the same name and the same argument names and types,
so a rule reading arguments by position or by name reads the same thing. A pair
that fails the check (``swapaxes(self, axis0, axis1)`` vs ``transpose(self, dim0,
dim1)``) gets nothing from here: it pins, as any op without a rule does, unless a
rule names it explicitly. Aliases fill gaps only: an explicitly registered key wins.
"""
from __future__ import annotations

import re
from typing import Any, Iterator, Optional

import torch

from ..registry import alias_rule, method

__all__ = ["alias_table", "register_aliases"]

_DOC_ALIAS = re.compile(r"Alias for :func:`(torch\.[\w.]+)`")
_NAMESPACES = (torch, torch.special, torch.linalg)


def _resolve(dotted: str) -> Optional[Any]:
    obj: Any = torch
    for part in dotted.split(".")[1:]:
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _aten_name(dotted: str) -> str:
    """``torch.special.expit`` -> ``special_expit``; ``torch.mul`` -> ``mul``."""
    return dotted.split(".", 1)[1].replace(".", "_")


def _signature(overload) -> tuple:
    return tuple((a.name, str(a.type)) for a in overload._schema.arguments)


def same_schema(alias: str, target: str) -> bool:
    """Whether every overload of ``aten::alias`` exists on ``aten::target`` with the same arguments."""
    a, t = getattr(torch.ops.aten, alias, None), getattr(torch.ops.aten, target, None)
    if a is None or t is None:
        return False
    targets = set(t.overloads())
    for name in a.overloads():
        if name not in targets or _signature(getattr(a, name)) != _signature(getattr(t, name)):
            return False
    return True


def alias_table() -> Iterator[tuple]:
    """``(alias dotted name, target dotted name)`` for every documented alias whose aten schemas agree.

    Example::

        >>> ("torch.multiply", "torch.mul") in set(alias_table())
        True
    """
    for ns in _NAMESPACES:
        prefix = ns.__name__
        for name in dir(ns):
            doc = getattr(getattr(ns, name, None), "__doc__", None)
            m = _DOC_ALIAS.search(doc) if isinstance(doc, str) else None
            if m is None:
                continue
            alias = f"{prefix}.{name}"
            if same_schema(_aten_name(alias), _aten_name(m.group(1))):
                yield alias, m.group(1)


def _key_pairs(alias: str, target: str) -> Iterator[tuple]:
    """The registry keys of both ops: torch function, aten packet, Tensor method."""
    fa, ft = _resolve(alias), _resolve(target)
    if fa is not None and ft is not None:
        yield fa, ft
    yield getattr(torch.ops.aten, _aten_name(alias)), getattr(torch.ops.aten, _aten_name(target))
    ma, mt = alias.rsplit(".", 1)[1], target.rsplit(".", 1)[1]
    if alias.count(".") == 1 and target.count(".") == 1 and hasattr(torch.Tensor, ma) and hasattr(torch.Tensor, mt):
        yield method(ma), method(mt)


def register_aliases() -> list:
    """Give each side of every alias pair the other's rule where it has none; returns the keys filled."""
    filled = []
    for alias, target in alias_table():
        for a, t in _key_pairs(alias, target):
            filled += [k for k in (alias_rule(a, t), alias_rule(t, a)) if k is not None]
    return filled
