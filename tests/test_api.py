"""The public API: contracts, input validation, and never mutating the input model."""
from __future__ import annotations

import ast
import copy
import pathlib

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune.passes import META_KEY, register

ROOT = pathlib.Path(__file__).resolve().parents[1]


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5),
    ).eval()


INPUTS = (torch.randn(2, 3, 10, 10),)


def test_groups_members_and_details():
    dg = fxprune.analyze(small_cnn(), INPUTS)
    assert [g.size for g in dg.groups] == [8, 12]
    g0 = dg.groups[0]
    assert set(g0.members) == {("0.weight", 0), ("0.bias", 0), ("1.weight", 0), ("1.bias", 0),
                               ("1.running_mean", 0), ("1.running_var", 0), ("3.weight", 1)}
    table = g0.details()
    for target, _ in g0.members:
        assert target in table
    assert "(12, 8, 3, 3)" in table


def test_report_names_groups_and_pinned_axes():
    text = fxprune.analyze(small_cnn(), INPUTS).report()
    assert "2 prunable groups" in text
    assert "graph input" in text and "graph output" in text
    assert "symbolic_trace" in text


def test_apply_prunes_and_keeps_the_input_model_intact():
    model = small_cnn()
    state = copy.deepcopy(model.state_dict())
    dg = fxprune.analyze(model, INPUTS)
    pruned = fxprune.apply(dg, {dg.groups[0]: [1, 3, 5], dg.groups[1]: torch.tensor([0, 11])})
    assert isinstance(pruned, fx.GraphModule)
    assert pruned.get_submodule("0").weight.shape == (3, 3, 3, 3) and pruned.get_submodule("0").out_channels == 3
    assert pruned.get_submodule("1").num_features == 3 and pruned.get_submodule("1").running_mean.shape == (3,)
    assert pruned.get_submodule("3").weight.shape == (2, 3, 3, 3) and pruned.get_submodule("3").in_channels == 3
    assert pruned.get_submodule("7").in_features == 2
    assert pruned(torch.randn(4, 3, 20, 20)).shape == (4, 5)  # other batch size and resolution
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(META_KEY not in n.meta for n in fx.symbolic_trace(model).graph.nodes)
    # the pruned model owns its tensors, pruned or not: training it cannot touch the original
    with torch.no_grad():
        for p in pruned.parameters():
            p.zero_()
        for b in pruned.buffers():
            b.zero_()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_graph_module_input_is_not_annotated_in_place():
    gm = fx.symbolic_trace(small_cnn())
    dg = fxprune.analyze(gm, INPUTS)
    assert all(META_KEY not in n.meta for n in gm.graph.nodes)
    assert all(META_KEY in n.meta for n in dg.gm.graph.nodes)


def test_apply_keeps_order_given():
    model = small_cnn()
    dg = fxprune.analyze(model, INPUTS)
    pruned = fxprune.apply(dg, {dg.groups[0]: [5, 0, 2]})
    assert torch.equal(pruned.get_submodule("0").weight, model[0].weight[[5, 0, 2]])
    assert torch.equal(pruned.get_submodule("3").weight, model[3].weight[:, [5, 0, 2]])


@pytest.mark.parametrize("keep, fragment", [
    ([], "empty"),
    ([0, 8], "out of range"),
    ([-1], "out of range"),
    ([1, 1, 2], "repeat [1]"),
    ([0.5], "integers"),
    (torch.tensor([True, False]), "integer tensor"),
    (torch.tensor([[0, 1]]), "1-D"),
])
def test_bad_keep_indices_name_the_problem_and_the_fix(keep, fragment):
    dg = fxprune.analyze(small_cnn(), INPUTS)
    with pytest.raises(fxprune.KeepIndicesError) as err:
        fxprune.apply(dg, {dg.groups[0]: keep})
    assert fragment in str(err.value)
    assert "range(8)" in str(err.value) and "G0" in str(err.value)


def test_group_from_another_graph_is_refused():
    dg1 = fxprune.analyze(small_cnn(), INPUTS)
    dg2 = fxprune.analyze(small_cnn(), INPUTS)
    with pytest.raises(fxprune.GroupMismatchError, match="another DependencyGraph"):
        fxprune.apply(dg2, {dg1.groups[0]: [0]})
    with pytest.raises(fxprune.GroupMismatchError, match="out of range"):
        fxprune.apply(dg2, {7: [0]})
    assert fxprune.apply(dg2, {0: [0, 1]}).get_submodule("0").out_channels == 2  # an index is fine


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)
        self.block = Gate()
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.out(self.block(self.conv(x)))


class Gate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent Python: symbolic_trace cannot follow it
            return x
        return -x


def test_untraceable_model_points_at_the_construct_and_suggests_leaf_modules():
    with pytest.raises(fxprune.CaptureError) as err:
        fxprune.analyze(Branchy(), (torch.randn(1, 3, 4, 4),))
    msg = str(err.value)
    assert "module 'block' (Gate)" in msg
    assert "if x.sum() > 0" in msg
    assert "leaf_modules=['block']" in msg


def test_leaf_module_pins_its_axes_and_shows_in_report():
    model, x = Branchy(), (torch.randn(1, 3, 4, 4),)
    dg = fxprune.analyze(model, x, leaf_modules=["block"])
    assert dg.groups == []  # the only hidden axis passes through the opaque module
    report = dg.report()
    assert "no rule for Gate" in report and "no prunable group" in report
    assert fxprune.verify(model, x, leaf_modules=["block"]).passed


def test_leaf_module_that_does_not_exist():
    with pytest.raises(ValueError, match="'blok', which is not a submodule"):
        fxprune.analyze(Branchy(), (torch.randn(1, 3, 4, 4),), leaf_modules=["blok"])


def test_model_without_prunable_group_gets_a_report_not_an_exception():
    model = nn.Linear(4, 3)
    dg = fxprune.analyze(model, (torch.randn(2, 4),))
    assert dg.groups == []
    assert "no prunable group" in dg.report()
    x = torch.randn(5, 4)
    assert torch.equal(fxprune.apply(dg, {})(x), model(x))


def test_example_inputs_validation():
    dg = fxprune.analyze(small_cnn(), INPUTS[0])  # a bare tensor is one positional input
    assert len(dg.groups) == 2
    with pytest.raises(TypeError, match="tuple of positional"):
        fxprune.analyze(small_cnn(), {"x": INPUTS[0]})


def _dynamo_graph(model, x):
    captured = {}

    def backend(gm, example_inputs):
        captured["gm"], captured["inputs"] = gm, example_inputs
        return gm.forward

    torch._dynamo.reset()
    torch.compile(model, backend=backend, dynamic=False)(x)
    return captured["gm"], captured["inputs"]


def test_torch_compile_graph_with_parameters_as_placeholders():
    model, x = small_cnn(), INPUTS[0]
    gm, inputs = _dynamo_graph(model, x)
    assert sum(n.op == "placeholder" for n in gm.graph.nodes) > 1  # parameters arrive as inputs
    dg = fxprune.analyze(gm, inputs)
    assert [g.size for g in dg.groups] == [8, 12]
    assert "lifted" in dg.front_end
    keep = {g: torch.randperm(g.size) for g in dg.groups}
    pruned = fxprune.apply(dg, keep)
    out = pruned(x)
    out = out[0] if isinstance(out, (tuple, list)) else out
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)


def test_functional_graph_with_get_attr_parameters():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = nn.Parameter(torch.randn(6, 3, 3, 3))
            self.b1 = nn.Parameter(torch.randn(6))
            self.w2 = nn.Parameter(torch.randn(4, 6))

        def forward(self, x):
            y = F.relu(F.conv2d(x, self.w1, self.b1, padding=1))
            return F.linear(y.mean((2, 3)), self.w2)

    model = Functional()
    dg = fxprune.analyze(model, INPUTS)
    assert [g.size for g in dg.groups] == [6]
    assert set(dg.groups[0].members) == {("w1", 0), ("b1", 0), ("w2", 1)}
    assert fxprune.verify(model, INPUTS).passed


def test_registering_a_rule_twice_is_an_error():
    with pytest.raises(KeyError, match="already registered"):
        register(torch.relu)(lambda ctx: None)


def test_passes_do_not_import_the_policy_layer():
    for path in (ROOT / "passes").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert not node.module.startswith("fxprune") or node.module.startswith("fxprune.passes"), path
            if isinstance(node, ast.ImportFrom) and node.level >= 2 and path.parent.name == "passes":
                pytest.fail(f"{path} imports above passes/")


def test_cli_default_run_is_exact(capsys):
    from fxprune.tools.cli import main

    assert main(["--ratio", "0.4"]) == 0
    out = capsys.readouterr().out
    assert "oracles exact" in out and "DemoNet" in out
    assert main(["--ratio", "1.5"]) == 2


def test_contiguous_then_view_stays_on_meta():
    class Shuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.a(x)
            b, c, h, w = y.shape
            y = y.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, c, h, w)
            return self.b(y)

    model, x = Shuffle().eval(), (torch.randn(2, 3, 5, 5),)
    dg = fxprune.analyze(model, x)
    assert dg.result.shape_mode == "meta", dg.result.shape_mode  # no fallback to real tensors
    assert fxprune.verify(model, x).passed
