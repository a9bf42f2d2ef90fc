"""Trust on real workflows: training mode, never mutating the input, checked captures, certificates."""
from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune.passes import register
from fxprune.passes.rules.pointwise import passthrough


def _state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model: nn.Module, state: dict) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


class ConvBNDrop(nn.Module):
    """BatchNorm and Dropout as modules: symbolic_trace keeps them mode-aware."""

    def __init__(self):
        super().__init__()
        self.a, self.bn, self.drop, self.b = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Dropout(0.3), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(self.drop(F.relu(self.bn(self.a(x)))))


class FunctionalDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(F.dropout(F.relu(self.a(x)), 0.5, self.training))


class DataDependentBN(nn.Module):
    """Only torch.export captures it (data-dependent Python): an aten graph."""

    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.bn(self.a(x))
        if y.shape[0] > 0:  # symbolic_trace cannot follow a branch on a size
            y = F.relu(y)
        return self.b(y)


def _trained_bn(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():  # non-trivial running statistics, then back to train mode
        for _ in range(3):
            model.train()(torch.randn(4, 3, 8, 8) * 3 + 1)
    model.bn.num_batches_tracked.zero_()
    return model.train()


X = (torch.randn(2, 3, 8, 8),)


# -- item 3: training mode -------------------------------------------------------------------


def test_traced_model_trains_like_the_original_and_the_original_is_untouched():
    model = _trained_bn(ConvBNDrop())
    state = _state(model)
    dg = fxprune.analyze(model, X)
    assert dg.train_refused is None
    pruned = fxprune.apply(dg, {})  # nothing removed: must compute exactly what the original computes
    assert pruned.training and pruned.get_submodule("bn").training  # the original's flags
    assert model.training and all(m.training for m in model.modules()) and _same_state(model, state)
    x = torch.randn(3, 3, 8, 8)
    ref, twin = copy.deepcopy(model), pruned
    for mode in ("train", "eval", "train"):
        getattr(ref, mode)(), getattr(twin, mode)()
        with torch.random.fork_rng():
            torch.manual_seed(1)
            expected = ref(x)
        with torch.random.fork_rng():
            torch.manual_seed(1)
            got = twin(x)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # BatchNorm statistics moved in train mode (twice), as in the original
    assert int(twin.get_submodule("bn").num_batches_tracked) == 2
    torch.testing.assert_close(twin.get_submodule("bn").running_mean, ref.bn.running_mean)


def test_graph_that_froze_self_training_refuses_train():
    model = FunctionalDropout().train()
    dg = fxprune.analyze(model, (torch.randn(2, 4),))
    assert "self.training" in dg.train_refused and "dropout" in dg.train_refused
    with pytest.warns(UserWarning, match="eval mode"):
        pruned = fxprune.apply(dg, {dg.groups[0]: [0, 2, 4, 6]})
    assert not pruned.training and model.training
    x, keep = torch.randn(5, 4), [0, 2, 4, 6]
    with torch.no_grad():
        expected = F.linear(F.relu(model.a(x))[:, keep], model.b.weight[:, keep], model.b.bias)  # eval: no dropout
        torch.testing.assert_close(pruned.eval()(x), expected)
    with pytest.raises(fxprune.TrainModeError, match="F.dropout"):
        pruned.train()
    with pytest.raises(fxprune.TrainModeError):
        copy.deepcopy(pruned).train()
    buf = io.BytesIO()
    torch.save(pruned, buf)
    unpickled = torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    torch.testing.assert_close(unpickled(x), pruned(x))
    with pytest.raises(fxprune.TrainModeError):
        unpickled.train()
    # still refused after re-analysis (iterative pruning) of the pruned graph
    again = fxprune.apply(fxprune.analyze(pruned, (torch.randn(2, 4),)), {})
    with pytest.raises(fxprune.TrainModeError):
        again.train()


def test_the_train_mode_retrace_runs_only_where_a_traced_forward_reads_training(monkeypatch):
    import fxprune.capture.frontends as frontends
    calls = []
    real = frontends.mode_difference
    monkeypatch.setattr(frontends, "mode_difference", lambda *a: calls.append(1) or real(*a))
    model = ConvBNDrop().train()  # BatchNorm and Dropout are leaves: their reads happen at run time
    assert fxprune.analyze(model, X).train_refused is None and calls == []
    assert type(model.bn) is nn.BatchNorm2d and all(type(m).__module__ != __name__ or type(m) is ConvBNDrop
                                                    for m in model.modules())  # classes untouched
    assert fxprune.analyze(FunctionalDropout(), (torch.randn(2, 4),)).train_refused and calls == [1]


def test_export_graph_of_a_train_mode_model_is_captured_in_eval_mode():
    model = _trained_bn(DataDependentBN())
    state = _state(model)
    dg = fxprune.analyze(model, X)
    assert "torch.export" in dg.front_end and "torch.export" in dg.train_refused
    pruned = fxprune.apply(dg, {})
    assert model.training and _same_state(model, state)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        expected = copy.deepcopy(model).eval()(x)
        torch.testing.assert_close(pruned.eval()(x), expected, rtol=1e-5, atol=1e-6)  # was 0.97 off
    with pytest.raises(fxprune.TrainModeError, match="torch.export"):
        pruned.train()


# -- item 4: the input model is never mutated -------------------------------------------------------


def test_counting_pruning_and_timing_do_not_touch_a_train_mode_model():
    model = _trained_bn(ConvBNDrop())
    state = _state(model)
    small = fxprune.prune(model, X, target_macs=0.6, tolerance=0.2)
    fxprune.count_macs(model, X), fxprune.count(model, X), fxprune.latency(model, X, repeats=2, warmup=1)
    fxprune.compare(model, small, X)
    fxprune.prune(model, X, ratio=0.5, iterative_steps=2)
    assert int(model.bn.num_batches_tracked) == 0 and _same_state(model, state)
    assert all(m.training for m in model.modules())


class CountingNorm(nn.Module):
    """timm's BatchNormAct2d: a traced (non-leaf) forward that counts batches in training mode."""

    def __init__(self, c: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.register_buffer("num_batches_tracked", torch.tensor(0))

    def forward(self, x):
        if self.training:
            self.num_batches_tracked.add_(1)
        return x * self.weight[:, None, None]


class CountingNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.norm, self.b = nn.Conv2d(3, 8, 3), CountingNorm(8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(self.norm(self.a(x)))


def test_the_train_mode_retrace_writes_no_buffer_of_the_model():
    model = CountingNet().eval()  # found on timm's ghostnet_100: analyze moved num_batches_tracked 0 -> 1
    state = _state(model)
    fxprune.analyze(model, X)  # the forward reads training: retraced in train mode to compare
    assert _same_state(model, state) and int(model.norm.num_batches_tracked) == 0
    fxprune.prune(model, X, ratio=0.5)
    assert _same_state(model, state)


def test_gradient_statistics_flip_no_flag_even_for_a_moment():
    model = ConvBNDrop().train()
    state, seen = _state(model), []
    model.bn.register_forward_pre_hook(lambda m, args: seen.append(model.bn.training))  # the original's flag
    data = [(torch.randn(4, 3, 8, 8), torch.randn(4, 4, 6, 6))]
    loss = lambda m, b: F.mse_loss(m(b[0]), b[1])  # noqa: E731
    fxprune.prune(model, X, ratio=0.5, importance="taylor", data=data, loss_fn=loss)
    assert _same_state(model, state) and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert seen and all(seen)  # hooks ran on eval-mode copies; the model itself stayed in train mode


# -- item 5: the removal oracle zeroes buffers too -----------------------------------------------


class BufferWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.register_buffer("w", torch.randn(4, 8, 3, 3))

    def forward(self, x):
        return F.conv2d(F.relu(self.a(x)), self.w, padding=1)


def test_removal_oracle_with_a_buffer_as_conv_weight():
    model = BufferWeight().eval()
    report = fxprune.verify(model, X)  # was a false OracleMismatchError
    assert report.passed and report.removal_groups == 1


# -- item 8: a trace of the wrong branch falls back to torch.export -------------------------------


class IsInstanceSkip(nn.Module):
    """``torch.jit.isinstance`` is False for a Proxy: symbolic_trace skips the concat."""

    def __init__(self, fuse: str):
        super().__init__()
        self.fuse = fuse
        self.enc = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.out = nn.Conv2d(16 if fuse == "cat" else 8, 4, 1)

    def forward(self, x):
        skip = F.relu(self.enc(x))
        y = F.relu(self.mid(skip))
        if torch.jit.isinstance(skip, torch.Tensor):
            y = torch.cat([y, skip], 1) if self.fuse == "cat" else y + skip
        return self.out(y)


@pytest.mark.parametrize("fuse", ["cat", "add"])
def test_wrong_branch_trace_falls_back_to_export(fuse):
    model = IsInstanceSkip(fuse).eval()
    dg = fxprune.analyze(model, X)  # "cat": shape propagation failed; "add": the outputs differed
    assert dg.front_end.startswith("torch.export") and "symbolic_trace was not used" in dg.front_end
    assert fxprune.verify(model, X).passed
    pruned = fxprune.prune(model, X, ratio=0.5)
    assert pruned.fxprune_certificate.passed


def test_shape_propagation_failure_falls_back_to_export(monkeypatch):
    import fxprune.capture.frontends as frontends
    monkeypatch.setattr(frontends, "_trace_mismatch", lambda *a: None)  # as on meta, where values cannot be compared
    dg = fxprune.analyze(IsInstanceSkip("cat").eval(), X)
    assert dg.front_end.startswith("torch.export") and "fails shape propagation" in dg.front_end


def test_meta_model_skips_the_numeric_trace_check():
    with torch.device("meta"):
        model = ConvBNDrop().eval()
    dg = fxprune.analyze(model, (torch.empty(2, 3, 8, 8, device="meta"),))
    assert dg.front_end == "torch.fx.symbolic_trace" and len(dg.groups) == 1


def test_model_that_does_not_run_on_its_example_says_so():
    with pytest.raises(fxprune.ExampleInputError, match=r"does not run on the example inputs \(\(2, 3, 8\) float"):
        fxprune.analyze(ConvBNDrop().eval(), (torch.randn(2, 3, 8),))
    with pytest.raises(fxprune.ExampleInputError, match="does not run"):  # through torch.export (keywords)
        fxprune.analyze(DataDependentBN().eval(), (), {"x": torch.randn(2, 3, 8)})


# -- certified by default ---------------------------------------------------------------------------


def flip_channels(x):
    return x.flip(1)


fx.wrap("flip_channels")
register(flip_channels)(passthrough)  # a deliberately wrong rule: flipping channels is not a passthrough


class Flipped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(flip_channels(self.a(x)))


def test_prune_and_apply_carry_a_float64_certificate():
    model = ConvBNDrop().eval()
    pruned = fxprune.prune(model, X, ratio=0.5)
    cert = pruned.fxprune_certificate
    assert pruned.meta["fxprune.certificate"] is cert
    assert cert.passed and cert.checked and cert.oracle == "permutation" and cert.dtype == "float64"
    assert cert.error <= 1e-12 and cert.rtol == 1e-9 and cert.groups == 1 and cert.seconds > 0
    assert "exact (float64" in str(cert)
    assert copy.deepcopy(pruned).meta["fxprune.certificate"] == cert
    assert not hasattr(fxprune.prune(model, X, ratio=0.5, check=False), "fxprune_certificate")
    dg = fxprune.analyze(model, X)
    assert fxprune.apply(dg, {}).fxprune_certificate.passed
    assert not hasattr(fxprune.apply(dg, {}, check=False), "fxprune_certificate")


def test_a_wrong_rule_makes_prune_raise_instead_of_returning_a_model():
    model = Flipped().eval()
    with pytest.raises(fxprune.OracleMismatchError, match="misses a coupling"):
        fxprune.prune(model, (torch.randn(3, 4),), ratio=0.5)
    cert = fxprune.certify(fxprune.analyze(model, (torch.randn(3, 4),)), raise_on_mismatch=False)
    assert not cert.passed and cert.error > 1e-3 and "MISMATCH" in str(cert)


def test_large_models_are_certified_in_float32_and_say_why():
    dg = fxprune.analyze(ConvBNDrop().eval(), X)
    cert = fxprune.certify(dg, max_bytes=1000)
    assert cert.passed and cert.dtype == "float32" and cert.rtol == 1e-3 and "does not fit" in cert.note
    with pytest.raises(fxprune.OracleMismatchError):  # float32 still catches a missed coupling
        fxprune.certify(fxprune.analyze(Flipped().eval(), (torch.randn(3, 4),)), max_bytes=100)


def test_meta_models_are_not_certified_and_say_so():
    with torch.device("meta"):
        model = ConvBNDrop().eval()
    dg = fxprune.analyze(model, (torch.empty(2, 3, 8, 8, device="meta"),))
    cert = fxprune.apply(dg, {dg.groups[0]: [0, 1]}).fxprune_certificate
    assert not cert.checked and cert.passed and "meta device" in str(cert)
