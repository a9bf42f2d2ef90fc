"""One function cuts a tensor by a keep: the rewrite pass and the streamed checkpoint rewrite share it."""
import torch

import fxprune
from fxprune.passes import cut_tensor


def _analysed():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 5)).eval()
    return fxprune.analyze(net, (torch.randn(2, 3, 6, 6),))


def test_cut_tensor_gives_the_rewrite_pass_tensors():
    dg = _analysed()
    (g,) = dg.groups
    keep = {g.atom: torch.tensor([6, 1, 4])}
    pruned = fxprune.apply(dg, {g: [6, 1, 4]}, check=False)
    state = dict(pruned.named_parameters()) | dict(pruned.named_buffers())
    for name in dg.param_names:
        t = dg.gm.get_parameter(name) if name in dict(dg.gm.named_parameters()) else dg.gm.get_buffer(name)
        assert torch.equal(cut_tensor(t.detach(), dg.param_use(name).dims, keep), state[name]), name
    assert state["4.weight"].shape == (5, 3 * 16) and state["4.weight"].is_contiguous()


def test_untouched_tensor_is_returned_itself_and_the_streamer_uses_cut_tensor():
    from fxprune.hf.engine import rewrite_tensor

    dg = _analysed()
    w = dg.gm.get_parameter("4.weight").detach()
    assert cut_tensor(w, dg.param_use("4.weight").dims, {}) is w
    keep = {dg.groups[0].atom: torch.tensor([0, 7])}
    dims = dg.param_use("4.weight").dims
    assert torch.equal(rewrite_tensor(w, dims, keep), cut_tensor(w, dims, keep))
    assert rewrite_tensor(w, dims, keep).shape == (5, 32)
