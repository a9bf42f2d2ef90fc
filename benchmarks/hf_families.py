"""Hugging Face families from tiny random configs: capture, groups, oracles, batch of one, in place.

    python benchmarks/hf_families.py                       # every family below
    python benchmarks/hf_families.py --families llama,swin
    python benchmarks/hf_families.py --swin-capture        # export time: all dims automatic vs fxprune's dims

Per family (2 layers, hidden 16-32, random init, nothing downloaded), analysed from a
batch-of-one example without ``use_cache``: the capture front end and the dims it kept
dynamic, capture + analysis time, the number of groups, both oracles of ``fxprune.verify``
(float64; removal checks the groups no norm mixes), whether the pruned graph (two thirds of
every group kept) runs at batch 3 and another length, and in-place pruning: how many groups
the eager forward accepts alone (``apply(..., inplace=True)`` on a copy per group), whether
those are accepted together, and whether a refused attempt leaves the model bit for bit as
it was. Exits 1 on an oracle mismatch or an error.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
import warnings

import torch
from tabulate import tabulate

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import zoo  # noqa: E402

zoo.import_torchvision()
import transformers as T  # noqa: E402

import fxprune  # noqa: E402
from fxprune.checks.inplace import InPlaceMismatchError  # noqa: E402

T.logging.set_verbosity_error()
warnings.filterwarnings("ignore")
V = 64
_LL = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=64)


def ids(b, n, seed=0):
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(seed + 100 * b + n))


def _tokens(b, n):
    return dict(input_ids=ids(b, n))


def _seq2seq(b, n):
    return dict(input_ids=ids(b, n), decoder_input_ids=ids(b, max(n - 2, 1), 7))


def _pixels(size):
    return lambda b, n: dict(pixel_values=torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(b)))


# family: (config class, model class, config kwargs, inputs(batch, length))
FAMILIES = {
    "llama": (T.LlamaConfig, T.LlamaForCausalLM, _LL, _tokens),
    "mistral": (T.MistralConfig, T.MistralForCausalLM, _LL, _tokens),
    "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, _LL, _tokens),
    "gemma": (T.GemmaConfig, T.GemmaForCausalLM, dict(_LL, head_dim=8), _tokens),
    "phi3": (T.Phi3Config, T.Phi3ForCausalLM, dict(_LL, pad_token_id=0), _tokens),
    "gpt2": (T.GPT2Config, T.GPT2LMHeadModel, dict(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64),
             _tokens),
    "gpt_neox": (T.GPTNeoXConfig, T.GPTNeoXForCausalLM, dict(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=48, max_position_embeddings=64), _tokens),
    "opt": (T.OPTConfig, T.OPTForCausalLM, dict(vocab_size=V, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, ffn_dim=48, max_position_embeddings=64, word_embed_proj_dim=32), _tokens),
    "falcon": (T.FalconConfig, T.FalconForCausalLM, dict(vocab_size=V, hidden_size=32, num_hidden_layers=2,
               num_attention_heads=4), _tokens),
    "bloom": (T.BloomConfig, T.BloomForCausalLM, dict(vocab_size=V, hidden_size=32, n_layer=2, n_head=4), _tokens),
    "mixtral": (T.MixtralConfig, T.MixtralForCausalLM, dict(_LL, num_local_experts=4, num_experts_per_tok=2), _tokens),
    "bert": (T.BertConfig, T.BertModel, dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=48, max_position_embeddings=64), _tokens),
    "deberta-v2": (T.DebertaV2Config, T.DebertaV2Model, dict(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                   num_attention_heads=4, intermediate_size=48, max_position_embeddings=64, relative_attention=True,
                   position_buckets=16, pos_att_type=["p2c", "c2p"]), _tokens),
    "t5": (T.T5Config, T.T5ForConditionalGeneration, dict(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2,
           num_heads=4, decoder_start_token_id=0), _seq2seq),
    "bart": (T.BartConfig, T.BartForConditionalGeneration, dict(vocab_size=V, d_model=32, encoder_layers=2,
             decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
             decoder_ffn_dim=48, max_position_embeddings=64), _seq2seq),
    "whisper": (T.WhisperConfig, T.WhisperForConditionalGeneration, dict(
        vocab_size=V, num_mel_bins=8, encoder_layers=2, decoder_layers=2, d_model=32, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_source_positions=16,
        max_target_positions=32, decoder_start_token_id=0, pad_token_id=0, bos_token_id=0, eos_token_id=0,
        suppress_tokens=None, begin_suppress_tokens=None),
        lambda b, n: dict(input_features=torch.randn(b, 8, 32, generator=torch.Generator().manual_seed(b)),
                          decoder_input_ids=ids(b, n))),
    "vit": (T.ViTConfig, T.ViTForImageClassification, dict(image_size=32, patch_size=8, hidden_size=32,
            num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, num_labels=5), _pixels(32)),
    "swin": (T.SwinConfig, T.SwinForImageClassification, dict(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1],
             num_heads=[2, 4], window_size=4, num_labels=5), _pixels(32)),
    "convnext": (T.ConvNextConfig, T.ConvNextForImageClassification, dict(num_stages=2, hidden_sizes=[16, 32],
                 depths=[1, 1], num_labels=5, image_size=32), _pixels(32)),
    "segformer": (T.SegformerConfig, T.SegformerForSemanticSegmentation, dict(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
        decoder_hidden_size=32, num_labels=5, patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2]), _pixels(32)),
    "mobilevit": (T.MobileViTConfig, T.MobileViTForImageClassification, dict(
        image_size=32, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 48], num_labels=5,
        num_attention_heads=2), _pixels(32)),
    "wav2vec2": (T.Wav2Vec2Config, T.Wav2Vec2Model, dict(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, feat_extract_norm="group"),
        lambda b, n: dict(input_values=torch.randn(b, 400 + 10 * n, generator=torch.Generator().manual_seed(b)))),
}


def build(name):
    cfg_cls, model_cls, kw, inputs = FAMILIES[name]
    torch.manual_seed(0)
    return model_cls(cfg_cls(**kw)).eval(), inputs


def _state(m):
    return [(k, v.detach().clone()) for k, v in m.state_dict(keep_vars=True).items()]


def _same(a, b):
    return len(a) == len(b) and all(ka == kb and va.dtype == vb.dtype and torch.equal(va, vb)
                                    for (ka, va), (kb, vb) in zip(a, b))


def _two_thirds(g):
    return list(range(max(1, 2 * g.size // 3)))


def _inplace(m, dg):
    """(groups accepted alone, accepted together?, a refusal left the model bit-identical?)"""
    ok, restored = [], True
    for g in dg.groups:
        dg.model = copy.deepcopy(m)
        before = _state(dg.model)
        try:
            fxprune.apply(dg, {g: _two_thirds(g)}, inplace=True)
            ok.append(g)
        except InPlaceMismatchError:
            restored &= _same(before, _state(dg.model))
    together = None
    if ok:
        dg.model = copy.deepcopy(m)
        try:
            fxprune.apply(dg, {g: _two_thirds(g) for g in ok}, inplace=True)
            together = True
        except InPlaceMismatchError:
            together = False
    return len(ok), together, restored


def run(name):
    m, inputs = build(name)
    start = time.perf_counter()
    dg = fxprune.analyze(m, (), inputs(1, 7))
    seconds = time.perf_counter() - start
    fe = dg.front_end
    dynamic = fe.split("dynamic shapes: ")[1].split(";")[0] if "dynamic shapes: " in fe else "static"
    rep = fxprune.verify(m, (), inputs(1, 7), raise_on_mismatch=False)
    pruned = fxprune.apply(dg, {g: _two_thirds(g) for g in dg.groups})
    try:
        with torch.no_grad():
            pruned(**inputs(3, 9))
        batch3 = "ok"
    except Exception as e:  # noqa: BLE001 - reported in the table
        batch3 = f"fails: {str(e).splitlines()[0][:40]}"
    alone, together, restored = _inplace(m, dg)
    status = "exact" if rep.passed and batch3 == "ok" and restored else "MISMATCH"
    return [name, dynamic, f"{seconds:.1f}", len(dg.groups), f"{rep.permutation_error:.1e}",
            f"{rep.removal_error:.1e} ({rep.removal_groups})", batch3,
            f"{alone}/{len(dg.groups)}", {True: "yes", False: "no", None: "-"}[together],
            "yes" if restored else "NO", status]


def swin_capture():
    """Export time of the tiny Swin: every dim automatic, as before, vs the dims fxprune marks."""
    from torch.export import Dim

    m, inputs = build("swin")
    x = inputs(2, 0)
    rows = []
    for label, spec in (("static", None), ("batch dynamic (fxprune)", {"pixel_values": {0: Dim.AUTO}}),
                        ("every dim Dim.AUTO", {"pixel_values": {i: Dim.AUTO for i in range(4)}})):
        start = time.perf_counter()
        torch.export.export(m, (), x, strict=False, dynamic_shapes=spec)
        rows.append([label, f"{time.perf_counter() - start:.1f}"])
    print(tabulate(rows, headers=["torch.export of SwinForImageClassification", "seconds"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--swin-capture", action="store_true", help="time Swin's export with every dim automatic")
    args = ap.parse_args()
    if args.swin_capture:
        swin_capture()
        return 0
    rows, bad = [], 0
    for name in args.families.split(","):
        try:
            row = run(name)
        except Exception as e:  # noqa: BLE001 - reported in the table
            row = [name, "-", "-", "-", "-", "-", "-", "-", "-", "-", f"error: {type(e).__name__}: {str(e)[:60]}"]
        bad += row[-1] != "exact"
        rows.append(row)
        print(" | ".join(map(str, row)), file=sys.stderr, flush=True)
    print(tabulate(rows, headers=["family", "dynamic dims", "capture+analysis s", "groups", "permutation",
                                  "removal (groups)", "batch 1 -> 3", "in place alone", "together",
                                  "refusal restores", "status"]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
