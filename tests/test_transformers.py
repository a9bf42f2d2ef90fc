"""Hugging Face transformers from tiny random configs (no downloads) against the oracles.

HF models cannot be symbolic-traced: ``analyze`` falls back to a non-strict
``torch.export`` with dynamic shapes, fed through ``example_kwargs``. Each
model: both oracles pass, a structural check of the groups, a third of every
group removed runs with unchanged output shapes, fewer parameters, and at
another batch size and sequence length. Plus in-place pruning of a LLaMA that
survives ``save_pretrained`` / ``from_pretrained``.
"""
import math
import os
import sys

import pytest
import torch

import fxprune
from fxprune.checks.inplace import InPlaceMismatchError

sys.path.insert(0, os.path.dirname(__file__))
from zoo import import_torchvision  # noqa: E402

import_torchvision()  # transformers imports torchvision: nms schema shim on a CUDA wheel over CPU torch
T = pytest.importorskip("transformers")
T.logging.set_verbosity_error()

V = 64  # vocabulary


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def third_keep(dg) -> dict:
    return {g: list(range(math.ceil(2 * g.size / 3))) for g in dg.groups}


def sizes_with(dg, target: str, dim: int) -> list:
    return sorted(g.size for g in dg.groups if (target, dim) in g.members)


def group_with(dg, target: str, dim: int, size: int):
    found = [g for g in dg.groups if (target, dim) in g.members and g.size == size]
    assert len(found) == 1, dg.report()
    return found[0]


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else next(iter(out.values()))


def check(m, kw, kw2):
    """Oracles; third removed: same output shapes, fewer params; also on ``kw2``."""
    m = m.eval()
    rep = fxprune.verify(m, (), kw, raise_on_mismatch=False)
    assert rep.passed and rep.permutation_error < 1e-9 and rep.removal_error < 1e-9, str(rep)
    assert rep.permutation_error > 0, f"vacuous oracle\n{rep}"
    dg = fxprune.analyze(m, (), kw)
    assert "torch.export" in dg.front_end and "dynamic" in dg.front_end, dg.front_end
    pruned = fxprune.apply(dg, third_keep(dg), check=False)  # verified above
    assert n_params(pruned) < n_params(m)
    with torch.no_grad():
        for k in (kw, kw2):
            assert _first(pruned(**k)).shape == _first(m(**k)).shape
    return dg, pruned


def ids(b, n):
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(b * 100 + n))


def tiny_llama(**kw):
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=64, **kw)
    return T.LlamaForCausalLM(cfg).eval()


def test_bert():
    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                       max_position_embeddings=32)
    m = T.BertModel(cfg).eval()
    dg, _ = check(m, dict(input_ids=ids(2, 7)), dict(input_ids=ids(3, 11)))
    for i in range(2):
        a = f"encoder.layer.{i}.attention.self"
        # heads (4) shared by q/k/v/o, qk head dim (8), v head dim (8), MLP (48)
        assert sizes_with(dg, f"{a}.query.weight", 0) == [4, 8]
        assert sizes_with(dg, f"{a}.value.weight", 0) == [4, 8]
        assert group_with(dg, f"{a}.query.weight", 0, 8) is not group_with(dg, f"{a}.value.weight", 0, 8)
        assert sizes_with(dg, f"encoder.layer.{i}.intermediate.dense.weight", 0) == [48]


def test_gpt2_tied_head_and_fused_qkv_split():
    torch.manual_seed(0)
    cfg = T.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0)
    m = T.GPT2LMHeadModel(cfg).eval()
    kw = dict(input_ids=ids(2, 7), use_cache=False)
    dg, pruned = check(m, kw, dict(input_ids=ids(3, 11), use_cache=False))
    # the residual stream: token and position embeddings, and the tied LM head (one tensor)
    stream = group_with(dg, "transformer.wte.weight", 1, 32)
    assert ("transformer.wpe.weight", 1) in stream.members
    # c_attn (Conv1D: weight is (in, out)) is split into q, k, v: heads, qk dim and v dim
    assert sizes_with(dg, "transformer.h.0.attn.c_attn.weight", 1) == [4, 8, 8]
    assert sizes_with(dg, "transformer.h.0.mlp.c_fc.weight", 1) == [128]
    assert pruned.get_parameter("transformer.wte.weight").shape == (V, 22)


def test_llama_gqa_rope():
    m = tiny_llama()
    kw = dict(input_ids=ids(2, 7), use_cache=False)
    dg, _ = check(m, kw, dict(input_ids=ids(3, 12), use_cache=False))
    # device literals and the rotary's no_grad subgraph run on meta: no weight memory
    assert dg.result.shape_mode == "meta", dg.result.shape_mode
    assert sizes_with(dg, "model.embed_tokens.weight", 1) == [32]
    for i in range(2):
        a = f"model.layers.{i}.self_attn"
        kv = group_with(dg, f"{a}.k_proj.weight", 0, 2)  # kv heads
        assert {(f"{a}.v_proj.weight", 0), (f"{a}.q_proj.weight", 0), (f"{a}.o_proj.weight", 1)} <= set(kv.members)
        # q heads = product(kv heads, n_rep): the n_rep group is q's and o's only
        rep = [g for g in dg.groups if (f"{a}.q_proj.weight", 0) in g.members and g is not kv and g.size == 2]
        assert [g.size for g in rep] == [2], dg.report()
        assert (f"{a}.k_proj.weight", 0) not in rep[0].members
        # v head dim (8); the q/k head dim is (half ++ half) through rotate_half: a group of 4
        assert sizes_with(dg, f"{a}.v_proj.weight", 0) == [2, 8]
        assert sizes_with(dg, f"{a}.k_proj.weight", 0) == [2, 4]
        assert sizes_with(dg, f"{a}.q_proj.weight", 0) == [2, 2, 4]
    # one rotary table serves every layer: the half-head-dim group spans both layers and inv_freq
    half = group_with(dg, "model.rotary_emb.inv_freq", 0, 4)
    assert {(f"model.layers.{i}.self_attn.{p}_proj.weight", 0) for i in range(2) for p in "qk"} <= set(half.members)
    for i in range(2):
        assert sizes_with(dg, f"model.layers.{i}.mlp.gate_proj.weight", 0) == [48]


def test_vit():
    torch.manual_seed(0)
    cfg = T.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=48, num_labels=5)
    m = T.ViTForImageClassification(cfg).eval()
    px = lambda b: dict(pixel_values=torch.randn(b, 3, 32, 32))  # noqa: E731
    dg, _ = check(m, px(2), px(3))
    stream = group_with(dg, "vit.embeddings.cls_token", 2, 32)
    assert ("classifier.weight", 1) in stream.members
    names = {t for g in dg.groups for t, _ in g.members}
    q = next(t for t in names if t.startswith("vit.") and "0" in t and ("query.weight" in t or "q_proj.weight" in t))
    assert sizes_with(dg, q, 0) == [4, 8]


def test_t5_encoder_decoder():
    torch.manual_seed(0)
    cfg = T.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, decoder_start_token_id=0)
    m = T.T5ForConditionalGeneration(cfg).eval()
    kw = lambda b, n, k: dict(input_ids=ids(b, n), decoder_input_ids=ids(b, k), use_cache=False)  # noqa: E731
    dg, _ = check(m, kw(2, 7, 5), kw(3, 9, 4))
    for i in range(2):
        assert sizes_with(dg, f"encoder.block.{i}.layer.1.DenseReluDense.wi.weight", 0) == [48]
        assert 8 in sizes_with(dg, f"encoder.block.{i}.layer.0.SelfAttention.v.weight", 0)
        assert 8 in sizes_with(dg, f"decoder.block.{i}.layer.1.EncDecAttention.q.weight", 0)


# -- in place --------------------------------------------------------------------------------------

def test_llama_inplace_kv_heads_and_mlp_survive_save_pretrained(tmp_path):
    m = tiny_llama()
    kw = dict(input_ids=ids(2, 7), use_cache=False)
    dg = fxprune.analyze(m, (), kw)
    keep = {}
    for i in range(2):
        keep[group_with(dg, f"model.layers.{i}.self_attn.k_proj.weight", 0, 2)] = [1]  # one kv head of two
        keep[group_with(dg, f"model.layers.{i}.mlp.gate_proj.weight", 0, 48)] = list(range(0, 48, 3)) + [1, 2]
    graph = fxprune.apply(dg, keep)
    out = fxprune.apply(dg, keep, inplace=True)
    assert out is m and isinstance(m, T.LlamaForCausalLM)
    attn = m.model.layers[0].self_attn
    assert attn.k_proj.weight.shape == (8, 32) and attn.q_proj.weight.shape == (16, 32)
    assert m.model.layers[0].mlp.up_proj.weight.shape == (18, 32)
    x2 = dict(input_ids=ids(3, 10), use_cache=False)
    with torch.no_grad():
        logits = m(**kw).logits
        torch.testing.assert_close(graph(**kw).logits, logits)
        logits2 = m(**x2).logits
    m.save_pretrained(tmp_path)
    cfg = T.LlamaConfig.from_pretrained(tmp_path)
    cfg.num_key_value_heads, cfg.num_attention_heads, cfg.intermediate_size, cfg.head_dim = 1, 2, 18, 8
    back = T.LlamaForCausalLM.from_pretrained(tmp_path, config=cfg).eval()
    with torch.no_grad():
        assert torch.equal(back(**kw).logits, logits)
        assert torch.equal(back(**x2).logits, logits2)


@pytest.mark.parametrize("which", ["v_head_dim", "qk_head_dim"])
def test_llama_inplace_head_dim_raises_and_restores(which):
    m = tiny_llama()
    kw = dict(input_ids=ids(2, 7), use_cache=False)
    dg = fxprune.analyze(m, (), kw)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    # the forward hard-codes head_dim (view(..., -1, head_dim)): only the graph rewrite can change it
    g = group_with(dg, "model.layers.0.self_attn.v_proj.weight", 0, 8) if which == "v_head_dim" else \
        group_with(dg, "model.rotary_emb.inv_freq", 0, 4)
    with pytest.raises(InPlaceMismatchError):
        fxprune.apply(dg, {g: list(range(g.size - 2))}, inplace=True)
    after = m.state_dict()
    assert before.keys() == after.keys()
    assert all(before[k].shape == after[k].shape and torch.equal(before[k], after[k]) for k in before)
    assert m.model.layers[0].self_attn.head_dim == 8
    with torch.no_grad():
        assert m(**kw).logits.shape == (2, 7, V)
