"""Clear errors for inputs users actually pass: strings, numpy indices, a group twice, meta models,
training through the torch.compile backend, dataclass outputs."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn

import fxprune


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2)).eval()


X = (torch.randn(2, 4),)


def test_one_string_is_one_name_not_letters():
    from collections import OrderedDict

    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(4, 8), act=nn.ReLU(), fc2=nn.Linear(8, 6), act2=nn.ReLU(),
                                      head=nn.Linear(6, 2))).eval()
    cfg = fxprune.PruneConfig(ignore="head", leaf_modules="fc1")
    assert cfg.ignore == ("head",) and cfg.leaf_modules == ("fc1",)
    pruned = fxprune.prune(model, X, ratio=0.5, ignore="head")  # was split into 'h', 'e', 'a', 'd'
    assert pruned.get_submodule("fc2").out_features == 6 and pruned.get_submodule("fc1").out_features == 4
    dg = fxprune.analyze(model, X, leaf_modules="fc1")  # was: "'f', which is not a submodule"
    assert [g.size for g in dg.groups] == [8, 6]
    with pytest.raises(ValueError, match="'blok', which is not a submodule"):
        fxprune.analyze(model, X, leaf_modules="blok")


def test_numpy_keep_indices_are_accepted():
    dg = fxprune.analyze(mlp(), X)
    g = dg.groups[0]
    for keep in (np.array([5, 0, 3]), [np.int64(5), np.int32(0), np.int16(3)], torch.tensor([5, 0, 3])):
        pruned = fxprune.apply(dg, {g: keep}, check=False)
        assert torch.equal(pruned.get_submodule("0").weight, dg.model[0].weight[[5, 0, 3]])
    for bad in (np.array([0.5, 1.0]), np.array([True, False])):
        with pytest.raises(fxprune.KeepIndicesError, match="integers"):
            fxprune.apply(dg, {g: bad})


def test_a_group_given_twice_is_refused():
    dg = fxprune.analyze(mlp(), X)
    with pytest.raises(fxprune.GroupMismatchError, match="G0 is given twice"):
        fxprune.apply(dg, {dg.groups[0]: [0, 1], 0: [2, 3]})


def test_meta_models_get_clear_errors_where_values_are_needed():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = (torch.empty(2, 4, device="meta"),)
    assert len(fxprune.analyze(model, x).groups) == 1  # analysis needs no values
    with pytest.raises(fxprune.MetaDeviceError, match="meta device.*to_empty"):
        fxprune.prune(model, x, ratio=0.5)
    with pytest.raises(fxprune.MetaDeviceError, match="meta device"):
        fxprune.verify(model, x)
    plan = fxprune.prune(model, x, ratio=0.5, importance="random")  # a plan without scores works
    assert plan.get_submodule("0").out_features == 4 and not plan.fxprune_certificate.checked


@dataclasses.dataclass
class Out:
    logits: torch.Tensor
    hidden: torch.Tensor


class DataclassOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return Out(self.b(h), h.sum(1))


def test_dataclass_outputs_are_compared_field_by_field():
    model = DataclassOut().eval()  # symbolic_trace records the constructor as an op without a rule: pinned
    assert fxprune.verify(model, X).passed  # crashed: "Boolean value of Tensor ... is ambiguous"
    assert fxprune.prune(model, X, ratio=0.5).fxprune_certificate.passed
    a, b = Out(torch.ones(2), torch.ones(1)), Out(torch.ones(2) * 1.5, torch.ones(1))
    assert fxprune.relative_error(a, b) == pytest.approx(0.5)


def test_training_through_the_compile_backend_is_refused_clearly():
    model = mlp()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=fxprune.backend(ratio=0.5, then="eager"))
    x = torch.randn(3, 4, requires_grad=True)
    with torch.no_grad():
        assert compiled(x).shape == (3, 2)  # inference is fine
    out = compiled(x)
    with pytest.raises(fxprune.TrainModeError, match="update nothing"):
        (out.sum() + model[0].weight.sum()).backward()  # used to run, leaving model[2] without a gradient
    model.requires_grad_(False)  # input gradients through a frozen model are fine
    compiled(x).sum().backward()
    assert x.grad is not None and x.grad.shape == (3, 4)
    torch._dynamo.reset()
