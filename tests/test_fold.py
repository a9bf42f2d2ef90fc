"""Folded capture (``analyze(..., fold=True)``): a repeated block is captured once.

Folding must change nothing but cost: the groups equal those of the unfolded
analysis, both oracles pass, the pruned model equals the one the unfolded
analysis emits for the same keep, and in-place pruning works through it. The
top-level graph holds one op per block call however deep the model is, and
blocks that differ are never folded together.
"""
import os
import sys

import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.passes import fold_registry

sys.path.insert(0, os.path.dirname(__file__))
from zoo import import_torchvision  # noqa: E402

import_torchvision()
T = pytest.importorskip("transformers")
T.logging.set_verbosity_error()

V = 64


def ids(b, n):
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(b * 100 + n))


def llama(layers=3):
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return T.LlamaForCausalLM(cfg).eval()


def signature(dg) -> list:
    return sorted((g.size, tuple(sorted(g.members))) for g in dg.groups)


def folded_ops(dg) -> list:
    return [n for n in dg.gm.graph.nodes if n.target == torch.ops.fxprune.folded_block.default]


def keep_by_members(dg, source) -> dict:
    """The same keep for both analyses: a group is named by its members."""
    by_members = {tuple(sorted(g.members)): g for g in dg.groups}
    return {by_members[tuple(sorted(g.members))]: idx for g, idx in source.items()}


LLAMA_KW = dict(input_ids=ids(2, 7), use_cache=False)


def test_llama_same_groups_one_block_captured():
    m = llama(3)
    folded, plain = fxprune.analyze(m, (), LLAMA_KW, fold=True), fxprune.analyze(m, (), LLAMA_KW)
    assert signature(folded) == signature(plain)
    assert "3 repeated blocks folded: 1 distinct" in folded.front_end, folded.front_end
    assert len(folded_ops(folded)) == 3 and len(fold_registry(folded.gm).blocks) == 1
    # the block's own nodes are not in the top-level graph
    assert len(folded.gm.graph.nodes) < len(plain.gm.graph.nodes) / 2


def test_top_level_graph_does_not_grow_with_block_nodes():
    small, deep = (fxprune.analyze(llama(n), (), LLAMA_KW, fold=True) for n in (2, 6))
    # one folded_block and one getitem per extra layer, whatever the block holds
    assert len(deep.gm.graph.nodes) - len(small.gm.graph.nodes) == 2 * 4
    # per layer: kv heads, q heads per kv head, v head dim, MLP; shared: the stream and the rotary half
    assert len(small.groups) == 2 + 2 * 4 and len(deep.groups) == 2 + 6 * 4


def test_llama_oracles_exact_folded():
    rep = fxprune.verify(llama(3), (), LLAMA_KW, fold=True, raise_on_mismatch=False)
    assert rep.passed and 0 < rep.permutation_error < 1e-9 and rep.removal_error < 1e-9, str(rep)


def test_folded_pruned_model_equals_unfolded_pruned_model():
    m = llama(3)
    plain, folded = fxprune.analyze(m, (), LLAMA_KW), fxprune.analyze(m, (), LLAMA_KW, fold=True)
    gen = torch.Generator().manual_seed(1)
    keep = {g: torch.randperm(g.size, generator=gen)[: max(1, 2 * g.size // 3)] for g in plain.groups}
    a, b = fxprune.apply(plain, keep), fxprune.apply(folded, keep_by_members(folded, keep))
    assert not folded_ops(type("D", (), {"gm": b})())  # every folded op became a block call
    assert isinstance(b.get_submodule("model.layers.1"), torch.fx.GraphModule)
    with torch.no_grad():
        torch.testing.assert_close(b(**LLAMA_KW).logits, a(**LLAMA_KW).logits, rtol=1e-5, atol=1e-6)
    assert sum(p.numel() for p in b.parameters()) == sum(p.numel() for p in a.parameters())


def test_llama_inplace_through_folded_analysis():
    m = llama(3)
    dg = fxprune.analyze(m, (), LLAMA_KW, fold=True)
    keep = {g: list(range(0, 48, 2)) for g in dg.groups if g.size == 48}  # every MLP, by half
    assert len(keep) == 3
    graph = fxprune.apply(dg, keep)
    assert fxprune.apply(dg, keep, inplace=True) is m
    assert all(layer.mlp.up_proj.weight.shape == (24, 32) for layer in m.model.layers)
    with torch.no_grad():
        torch.testing.assert_close(m(**LLAMA_KW).logits, graph(**LLAMA_KW).logits)
        assert m(input_ids=ids(3, 11), use_cache=False).logits.shape == (3, 11, V)  # eager code: any size


@pytest.mark.parametrize("name", ["bert", "gpt2", "vit", "t5"])
def test_hf_families_folded(name):
    torch.manual_seed(0)
    if name == "bert":
        m = T.BertModel(T.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=32))
        kw = dict(input_ids=ids(2, 7))
    elif name == "gpt2":
        m = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=V, n_embd=32, n_layer=3, n_head=4, n_positions=32,
                                           bos_token_id=0, eos_token_id=0))
        kw = dict(input_ids=ids(2, 7), use_cache=False)
    elif name == "vit":
        m = T.ViTForImageClassification(T.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3,
                                                    num_attention_heads=4, intermediate_size=48, num_labels=5))
        kw = dict(pixel_values=torch.randn(2, 3, 32, 32))
    else:  # T5: block 0 of each stack owns the relative position bias, blocks 1-2 fold
        m = T.T5ForConditionalGeneration(T.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=3,
                                                    num_heads=4, decoder_start_token_id=0))
        kw = dict(input_ids=ids(2, 7), decoder_input_ids=ids(2, 5), use_cache=False)
    m.eval()
    rep = fxprune.verify(m, (), kw, fold=True, raise_on_mismatch=False)
    assert rep.passed and 0 < rep.permutation_error < 1e-9 and rep.removal_error < 1e-9, str(rep)
    dg = fxprune.analyze(m, (), kw, fold=True)
    assert "folded" in dg.front_end and "not folded" not in dg.front_end, dg.front_end
    assert len(fold_registry(dg.gm).blocks) == (2 if name == "t5" else 1)


# -- what must not fold ------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.fc1, self.fc2, self.scale = nn.Linear(16, 24), nn.Linear(24, 16), scale

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x))) * self.scale


class Stack(nn.Module):
    def __init__(self, scales):
        super().__init__()
        self.inp, self.blocks, self.out = nn.Linear(8, 16), nn.ModuleList(Block(s) for s in scales), nn.Linear(16, 4)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = b(x)
        return self.out(x)


def test_blocks_that_differ_get_their_own_capture():
    m = Stack([1.0, 1.0, 0.5, 1.0]).eval()
    x = torch.randn(3, 8)
    dg = fxprune.analyze(m, (x,), fold=True)
    assert "3 repeated blocks folded: 1 distinct" in dg.front_end, dg.front_end  # blocks.2 is traced inline
    assert signature(dg) == signature(fxprune.analyze(m, (x,)))
    assert fxprune.verify(m, (x,), fold=True).passed


def test_same_block_called_with_other_shapes_gets_its_own_capture():
    class TwoRes(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block(), Block()])

        def forward(self, x):
            return self.blocks[0](x).sum() + self.blocks[1](x[:2]).sum()

    dg = fxprune.analyze(TwoRes().eval(), (torch.randn(3, 16),), fold=True)
    assert "2 repeated blocks folded: 2 distinct" in dg.front_end, dg.front_end


def test_nothing_to_fold_falls_back_and_says_why():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    dg = fxprune.analyze(net, (torch.randn(2, 4),), fold=True)
    assert "symbolic_trace" in dg.front_end and "not folded" in dg.front_end and "no repeated blocks" in dg.front_end


def test_folding_never_mutates_the_model():
    m = llama(2)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    layers = list(m.model.layers)
    dg = fxprune.analyze(m, (), LLAMA_KW, fold=True)
    fxprune.apply(dg, {g: [0] for g in dg.groups})
    assert list(m.model.layers) == layers and all(type(b).__name__ == "LlamaDecoderLayer" for b in m.model.layers)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


def test_verify_catches_blocks_wrongly_folded_together(monkeypatch):
    import fxprune.capture.folding

    from fxprune.errors import OracleMismatchError

    m = Stack([1.0, 1.0, 0.5, 1.0]).eval()
    monkeypatch.setattr(fxprune.capture.folding, "IDENTITY_ATTRS", fxprune.capture.folding.IDENTITY_ATTRS | {"scale"})
    assert "4 repeated blocks folded: 1 distinct" in fxprune.analyze(m, (torch.randn(3, 8),), fold=True).front_end
    with pytest.raises(OracleMismatchError, match="folded capture"):
        fxprune.verify(m, (torch.randn(3, 8),), fold=True)


def test_one_block_called_with_two_signatures_is_not_folded():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block(), Block()])

        def forward(self, x):
            y = self.blocks[0](x)
            return self.blocks[1](y).sum() + self.blocks[0](x[:2]).sum()  # blocks.0 at two shapes

    m = Twice().eval()
    dg = fxprune.analyze(m, (torch.randn(3, 16),), fold=True)
    assert "not folded" in dg.front_end and "two different signatures" in dg.front_end, dg.front_end
    assert fxprune.verify(m, (torch.randn(3, 16),), fold=True).passed


def test_pruned_folded_model_shares_no_storage_with_the_input():
    m = llama(2)
    dg = fxprune.analyze(m, (), LLAMA_KW, fold=True)
    pruned = fxprune.apply(dg, {})  # nothing removed: every tensor is still a copy
    original = {t.untyped_storage().data_ptr() for t in (*m.parameters(), *m.buffers())}
    copies = [t.untyped_storage().data_ptr() for t in (*pruned.parameters(), *pruned.buffers())]
    assert copies and not original & set(copies)
    assert isinstance(pruned.get_submodule("model.layers.1"), torch.fx.GraphModule)


@pytest.mark.parametrize("importance", ["l2", "taylor"])
def test_scores_through_a_folded_graph_equal_the_unfolded_ones(importance):
    from fxprune.policy.pruner import score_groups

    m = Stack([1.0, 1.0, 1.0]).eval()
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    data = [(x, torch.tensor([0, 1, 2, 3, 0, 1]))]  # taylor needs gradients: it runs the graph
    folded, plain = fxprune.analyze(m, (x,), fold=True), fxprune.analyze(m, (x,))
    assert "folded" in folded.front_end and "not folded" not in folded.front_end
    a = {tuple(sorted(g.members)): s for g, s in score_groups(plain, importance, data=data).items()}
    b = {tuple(sorted(g.members)): s for g, s in score_groups(folded, importance, data=data).items()}
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k])


def test_target_search_through_a_folded_graph():
    from fxprune.policy.counting import count_macs
    from fxprune.policy.pruner import PruneConfig, _absolute, _counter, _search, score_groups

    m = Stack([1.0, 1.0, 1.0]).eval()
    x = torch.randn(2, 8)
    dg = fxprune.analyze(m, (x,), fold=True)
    cfg = PruneConfig(target_macs=0.6, scope="global", tolerance=0.05)  # a tiny model moves in coarse steps
    goal = _absolute(cfg.target_macs, count_macs(m, (x,)))  # MACs: the search runs the folded graph
    pruned = fxprune.apply(dg, _search(dg, score_groups(dg), cfg, _counter(cfg, (x,)), goal))
    assert abs(count_macs(pruned, (x,)) - goal) <= cfg.tolerance * goal
    assert pruned(x).shape == m(x).shape
