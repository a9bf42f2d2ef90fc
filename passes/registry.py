"""The rule registry: op semantics as data.

A rule is ``fn(ctx: RuleContext) -> value``. Rules are keyed by what a node
calls: a module type (``call_module``; looked up along the MRO, but only
while the subclass does not override ``forward``), a callable or an aten
overload (``call_function``; third-party callables may be registered by
their qualified name so the library imports nothing optional), or a method
name (``call_method``, keys made with :func:`method`).

Registering a key twice is an error; aliases share one rule through several
keys on one decorator::

    @register(torch.add, operator.add, method("add"))
    def _add(ctx): ...
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch.fx as fx
import torch.nn as nn

__all__ = ["register", "method", "lookup", "rule_name", "registered_keys", "qualname",
           "declare_shape", "shape_kind", "alias_rule"]

_RULES: dict[Any, Callable] = {}
_SHAPES: dict[Any, str] = {}  # key -> "same" | "broadcast": output shape known without running the op


def method(name: str) -> tuple:
    """Key for ``call_method`` nodes calling ``Tensor.<name>``."""
    return ("method", name)


def qualname(obj: Any) -> Optional[str]:
    mod = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if mod and name:
        return f"{mod}.{name}"
    return None


def register(*keys: Any) -> Callable[[Callable], Callable]:
    def deco(fn: Callable) -> Callable:
        for key in keys:
            if key in _RULES:
                raise KeyError(f"a rule for {key!r} is already registered ({_RULES[key].__name__})")
            _RULES[key] = fn
        return fn

    return deco


def declare_shape(kind: str, *keys: Any) -> None:
    """Declare that ops output their input's shape ("same") or the operands' broadcast
    shape ("broadcast"), so shape propagation need not run them on meta tensors."""
    if kind not in ("same", "broadcast"):
        raise ValueError(f"unknown shape kind {kind!r}")
    for key in keys:
        _SHAPES[key] = kind


def shape_kind(node: fx.Node, module: Optional[nn.Module] = None) -> Optional[str]:
    if node.op == "call_module":
        return _SHAPES.get(type(module))
    if node.op == "call_method":
        return _SHAPES.get(method(node.target))
    try:
        return _SHAPES.get(node.target)
    except TypeError:
        return None


def alias_rule(key: Any, of: Any) -> Optional[Any]:
    """Register ``of``'s rule (and shape kind) for ``key`` when ``key`` has none; returns ``key`` if it did."""
    if key in _RULES or of not in _RULES:
        return None
    _RULES[key] = _RULES[of]
    if of in _SHAPES:
        _SHAPES[key] = _SHAPES[of]
    return key


def registered_keys() -> list:
    return list(_RULES)


def _lookup_module(mod: nn.Module) -> Optional[Callable]:
    cls = type(mod)
    forward = cls.forward
    for base in cls.__mro__:
        fn = _RULES.get(base)
        if fn is not None:
            return fn if getattr(base, "forward", None) is forward else None
    return None


def _lookup_function(target: Any) -> Optional[Callable]:
    try:
        fn = _RULES.get(target)
    except TypeError:  # unhashable target
        fn = None
    if fn is not None:
        return fn
    packet = getattr(target, "overloadpacket", None)  # aten OpOverload
    if packet is not None and packet in _RULES:
        return _RULES[packet]
    name = qualname(target)
    return _RULES.get(name) if name else None


def lookup(node: fx.Node, module: Optional[nn.Module] = None) -> Optional[Callable]:
    """The rule for ``node``, or None when no rule is known (the node pins)."""
    if node.op == "call_module":
        return _lookup_module(module)
    if node.op == "call_function":
        return _lookup_function(node.target)
    if node.op == "call_method":
        return _RULES.get(method(node.target))
    return None


def rule_name(node: fx.Node, module: Optional[nn.Module] = None) -> str:
    if node.op == "call_module":
        return type(module).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return qualname(node.target) or str(node.target)
