"""Hugging Face transformers from tiny random configs (no downloads) against the oracles.

HF models cannot be symbolic-traced: ``analyze`` falls back to a non-strict
``torch.export`` with dynamic batch and sequence dims, fed through
``example_kwargs``. Each model: both oracles pass, a structural check of the
groups, a third of every group removed runs with unchanged output shapes, fewer
parameters, and at another batch size and sequence length. Plus in-place
pruning: attributes synced per module type, a failure restores the model bit
for bit, and a LLaMA survives ``save_pretrained`` / ``from_pretrained``.
"""
import copy
import math
import os
import sys

import pytest
import torch

import fxprune
from fxprune.checks.inplace import InPlaceMismatchError

sys.path.insert(0, os.path.dirname(__file__))
from test_inplace import assert_identical  # noqa: E402
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


# -- capture: batch of one, use_cache, encoder-decoders, MoE, Falcon, Swin ----------------------------------

def test_batch_one_example_gives_a_graph_for_any_batch():
    m = tiny_llama()
    dg = fxprune.analyze(m, (), dict(input_ids=ids(1, 7)))  # one sequence, as users pass it
    assert "input_ids[0, 1]" in dg.front_end and "use_cache=False" in dg.front_end, dg.front_end
    gen = torch.Generator().manual_seed(0)
    permuted = fxprune.apply(dg, {g: torch.randperm(g.size, generator=gen) for g in dg.groups})
    with torch.no_grad():
        for b, n in ((3, 9), (1, 1)):
            torch.testing.assert_close(permuted(input_ids=ids(b, n)).logits, m(input_ids=ids(b, n)).logits)


def tiny_whisper():
    torch.manual_seed(0)
    cfg = T.WhisperConfig(vocab_size=V, num_mel_bins=8, encoder_layers=2, decoder_layers=2, d_model=32,
                          encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48,
                          max_source_positions=16, max_target_positions=32, decoder_start_token_id=0, pad_token_id=0,
                          bos_token_id=0, eos_token_id=0, suppress_tokens=None, begin_suppress_tokens=None)
    return T.WhisperForConditionalGeneration(cfg).eval()


def whisper_inputs(b, n):
    return dict(input_features=torch.randn(b, 8, 32, generator=torch.Generator().manual_seed(b)),
                decoder_input_ids=ids(b, n))


def test_whisper_encoder_decoder_with_its_default_cache():
    m = tiny_whisper()
    assert m.config.use_cache  # its default output holds an EncoderDecoderCache export cannot flatten
    dg, pruned = check(m, whisper_inputs(1, 5), whisper_inputs(3, 7))
    assert "use_cache=False" in dg.front_end, dg.front_end
    assert set(pruned(**whisper_inputs(2, 4)).keys()) == {"logits", "encoder_last_hidden_state"}
    for i in range(2):
        assert sizes_with(dg, f"model.encoder.layers.{i}.fc1.weight", 0) == [48]
        assert 4 in sizes_with(dg, f"model.decoder.layers.{i}.encoder_attn.q_proj.weight", 0)
    with pytest.raises(fxprune.CaptureError, match="use_cache=False"):
        fxprune.analyze(m, (), dict(whisper_inputs(1, 5), use_cache=True))


def test_falcon_heads_and_mlp():
    """Falcon's ``x @ w.T`` (aten.numpy_T) and multi-query ``[..., [-2], :]`` used to pin every group."""
    torch.manual_seed(0)
    cfg = T.FalconConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    m = T.FalconForCausalLM(cfg).eval()
    dg, _ = check(m, dict(input_ids=ids(2, 7)), dict(input_ids=ids(3, 5)))
    for i in range(2):
        a = f"transformer.h.{i}.self_attention"
        # query heads (k and v are one shared head) and the rotary half head dim, shared by all layers
        heads = [g for g in dg.groups if (f"{a}.dense.weight", 1) in g.members and g.size == 4
                 and ("transformer.rotary_emb.inv_freq", 0) not in g.members]
        assert len(heads) == 1 and (f"{a}.query_key_value.weight", 0) in heads[0].members, dg.report()
        assert sizes_with(dg, f"transformer.h.{i}.mlp.dense_h_to_4h.weight", 0) == [128]
    assert sizes_with(dg, "transformer.word_embeddings.weight", 1) == [32]


def test_mixtral_expert_width_and_hidden():
    torch.manual_seed(0)
    cfg = T.MixtralConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                          num_local_experts=4, num_experts_per_tok=2)
    m = T.MixtralForCausalLM(cfg).eval()
    kw = lambda b, n: dict(input_ids=ids(b, n))  # noqa: E731
    dg, _ = check(m, kw(2, 7), kw(3, 5))
    for i in range(2):
        e = f"model.layers.{i}.mlp"
        width = group_with(dg, f"{e}.experts.down_proj", 2, 48)  # gate and up halves with down's input
        assert (f"{e}.experts.gate_up_proj", 1) in width.members
        assert (f"{e}.experts.down_proj", 1) in group_with(dg, "model.embed_tokens.weight", 1, 32).members
        assert not any((f"{e}.gate.weight", 0) in g.members for g in dg.groups)  # experts: top-k indices


def test_swin_captures_in_seconds_with_heads_prunable():
    torch.manual_seed(0)
    cfg = T.SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4,
                       num_labels=5)
    m = T.SwinForImageClassification(cfg).eval()
    px = lambda b: dict(pixel_values=torch.randn(b, 3, 32, 32))  # noqa: E731
    dg, _ = check(m, px(1), px(3))
    # image sizes stay static: automatic dynamic shapes on them took minutes of torch.export (issue 15)
    assert "pixel_values[0]; other dims static" in dg.front_end, dg.front_end
    a = "swin.encoder.layers.1.blocks.0.attention"
    heads = group_with(dg, f"{a}.relative_position_bias.relative_position_bias_table", 1, 4)
    assert (f"{a}.q_proj.weight", 0) in heads.members


# -- in place: attributes synced per module type, a failure restores everything ----------------------------

def _tiny(name):
    torch.manual_seed(0)
    tok = lambda b, n: dict(input_ids=ids(b, n))  # noqa: E731
    img = lambda size: (lambda b, n: dict(pixel_values=torch.randn(b, 3, size, size)))  # noqa: E731
    if name == "convnext":
        cfg = T.ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=5, image_size=32)
        return T.ConvNextForImageClassification(cfg), img(32)
    if name == "segformer":
        cfg = T.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                                num_attention_heads=[1, 2], decoder_hidden_size=32, num_labels=5, patch_sizes=[7, 3],
                                strides=[4, 2], mlp_ratios=[2, 2])
        return T.SegformerForSemanticSegmentation(cfg), img(32)
    if name == "mobilevit":
        cfg = T.MobileViTConfig(image_size=32, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 48],
                                num_labels=5, num_attention_heads=2)
        return T.MobileViTForImageClassification(cfg), img(32)
    if name == "gpt2":
        cfg = T.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=32)
        return T.GPT2LMHeadModel(cfg), tok
    if name == "wav2vec2":
        cfg = T.Wav2Vec2Config(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=48, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
                               num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="group")
        return T.Wav2Vec2Model(cfg), lambda b, n: dict(input_values=torch.randn(b, 400 + 10 * n))
    if name == "llama":
        return tiny_llama(), tok
    if name == "opt":
        cfg = T.OPTConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=48,
                          max_position_embeddings=64, word_embed_proj_dim=32)
        return T.OPTForCausalLM(cfg), tok
    if name == "whisper":
        return tiny_whisper(), whisper_inputs
    if name == "deberta-v2":
        cfg = T.DebertaV2Config(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=48, max_position_embeddings=64, relative_attention=True,
                                position_buckets=16, pos_att_type=["p2c", "c2p"])
        return T.DebertaV2Model(cfg), tok
    raise KeyError(name)


def _n_rep(dg, target):
    return next(g for g in dg.groups if (target, 0) in g.members and g.size == 2 and
                (target.replace("q_proj", "k_proj"), 0) not in g.members)


# family: (group chooser, the attribute (module path, name) that must follow it, its value after
# keeping the first two thirds of the group)
SYNCED = {
    "convnext": (lambda dg: group_with(dg, "convnext.encoder.stages.0.layers.0.dwconv.weight", 0, 16),
                 ("convnext.encoder.stages.0.layers.0.dwconv", "groups"), 10),
    "segformer": (lambda dg: group_with(dg, "segformer.stages.0.blocks.0.mlp.dwconv.dwconv.weight", 0, 32),
                  ("segformer.stages.0.blocks.0.mlp.dwconv.dwconv", "groups"), 21),
    "mobilevit": (lambda dg: group_with(dg, "mobilevit.encoder.layer.0.layer.0.conv_3x3.convolution.weight", 0, 32),
                  ("mobilevit.encoder.layer.0.layer.0.conv_3x3.convolution", "groups"), 21),
    "gpt2": (lambda dg: group_with(dg, "transformer.h.0.mlp.c_fc.weight", 1, 128),
             ("transformer.h.0.mlp.c_fc", "nf"), 85),
    "wav2vec2": (lambda dg: group_with(dg, "feature_extractor.conv_layers.0.layer_norm.weight", 0, 16),
                 ("feature_extractor.conv_layers.0.layer_norm", "num_groups"), 10),
    "llama": (lambda dg: _n_rep(dg, "model.layers.0.self_attn.q_proj.weight"),
              ("model.layers.0.self_attn", "num_key_value_groups"), 1),
    "opt": (lambda dg: group_with(dg, "model.decoder.layers.0.self_attn.q_proj.weight", 0, 4),
            ("model.decoder.layers.0.self_attn", "num_heads"), 2),
    "whisper": (lambda dg: group_with(dg, "model.encoder.layers.0.self_attn.q_proj.weight", 0, 4),
                ("model.encoder.layers.0.self_attn", "num_heads"), 2),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("segformer", "mobilevit", "whisper")
                                  else n for n in SYNCED])
def test_inplace_syncs_derived_attributes(name):
    m, inputs = _tiny(name)
    m.eval()
    dg = fxprune.analyze(m, (), inputs(1, 7))
    choose, (path, attr), want = SYNCED[name]
    g = choose(dg)
    keep = {g: list(range(max(1, 2 * g.size // 3)))}
    graph = fxprune.apply(dg, keep)
    fxprune.apply(dg, keep, inplace=True)
    got = getattr(m.get_submodule(path), attr)
    assert got == want, (path, attr, got)
    with torch.no_grad():  # the resized model computes what the pruned graph computes, at another size too
        for b, n in ((1, 7), (3, 5)):
            x = inputs(b, n)
            torch.testing.assert_close(_first(m(**x)), _first(graph(**x)))


def test_deberta_failed_inplace_restores_bit_for_bit():
    """A constant the capture lifted (``lifted_tensor_0``) once crashed in-place pruning half way."""
    m, inputs = _tiny("deberta-v2")
    m.eval()
    dg = fxprune.analyze(m, (), inputs(1, 7))
    assert any("lifted_tensor" in t for t, _ in dg.result.gm.named_buffers()) or "lifted_tensor" in dg.gm.code
    ref = copy.deepcopy(m)
    # head dims too: the forward scales by the pruned one; since the heads are prunable at batch 1
    # (Note [Run-time sizes]), the forward's own view(B, T, heads, -1) also fails
    with pytest.raises(InPlaceMismatchError, match="outputs differ|the eager forward fails"):
        fxprune.apply(dg, third_keep(dg), inplace=True)
    assert_identical(m, ref)
    mlp = group_with(dg, "encoder.layer.0.intermediate.dense.weight", 0, 48)
    assert fxprune.apply(dg, {mlp: list(range(0, 48, 2))}, inplace=True) is m
    assert m.encoder.layer[0].intermediate.dense.out_features == 24
