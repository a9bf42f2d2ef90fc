"""Depth pruning: removable branches (known answers on hand-made graphs), their oracle, block criteria, the API."""
import copy

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import fxprune
from fxprune.passes import analyze_graph, find_blocks, find_branches, remove_branches, silence_branches


def _graph(model, *shape):
    return analyze_graph(fx.symbolic_trace(model), (torch.randn(*shape),)).gm


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Linear(4, 4)

    def forward(self, x):
        return x + self.f(x)


class Nested(nn.Module):
    """x + (g(x) + k(g(x))): the outer branch holds an inner residual."""

    def __init__(self):
        super().__init__()
        self.g, self.k = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        h = self.g(x)
        return x + (h + self.k(h))


class FeedsTwo(nn.Module):
    """t = f(x) enters two adds: removing it from one would change the other."""

    def __init__(self):
        super().__init__()
        self.f = nn.Linear(4, 4)

    def forward(self, x):
        t = self.f(x)
        return (x + t) + t


class Parallel(nn.Module):
    """f(x) + g(x): two paths, no skip."""

    def __init__(self):
        super().__init__()
        self.f, self.g = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.f(x) + self.g(x)


class Bottleneck(nn.Module):
    def __init__(self, c, downsample=False):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, 4, 1), nn.BatchNorm2d(4)
        out = 2 * c if downsample else c
        self.conv2, self.bn2 = nn.Conv2d(4, out, 3, padding=1), nn.BatchNorm2d(out)
        self.down = nn.Conv2d(c, 2 * c, 1) if downsample else None

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class ResNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.layer1 = nn.Sequential(Bottleneck(4, downsample=True), Bottleneck(8), Bottleneck(8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.layer1(self.stem(x)).mean((2, 3)))


class Layer(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.ln1, self.attn, self.ln2 = nn.LayerNorm(d), nn.MultiheadAttention(d, 2, batch_first=True), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 16), nn.GELU(), nn.Linear(16, d))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class Decoder(nn.Module):
    def __init__(self, n=4, d=8):
        super().__init__()
        self.emb = nn.Linear(6, d)
        self.layers = nn.ModuleList(Layer(d) for _ in range(n))
        self.head = nn.Linear(d, 6)

    def forward(self, x):
        x = self.emb(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


XD = (torch.randn(2, 5, 6),)
XR = (torch.randn(2, 3, 8, 8),)


def test_residual_branch_is_found():
    [br] = find_branches(_graph(Residual(), 2, 4))
    assert (br.add, br.skip, br.out, br.params) == ("add", "x", "f", ("f.bias", "f.weight"))


def test_nested_residual_has_two_branches_the_outer_holding_the_inner():
    outer, inner = sorted(find_branches(_graph(Nested(), 2, 4)), key=lambda b: -len(b.nodes))
    assert (outer.skip, inner.skip, inner.out) == ("x", "g", "k")
    assert inner.nodes < outer.nodes and "g" in outer.nodes and "g" not in inner.nodes


@pytest.mark.parametrize("model", [FeedsTwo(), Parallel()])
def test_branch_feeding_two_adds_and_parallel_paths_are_not_removable(model):
    assert find_branches(_graph(model, 2, 4)) == []


def test_bottleneck_residual_branches_but_not_the_downsampling_one():
    gm = _graph(ResNetish(), *XR[0].shape)
    assert [b.name for b in find_blocks(gm)] == ["layer1.1", "layer1.2"]


def test_decoder_layers_are_blocks_of_two_branches():
    blocks = find_blocks(_graph(Decoder(), *XD[0].shape))
    assert [b.name for b in blocks] == [f"layers.{i}" for i in range(4)]
    assert all(len(b.branches) == 2 for b in blocks)
    assert any("attn" in p for p in blocks[0].branches[0].params)
    assert all(p.startswith("layers.0.mlp") or p.startswith("layers.0.ln2") for p in blocks[0].branches[1].params)


@pytest.mark.parametrize("model,x", [(Decoder(), XD), (ResNetish(), XR), (Nested(), (torch.randn(2, 4),))])
def test_removal_equals_the_branch_zeroed_exactly(model, x):
    gm = analyze_graph(fx.symbolic_trace(model.eval().double()), tuple(t.double() for t in x)).gm
    x = tuple(t.double() for t in x)
    for blocks in ([find_blocks(gm)[0]], find_blocks(gm)):
        branches = [br for b in blocks for br in b.branches]
        pruned, silenced = remove_branches(gm, branches), silence_branches(gm, branches)
        assert torch.equal(pruned(*x), silenced(*x))
        assert not torch.equal(pruned(*x), gm(*x))
        gone = {p for b in blocks for p in b.params}
        assert gone and not gone & {n for n, _ in pruned.named_parameters()}
        assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in gm.parameters())


@pytest.mark.parametrize("model,x,depth", [(Decoder(), XD, 0.5), (ResNetish(), XR, 1), (Decoder(), XD, ("layers.3",))])
def test_both_oracles_with_blocks_removed(model, x, depth):
    rep = fxprune.verify(model, x, depth=depth)
    assert rep.passed and rep.blocks and rep.permutation_error < 1e-12 and rep.removal_error < 1e-12, str(rep)


def test_prune_depth_ratio_removes_that_share_of_blocks_and_leaves_the_model_alone():
    model = Decoder().eval()
    before = copy.deepcopy(model.state_dict())
    small = fxprune.prune(model, XD, ratio=0.0, depth_ratio=0.25, block_importance="last")
    names = {n for n, _ in small.named_parameters()}
    assert not any(n.startswith("layers.3.") for n in names) and any(n.startswith("layers.2.") for n in names)
    per_layer = sum(p.numel() for p in model.layers[3].parameters())
    assert sum(p.numel() for p in small.parameters()) == sum(p.numel() for p in model.parameters()) - per_layer
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert small(*XD).shape == model(*XD).shape


def test_depth_and_width_in_one_call():
    model = Decoder().eval()
    step = fxprune.prune_step(fxprune.analyze(model, XD), ratio=0.5, depth_ratio=2, block_importance="random")
    assert len(step.blocks) == 2 and step.certificate.passed
    assert step.model.get_submodule(f"layers.{next(i for i in range(4) if f'layers.{i}' not in step.blocks)}.mlp.0") \
        .out_features == 8
    assert step.model(*XD).shape == (2, 5, 6)


def _dead_block_decoder():
    """layers.1's branches output zeros: it does not turn the residual stream at all."""
    model = Decoder().eval()
    with torch.no_grad():
        model.layers[1].attn.out_proj.weight.zero_()
        model.layers[1].attn.out_proj.bias.zero_()
        model.layers[1].mlp[2].weight.zero_()
        model.layers[1].mlp[2].bias.zero_()
    return model


@pytest.mark.parametrize("criterion", ["angular", "cosine", "loss"])
def test_calibrated_and_loss_criteria_rank_a_dead_block_last(criterion):
    model = _dead_block_decoder()
    data = [torch.randn(2, 5, 6) for _ in range(2)]
    target = [model(x).detach() + 0.1 * torch.randn(2, 5, 6) for x in data]
    batches = list(zip(data, target))
    dg = fxprune.analyze(model, XD)
    loss_fn = lambda m, b: nn.functional.mse_loss(m(b[0]), b[1])  # noqa: E731
    scores = fxprune.score_blocks(dg, criterion, data=batches if criterion == "loss" else data, loss_fn=loss_fn)
    assert min(scores, key=scores.get) == "layers.1"
    assert abs(scores["layers.1"]) < 1e-6 and all(v > 1e-4 for k, v in scores.items() if k != "layers.1")
    assert [b.name for b in fxprune.select_blocks(dg, 1, scores)] == ["layers.1"]


def test_depth_options_are_validated_with_clear_errors():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        fxprune.PruneConfig(depth_ratio=1.5)
    with pytest.raises(ValueError, match="block_importance"):
        fxprune.PruneConfig(depth_ratio=0.25, block_importance="nope")
    dg = fxprune.analyze(Decoder(), XD)
    with pytest.raises(ValueError, match="not removable blocks.*layers.0"):
        fxprune.select_blocks(dg, ("layers.9",))
    with pytest.raises(ValueError, match="has 4 removable blocks"):
        fxprune.select_blocks(dg, 5, fxprune.score_blocks(dg, "last"))


RES_FILE = '''
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
                                    for _ in range(4))
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = x + b(x)
        return self.out(x)

def make():
    torch.manual_seed(0)
    return Net().eval(), (torch.randn(2, 5, 6),)
'''


def test_cli_depth_ratio(tmp_path, capsys):
    from fxprune.tools.cli import main
    path = tmp_path / "res_models.py"
    path.write_text(RES_FILE)
    code = main([f"{path}:make", "--ratio", "0", "--depth-ratio", "0.5", "-q", "--latency-runs", "0"])
    out = capsys.readouterr().out
    assert code == 0 and "2 blocks removed" in out and "oracles exact" in out, out
    per_block = 8 * 2 + 8 * 16 + 16 + 16 * 8 + 8
    total = 6 * 8 + 8 + 4 * per_block + 8 * 3 + 3
    assert f"params {total} -> {total - 2 * per_block}" in out, out
    code = main([f"{path}:make", "--depth-ratio", "1.5", "-q", "--latency-runs", "0"])
    assert code == 2 and "[0, 1)" in capsys.readouterr().err
