"""The data contract between the passes and the policy layer.

* typed rewrite instructions (``ArgEdit``/``AttrEdit`` say how many layouts they hold);
* the validate step where the rewrite is entered (``rewrite_graph``, ``PruneRewritePass``,
  ``fxprune.apply``);
* one error base (``PassError``) under ``FxPruneError``;
* ``analyze_block``: the public analysis of a graph with open boundaries;
* the public view of parameter uses (``dg.param_use``, ``group.layouts``, producers/consumers).
"""
import dataclasses

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import fxprune
from fxprune.passes import (ArgEdit, AttrEdit, InvalidKeepError, Layout, MissingAnalysisError, PassError,
                            ShapePropagationError, analyze_block, analyze_graph, get_channel_meta, rewrite_graph)
from fxprune.passes.infra import ChannelAnalysisPass, PruneRewritePass


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.LayerNorm(6), nn.Linear(6, 2)).eval()


X = (torch.randn(3, 4),)


# -- typed instructions ------------------------------------------------------------------------
def test_attr_edits_say_whether_they_hold_one_layout_or_several():
    result = analyze_graph(fx.symbolic_trace(mlp()), X)
    metas = {n.target: get_channel_meta(n) for n in result.gm.graph.nodes if n.op == "call_module"}
    norm = {e.name: e for e in metas["3"].attr_edits}["normalized_shape"]
    assert norm.many and len(norm.layouts) == 1 and isinstance(norm.layouts[0], Layout)
    linear = {e.name: e for e in metas["0"].attr_edits}
    assert not linear["out_features"].many and linear["out_features"].layouts[0].size == 8


def test_node_metadata_is_plain_frozen_data():
    result = analyze_graph(fx.symbolic_trace(mlp()), X)
    for node in result.gm.graph.nodes:
        meta = get_channel_meta(node)
        fields = {f.name: getattr(meta, f.name) for f in dataclasses.fields(meta) if f.name != "retarget"}
        assert not any(callable(v) for v in fields.values()), node  # retarget names an op: data
        with pytest.raises(dataclasses.FrozenInstanceError):
            meta.value = None
    out = get_channel_meta(next(n for n in result.gm.graph.nodes if n.target == "2")).value
    assert out.shape == (3, 6) and [d.size for d in out.dims] == [3, 6] and isinstance(out.dims[1], Layout)


def test_inplace_syncs_the_attributes_the_rewrite_recomputed():
    model = mlp()
    dg = fxprune.analyze(model, X)  # symbolic_trace: call_module nodes carry AttrEdits
    keep = {g: [0, 2] for g in dg.groups}
    graph = fxprune.apply(dg, keep)
    assert fxprune.apply(dg, keep, inplace=True) is model
    assert (model[0].out_features, model[2].in_features, model[3].normalized_shape) == (2, 2, (2,))
    with torch.no_grad():
        torch.testing.assert_close(model(*X), graph(*X))


def test_instruction_records_refuse_the_wrong_number_of_layouts():
    one = Layout(((),))
    with pytest.raises(ValueError, match="holds 1 layout"):
        ArgEdit(("args", 1), (one, one), "size")
    with pytest.raises(ValueError, match="unknown ArgEdit kind"):
        ArgEdit(("args", 1), (one,), "sizez")
    with pytest.raises(ValueError, match="needs one layout"):
        AttrEdit("in_features", (one, one), many=False)
    assert ArgEdit(("args", 1), (one, one, one), "sizes").layouts == (one, one, one)


# -- validate --------------------------------------------------------------------------------
@pytest.fixture
def analysed():
    return analyze_graph(fx.symbolic_trace(mlp()), X)


@pytest.mark.parametrize("keep, fragment", [
    ([0, 1, 1], "repeat [1]"),  # used to duplicate channel 1 silently
    ([0, 8], "out of range"),  # used to raise a bare IndexError
    ([], "empty"),
    (torch.tensor([0.0, 1.0]), "integer tensor"),
    ([[0, 1]], "integers"),
])
def test_rewrite_graph_validates_keep_indices(analysed, keep, fragment):
    atom = analysed.group_atoms[0]
    with pytest.raises(InvalidKeepError) as err:
        rewrite_graph(analysed.gm, {atom: keep})
    assert fragment in str(err.value) and f"atom {atom}" in str(err.value) and "range(8)" in str(err.value)


def test_rewrite_graph_refuses_unknown_and_pinned_atoms(analysed):
    with pytest.raises(InvalidKeepError, match="not groups of this graph"):
        rewrite_graph(analysed.gm, {10 ** 6: [0]})
    pinned = next(a for a in analysed.pinned if analysed.axes.size(a) > 1)  # the graph input's features
    with pytest.raises(InvalidKeepError, match="pinned"):
        rewrite_graph(analysed.gm, {pinned: [0]})


def test_prune_rewrite_pass_validates_the_plan():
    gm = fx.symbolic_trace(mlp())
    ChannelAnalysisPass(X)(gm)
    atom = gm.meta["fxprune"].group_atoms[0]
    with pytest.raises(InvalidKeepError, match="repeat"):
        PruneRewritePass({atom: [2, 2]})(gm)
    pruned = PruneRewritePass({atom: [7, 0]})(gm).graph_module
    assert pruned.get_submodule("0").out_features == 2


def test_apply_reports_the_same_check_in_its_own_terms():
    dg = fxprune.analyze(mlp(), X)
    with pytest.raises(fxprune.KeepIndicesError) as err:
        fxprune.apply(dg, {dg.groups[0]: [3, 3]})
    assert "G0 repeat [3]" in str(err.value).replace("for G0 ", "G0 ")
    assert isinstance(err.value, InvalidKeepError) and isinstance(err.value, ValueError)


def test_one_error_base():
    for cls in (fxprune.FxPruneError, fxprune.CaptureError, fxprune.KeepIndicesError, fxprune.GroupMismatchError,
                fxprune.OracleMismatchError, ShapePropagationError, MissingAnalysisError, InvalidKeepError):
        assert issubclass(cls, PassError), cls
    with pytest.raises(PassError):
        rewrite_graph(fx.symbolic_trace(mlp()), {})  # not analysed: MissingAnalysisError


# -- open boundaries -------------------------------------------------------------------------
def test_analyze_block_leaves_inputs_and_outputs_open():
    block = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6))
    closed = analyze_graph(fx.symbolic_trace(block), X)
    opened = analyze_block(fx.symbolic_trace(block), X)
    assert [closed.axes.size(a) for a in closed.group_atoms] == [8]
    assert sorted(opened.axes.size(a) for a in opened.group_atoms) == [4, 6, 8]
    (inp,), (out,) = opened.inputs, opened.outputs
    assert inp.shape == (3, 4) and out.shape == (3, 6)
    assert [a for d in out.dims for a in d.atoms() if a.size > 1][0].pinned is False
    assert closed.inputs == () and closed.outputs == ()


# -- the public view of parameter uses ------------------------------------------------------------
class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn, self.c2 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 3)
        self.fc = nn.Linear(5 * 2 * 2, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.c2(torch.relu(self.bn(self.c1(x)))), 1))


def test_group_members_by_role_with_layouts():
    dg = fxprune.analyze(ConvNet().eval(), (torch.randn(1, 3, 6, 6),))
    g4, g5 = sorted(dg.groups, key=lambda g: g.size)
    assert [(m.param, m.dim) for m in g4.consumers] == [("c2.weight", 1)]
    assert {m.param for m in g4.producers} == {"c1.weight", "c1.bias", "bn.weight", "bn.bias", "bn.running_mean",
                                               "bn.running_var"}
    assert [(m.param, m.dim) for m in g4.layouts] == list(g4.members)
    (fc,) = g5.consumers
    assert (fc.param, fc.dim, fc.shape, fc.role) == ("fc.weight", 1, (3, 20), "consumes")
    assert fc.layout.coordinate_map(g5.atom).tolist() == [c for c in range(5) for _ in range(4)]  # C x H*W
    assert dg.format_layout(fc.layout) == f"{g5.name} x [2] x [2]"
    with pytest.raises(dataclasses.FrozenInstanceError):
        fc.role = "produces"


def test_param_use_and_names():
    dg = fxprune.analyze(ConvNet().eval(), (torch.randn(1, 3, 6, 6),))
    assert dg.param_names[:2] == ("c1.weight", "c1.bias") and "bn.running_var" in dg.param_names
    use = dg.param_use("c2.weight")
    assert use.role(0) == "produces" and use.role(1) == "consumes"
    assert [lay.size for lay in use.dims] == [5, 4, 3, 3]
    with pytest.raises(KeyError, match="param_names"):
        dg.param_use("c3.weight")
    g = dg.groups[0]
    assert dg.group_of(g.atom) is g and dg.group_of(-1) is None
