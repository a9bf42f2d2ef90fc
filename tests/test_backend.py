"""fxprune.backend: pruning inside torch.compile equals fxprune.prune ahead of time."""
from __future__ import annotations


import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.tools.torch_compile import (DifferentGraphError, GraphBreakError, RecompileMismatchError,  # noqa: F401
                             UnsupportedOptionError)
from fxprune.tools.demo import DemoNet, demo_inputs
from test_compile import TinyViT

VIT_INPUTS = (torch.randn(2, 3, 16, 16),)
MODELS = {"demonet": (DemoNet, demo_inputs()), "vit": (TinyViT, VIT_INPUTS)}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(name):
    torch.manual_seed(0)
    cls, inputs = MODELS[name]
    return cls().eval(), inputs


def _other_batch(inputs, n=3):
    torch.manual_seed(1)
    return (torch.randn(n, *inputs[0].shape[1:]),)


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_as_prune(name, then, **options):
    """Compile at two batch sizes (the second recompiles) and compare with fxprune.prune."""
    model, inputs = _model(name)
    before = _state(model)
    ref = fxprune.prune(model, inputs, **options)
    be = fxprune.backend(then=then, **options)
    compiled = torch.compile(model, backend=be)
    x3 = _other_batch(inputs)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*inputs), ref(*inputs), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(compiled(*x3), ref(*x3), rtol=1e-5, atol=1e-5)
    assert len(be.timings) == 2 and be.timings[1]["replayed"], be.timings  # a recompile, not a re-prune
    assert be.timings[0]["pruned_groups"] > 0
    assert fxprune.count_params(be.pruned_gm) == fxprune.count_params(ref) < fxprune.count_params(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model is not modified
    return model, be, ref


@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("name", ["demonet", "vit"])
def test_eager_then_equals_prune(name, scope):
    _same_as_prune(name, "eager", ratio=0.5, scope=scope)


def test_inductor_then_equals_prune():
    _same_as_prune("vit", "inductor", ratio=0.5, scope="global")


@pytest.mark.slow
@pytest.mark.parametrize("name, scope", [("demonet", "local"), ("demonet", "global"), ("vit", "local")])
def test_inductor_then_equals_prune_slow(name, scope):
    _same_as_prune(name, "inductor", ratio=0.5, scope=scope)


def test_options_by_module_name_type_and_instance_match_prune():
    model, _ = _model("demonet")
    _same_as_prune("demonet", "eager", ratio=0.4, scope="global", importance="bn_scale", round_to=2,
                   ignore=("head.4", nn.GroupNorm), ratios={"blocks.1": 0.25})
    model, inputs = _model("demonet")
    opts = dict(ratio=0.5, importance="l1", ignore=(model.mix, model.blocks[0].gamma))
    ref = fxprune.prune(model, inputs, **opts)
    be = fxprune.backend(then="eager", **opts)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend=be)(*inputs), ref(*inputs))
    assert be.pruned_gm.get_parameter("mix.weight").shape == model.mix.weight.shape


def test_parameters_are_frozen_copies():
    model, inputs = _model("vit")
    ref = fxprune.prune(model, inputs, ratio=0.5)
    be = fxprune.backend(ratio=0.5, then="eager")
    compiled = torch.compile(model, backend=be)
    x3 = _other_batch(inputs)
    with torch.no_grad():
        expected, expected3 = ref(*inputs), ref(*x3)  # before the edit: ref shares unpruned storage with model
        compiled(*inputs)
        ptrs = {p.data_ptr() for p in model.parameters()}
        assert not any(t.data_ptr() in ptrs for t in [*be.pruned_gm.parameters(), *be.pruned_gm.buffers()])
        assert not any(p.requires_grad for p in be.pruned_gm.parameters())
        for p in model.parameters():  # later edits of the model are not seen, not even by a recompile
            p.mul_(2.0)
        torch.testing.assert_close(compiled(*inputs), expected)
        torch.testing.assert_close(compiled(*x3), expected3)
    assert len(be.timings) == 2 and be.timings[1]["replayed"]


class _Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        torch._dynamo.graph_break()
        return self.b(h)


def test_graph_break_is_refused_with_its_location():
    be = fxprune.backend(ratio=0.5, then="eager")
    with pytest.raises(Exception) as info:
        torch.compile(_Broken(), backend=be)(torch.randn(2, 4))
    msg = str(info.value)
    assert "GraphBreakError" in msg and "graph break" in msg
    assert "test_backend.py" in msg and "graph_break()" in msg  # where the break is
    assert "torch._dynamo.explain" in msg and "fxprune.prune" in msg
    assert be.pruned_gm is None  # nothing was pruned


def test_a_second_graph_is_refused():
    be = fxprune.backend(ratio=0.5, then="eager")
    x = torch.randn(2, 4)
    with torch.no_grad():
        torch.compile(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval(), backend=be)(x)
        with pytest.raises(Exception, match="DifferentGraphError") as info:
            torch.compile(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).eval(), backend=be)(x)
    assert "0.weight" in str(info.value) and "fxprune.backend(...) per model" in str(info.value)


def test_compiled_code_reused_for_another_instance_is_refused():
    """Dynamo reuses the compiled code for another instance of the same class, with its
    parameters as inputs: the frozen pruned graph must refuse them, not compute with the first's."""
    m1 = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    m2 = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    be = fxprune.backend(ratio=0.5, then="eager")
    x = torch.randn(2, 4)
    with torch.no_grad():
        torch.compile(m1, backend=be)(x)
        with pytest.raises(DifferentGraphError, match="another module instance"):
            torch.compile(m2, backend=be)(x)


@pytest.mark.parametrize("options, what", [
    (dict(importance="taylor"), "needs gradients"),
    (dict(target_macs=0.5), "target_macs"),
    (dict(iterative_steps=3), "iterative_steps"),
    (dict(leaf_modules=("head",)), "leaf_modules"),
])
def test_options_that_need_more_than_the_graph_are_refused(options, what):
    with pytest.raises(UnsupportedOptionError, match=what) as info:
        fxprune.backend(then="eager", **options)
    assert "fxprune.prune(model, example_inputs" in str(info.value)


def test_callable_then_gets_the_pruned_graph_without_parameter_inputs():
    seen = {}

    def then(gm, example_inputs):
        seen["n_inputs"] = len(example_inputs)
        seen["placeholders"] = sum(n.op == "placeholder" for n in gm.graph.nodes)
        return gm.forward

    model, inputs = _model("demonet")
    with torch.no_grad():
        torch.compile(model, backend=fxprune.backend(ratio=0.5, then=then), dynamic=False)(*inputs)
    assert seen == {"n_inputs": 1, "placeholders": 1}
