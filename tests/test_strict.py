"""Strict mode: a rule bug raises in tests instead of pinning quietly (Note [Strict mode])."""
import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import fxprune
from fxprune.passes import RuleBugError, analyze_graph, is_strict, register, strict
from fxprune.passes.context import RuleError


def buggy_op(x):
    return x * 2


def declined_op(x):
    return x * 3


fx.wrap("buggy_op")
fx.wrap("declined_op")


@register(buggy_op)
def _buggy_rule(ctx):
    x = ctx.tensor(0)
    return ctx.result(x.dims[:-1] + (x.dims[x.ndim],))  # a bug: indexes one dim past the end


@register(declined_op)
def _declining_rule(ctx):
    raise RuleError("this form is not handled")


class Net(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.a, self.b, self.buggy = nn.Linear(4, 8), nn.Linear(8, 2), op is buggy_op

    def forward(self, x):
        h = self.a(x)
        return self.b(buggy_op(h) if self.buggy else declined_op(h))  # fx.wrap: called by global name


X = (torch.randn(3, 4),)


def test_a_rule_bug_raises_in_strict_mode_and_names_the_rule_and_node():
    with strict():
        with pytest.raises(RuleBugError, match=r"rule _buggy_rule raised \w+Error at") as err:
            fxprune.analyze(Net(buggy_op), X)
    assert "buggy_op" in str(err.value) and "bug in the rule" in str(err.value)
    assert isinstance(err.value.__cause__, IndexError)


def test_outside_strict_mode_the_bug_pins_and_is_reported():
    with strict(False):
        dg = fxprune.analyze(Net(buggy_op), X)
    assert dg.groups == []  # the 8 hidden channels pass the buggy op: pinned, the model stays correct
    assert "_buggy_rule cannot handle this call" in dg.report()
    with strict(False):
        assert fxprune.verify(Net(buggy_op), X).passed


def test_a_deliberate_rule_error_pins_even_in_strict_mode():
    with strict():
        dg = fxprune.analyze(Net(declined_op), X)
    assert dg.groups == [] and "this form is not handled" in dg.report()


def test_switches_env_context_and_argument(monkeypatch):
    monkeypatch.setenv("FXPRUNE_STRICT", "0")
    assert not is_strict()
    monkeypatch.setenv("FXPRUNE_STRICT", "1")
    assert is_strict()
    with strict(False):
        assert not is_strict() and is_strict(True)
        with strict():
            assert is_strict()
        assert not is_strict()
    gm = fx.symbolic_trace(Net(buggy_op))
    with pytest.raises(RuleBugError):
        analyze_graph(gm, X)  # the environment asks for strict
    assert analyze_graph(gm, X, strict=False).group_atoms == []


def test_the_test_suite_runs_strict():
    assert is_strict()
