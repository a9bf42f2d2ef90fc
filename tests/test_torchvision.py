"""Every torchvision classification and segmentation model through fxprune.

For each model (weights=None, small float inputs):

* the permutation and removal oracles (``fxprune.verify``, float64) agree with the
  original to 1e-9 relative error;
* removing a third of every group (keep the first ceil(2/3 * size) coordinates) with
  ``fxprune.apply`` runs, keeps the output shapes, and lowers the parameter count.

Models ``torch.fx.symbolic_trace`` rejects are skipped with the tracer's reason.
A representative fast subset (one or two per family) runs by default; the rest
is marked ``slow`` (run with ``-m slow``).
"""
import pytest
import torch
from torch.utils._pytree import keystr, tree_flatten_with_path

import fxprune
import zoo

zoo.import_torchvision()  # skips this module if torchvision is missing

# One or two per family, chosen for speed (measured on 2 CPU cores).
FAST = {
    "alexnet", "vgg11", "squeezenet1_1", "resnet18", "resnext50_32x4d", "densenet121", "googlenet",
    "mobilenet_v2", "mobilenet_v3_large", "mnasnet0_5", "efficientnet_b0", "shufflenet_v2_x0_5",
    "regnet_y_400mf", "convnext_tiny", "swin_t",
    "fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large",
}
# Too large to analyse + verify in float64 on a small CI machine.
HUGE = {"regnet_y_128gf", "vit_h_14"}

ALL = zoo.model_names()


def _param(name):
    marks = [] if name in FAST else [pytest.mark.slow]
    if name in HUGE:
        marks.append(pytest.mark.skip(reason=f"{name} is too large for a CPU float64 oracle run"))
    return pytest.param(name, marks=marks, id=name)


MODELS = [_param(n) for n in ALL]


def _inputs(name):
    s = zoo.input_size(name)
    torch.manual_seed(1)
    return (torch.randn(2, 3, s, s),)


def _analyze_or_skip(model, inputs):
    try:
        return fxprune.analyze(model, inputs)
    except fxprune.CaptureError as e:
        pytest.skip(f"symbolic_trace rejects {type(model).__name__}: {str(e).splitlines()[0]}")


def _shapes(out):
    """{path: shape} of the output tensors; fx returns a dict where the model returns an OrderedDict."""
    leaves, _ = tree_flatten_with_path(out)
    return {keystr(path): tuple(t.shape) for path, t in leaves if isinstance(t, torch.Tensor)}


def test_fast_subset_exists():
    """The default run's subset names real models (catches torchvision renames)."""
    assert FAST <= set(ALL), sorted(FAST - set(ALL))


@pytest.mark.parametrize("name", MODELS)
def test_oracles_exact(name):
    model, inputs = zoo.build(name), _inputs(name)
    _analyze_or_skip(model, inputs)  # skip untraceable models before the float64 copy
    report = fxprune.verify(model, inputs, raise_on_mismatch=False)
    assert report.groups > 0, f"{name}: no prunable group found"
    assert report.permutation_error < 1e-9, f"{name}:\n{report}"
    assert report.removal_error < 1e-9, f"{name}:\n{report}"


@pytest.mark.parametrize("name", MODELS)
def test_remove_a_third(name):
    model, inputs = zoo.build(name), _inputs(name)
    shapes_before = {k: v.shape for k, v in model.state_dict().items()}
    dg = _analyze_or_skip(model, inputs)
    assert dg.groups, f"{name}: no prunable group found"
    pruned = fxprune.apply(dg, zoo.third_removed_keep(dg), check=False)  # test_oracles_exact certifies
    with torch.no_grad():
        ref, out = model(*inputs), pruned(*inputs)
    assert _shapes(out) == _shapes(ref)
    assert zoo.param_count(pruned) < zoo.param_count(model)
    # the analysed model is not modified
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes_before
