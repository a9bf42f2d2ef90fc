"""Tiny random-init Hugging Face models of every family fxprune covers (nothing downloaded).

``FAMILIES[name] = (config class name, model class name, config kwargs, inputs(batch, length))``;
:func:`build` makes the model (seeded, eval mode). Shared by tests/test_hf_families.py and
benchmarks/bench_hf.py. Two layers each, hidden 32, heads 4 (GQA with 2 kv heads where the family has it).
"""
from __future__ import annotations

import torch

__all__ = ["FAMILIES", "build", "ids", "V", "params", "prune_and_save"]

V = 64  # vocabulary


def ids(b: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(seed + 100 * b + n))


def _tokens(b, n):
    return dict(input_ids=ids(b, n))


def _seq2seq(b, n):
    return dict(input_ids=ids(b, n), decoder_input_ids=ids(b, max(n - 2, 1), 7))


def _pixels(b, n):
    return dict(pixel_values=torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(b)))


def _text_image(b, n):
    return dict(input_ids=ids(b, n), pixel_values=torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(b)))


def _audio(b, n):
    return dict(input_features=torch.randn(b, 8, 32, generator=torch.Generator().manual_seed(b)),
                decoder_input_ids=ids(b, n))


_LL = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=64)
_ENC = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=64)
_VIS = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
_BART = dict(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
             decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48)

FAMILIES = {
    # decoders
    "llama": ("LlamaConfig", "LlamaForCausalLM", _LL, _tokens),
    "mistral": ("MistralConfig", "MistralForCausalLM", _LL, _tokens),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", _LL, _tokens),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(_LL, head_dim=8), _tokens),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(_LL, head_dim=8), _tokens),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(_LL, head_dim=8, query_pre_attn_scalar=8), _tokens),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(_LL, pad_token_id=0), _tokens),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                   bos_token_id=0, eos_token_id=0), _tokens),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(_ENC, bos_token_id=0, eos_token_id=0), _tokens),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=4, ffn_dim=48, max_position_embeddings=64,
                                                word_embed_proj_dim=32), _tokens),
    "falcon": ("FalconConfig", "FalconForCausalLM", dict(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                                         num_attention_heads=4), _tokens),
    "bloom": ("BloomConfig", "BloomForCausalLM", dict(vocab_size=V, hidden_size=32, n_layer=2, n_head=4), _tokens),
    # mixtures of experts
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(_LL, num_local_experts=4, num_experts_per_tok=2),
                _tokens),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(_LL, num_experts=4, num_experts_per_tok=2,
                                                                moe_intermediate_size=24,
                                                                shared_expert_intermediate_size=48), _tokens),
    # encoders and encoder-decoders
    "bert": ("BertConfig", "BertModel", _ENC, _tokens),
    "roberta": ("RobertaConfig", "RobertaModel", dict(_ENC, pad_token_id=1, max_position_embeddings=72), _tokens),
    "deberta-v2": ("DebertaV2Config", "DebertaV2Model", dict(_ENC, relative_attention=True, position_buckets=16,
                                                             pos_att_type=["p2c", "c2p"]), _tokens),
    "t5": ("T5Config", "T5ForConditionalGeneration", dict(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                                          num_heads=4, decoder_start_token_id=0), _seq2seq),
    "bart": ("BartConfig", "BartForConditionalGeneration", dict(_BART, max_position_embeddings=64), _seq2seq),
    "whisper": ("WhisperConfig", "WhisperForConditionalGeneration", dict(
        _BART, num_mel_bins=8, max_source_positions=16, max_target_positions=32, decoder_start_token_id=0,
        pad_token_id=0, bos_token_id=0, eos_token_id=0, suppress_tokens=None, begin_suppress_tokens=None), _audio),
    # vision and vision-language
    "vit": ("ViTConfig", "ViTForImageClassification", dict(_VIS, intermediate_size=48, num_labels=5), _pixels),
    "dinov2": ("Dinov2Config", "Dinov2Model", _VIS, _pixels),
    "clip": ("CLIPConfig", "CLIPModel", dict(
        text_config=dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16),
        vision_config=dict(_VIS, intermediate_size=48), projection_dim=16), _text_image),
    "siglip": ("SiglipConfig", "SiglipModel", dict(
        text_config=dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16),
        vision_config=dict(_VIS, intermediate_size=48)), _text_image),
}


def build(name: str):
    """``(model, inputs)`` for family ``name``: the model seeded and in eval mode."""
    import transformers as T

    cfg_cls, model_cls, kw, inputs = FAMILIES[name]
    torch.manual_seed(0)
    return getattr(T, model_cls)(getattr(T, cfg_cls)(**kw)).eval(), inputs


def params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def prune_and_save(name: str, path: str, *, uniform: bool = False, ratio: float = 0.4, oracles: bool = True) -> dict:
    """Family ``name``: both oracles in float64 (``fxprune.verify``), then ``fxprune.prune(..., inplace=True)``
    (global ranking, ``ratio``), ``fxprune.hf.save_pretrained`` to ``path`` with ``ref.pt`` (inputs at batch 3
    and the pruned model's first output) for tests/hf_roundtrip.py. Returns what happened."""
    import time

    import fxprune
    import fxprune.hf
    from hf_roundtrip import _call

    model, inputs = build(name)
    example = inputs(1, 7)  # one sequence, as users pass it
    info = {"family": name, "params": params(model)}
    if oracles:
        rep = fxprune.verify(model, (), example, raise_on_mismatch=False)
        info.update(permutation=rep.permutation_error, removal=rep.removal_error, removal_groups=rep.removal_groups,
                    removal_fraction=rep.removal_fraction, groups=rep.groups)
    start = time.perf_counter()
    out = fxprune.prune(model, (), example_kwargs=example, inplace=True, ratio=ratio, scope="global",
                        uniform=uniform)
    info.update(seconds=time.perf_counter() - start, same_object=out is model, pruned_params=params(model),
                expressible=model.fxprune_expressible, certificate=model.fxprune_certificate)
    info["per_layer"] = fxprune.hf.save_pretrained(model, path)
    x = inputs(3, 5)  # another batch size and length
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as tests/hf_roundtrip.py runs: the comparison is bit for bit, and a matmul
    try:                      # split over another number of threads sums in another order
        out = _call(model, x)
    finally:
        torch.set_num_threads(threads)
    torch.save({"inputs": x, "output": out}, f"{path}/ref.pt")
    return info


def write_llama_checkpoint(path: str, hidden: int, layers: int, heads: int, kv_heads: int, mlp: int,
                           vocab: int = 32000, seed: int = 0) -> int:
    """A random-weight LLaMA checkpoint as a user has one: bf16, ``save_pretrained`` with 200 MB shards.
    Built in bf16 (no float32 model in between); returns the tensor bytes written."""
    import transformers as T

    cfg = T.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
                        tie_word_embeddings=False)
    old = torch.get_default_dtype()
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = T.LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(old)
    model.config.torch_dtype = torch.bfloat16
    model.save_pretrained(path, max_shard_size="200MB")
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
