"""fxprune.hf: configs derived from pruned shapes, per-layer checkpoints saved and loaded.

Note [Config from shapes] in fxprune/hf/config.py: no per-family attribute table;
each case names the family's own attribute that must come out.
"""
import json
import os
import re
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from zoo import import_torchvision  # noqa: E402

import_torchvision()
T = pytest.importorskip("transformers")
T.logging.set_verbosity_error()
H = pytest.importorskip("fxprune.hf")


def meta_shapes(cls, cfg) -> dict:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in cls(cfg).state_dict().items()}


def edited(cls, cfg, rules) -> dict:
    """Every tensor's shape, with ``rules``: [(regex, shape -> new shape)] applied (first match)."""
    out = {}
    for k, s in meta_shapes(cls, cfg).items():
        fn = next((f for pat, f in rules if re.search(pat, k)), None)
        out[k] = fn(s) if fn else s
    return out


def llama_cfg(**kw):
    return T.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, **kw)


MLP_40 = [(r"(gate|up)_proj\.weight", lambda s: (40, s[1])), (r"down_proj\.weight", lambda s: (s[0], 40))]


def test_uniform_llama_heads_kv_hidden_and_mlp():
    cfg = llama_cfg()
    rules = [(r"q_proj\.weight", lambda s: (24, 24)), (r"[kv]_proj\.weight", lambda s: (8, 24)),
             (r"o_proj\.weight", lambda s: (24, 24)), (r"(gate|up)_proj\.weight", lambda s: (40, 24)),
             (r"down_proj\.weight", lambda s: (24, 40)), (r"norm", lambda s: (24,)),
             (r"embed_tokens|lm_head", lambda s: (s[0], 24))]
    out = H.pruned_config(cfg, edited(T.LlamaForCausalLM, cfg, rules), T.LlamaForCausalLM)
    assert out.uniform and not out.per_layer
    assert out.changed == {"hidden_size": (32, 24), "num_attention_heads": (4, 3), "num_key_value_heads": (2, 1),
                           "intermediate_size": (48, 40)}
    assert out.config.head_dim == 8 and cfg.hidden_size == 32  # the original is not modified
    back = type(cfg).from_dict(json.loads(out.config.to_json_string()))
    assert meta_shapes(T.LlamaForCausalLM, back) == edited(T.LlamaForCausalLM, cfg, rules)


@pytest.mark.parametrize("family", ["gpt2", "t5", "clip", "phi3", "dinov2"])
def test_family_attribute_names_come_from_the_class(family):
    """GPT-2's unset n_inner, T5's d_kv with num_heads, CLIP's nested text_config, Phi-3's implicit head_dim
    (read with getattr and a default), Dinov2's mlp_ratio."""
    if family == "gpt2":
        cls, cfg = T.GPT2LMHeadModel, T.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64)
        rules = [(r"c_fc\.weight", lambda s: (32, 96)), (r"c_fc\.bias", lambda s: (96,)),
                 (r"mlp\.c_proj\.weight", lambda s: (96, 32))]
        want = {"n_inner": (None, 96)}
    elif family == "t5":
        cls = T.T5ForConditionalGeneration
        cfg = T.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, decoder_start_token_id=0)
        rules = [(r"\.[qkv]\.weight", lambda s: (18, s[1])), (r"\.o\.weight", lambda s: (s[0], 18)),
                 (r"relative_attention_bias", lambda s: (s[0], 3)), (r"wi\.weight", lambda s: (40, s[1])),
                 (r"wo\.weight", lambda s: (s[0], 40))]
        want = {"num_heads": (4, 3), "d_kv": (8, 6), "d_ff": (48, 40)}
    elif family == "clip":
        cls = T.CLIPModel
        cfg = T.CLIPConfig(text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                            num_attention_heads=4, max_position_embeddings=16),
                           vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=48,
                                              num_hidden_layers=2, num_attention_heads=4), projection_dim=16)
        rules = [(r"text_model.*fc1\.weight", lambda s: (40, s[1])), (r"text_model.*fc1\.bias", lambda s: (40,)),
                 (r"text_model.*fc2\.weight", lambda s: (s[0], 40))]
        want = {"text_config.intermediate_size": (48, 40)}
    elif family == "phi3":
        cls, cfg = T.Phi3ForCausalLM, T.Phi3Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
        rules = [(r"qkv_proj", lambda s: (24 + 2 * 16, s[1])), (r"o_proj", lambda s: (s[0], 24))]
        want = {"head_dim": (None, 8), "num_attention_heads": (4, 3)}
    else:
        cls = T.Dinov2Model
        cfg = T.Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
        rules = [(r"fc1\.weight", lambda s: (96, s[1])), (r"fc1\.bias", lambda s: (96,)),
                 (r"fc2\.weight", lambda s: (s[0], 96))]
        want = {"mlp_ratio": (4, 3)}
    target = edited(cls, cfg, rules)
    out = H.pruned_config(cfg, target, cls)
    assert out.uniform and out.changed == want, out
    assert meta_shapes(cls, type(cfg).from_dict(json.loads(out.config.to_json_string()))) == target


def test_bert_heads_have_no_stock_config():
    """BERT's head size is hidden_size // num_attention_heads: 3 heads of 8 with hidden 32 has no config."""
    cls = T.BertModel
    cfg = T.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
    rules = [(r"(query|key|value)\.weight", lambda s: (24, 32)), (r"(query|key|value)\.bias", lambda s: (24,)),
             (r"attention\.output\.dense\.weight", lambda s: (32, 24)), (r"intermediate\.dense\.weight", lambda s: (40, 32)),
             (r"intermediate\.dense\.bias", lambda s: (40,)), (r"output\.dense\.weight", lambda s: (32, 40))]
    out = H.pruned_config(cfg, edited(cls, cfg, rules), cls)
    assert not out.uniform
    assert out.changed == {"intermediate_size": (48, 40)}  # every dim it governs agrees: kept
    assert out.config.num_attention_heads == 4  # the original: the loader derives the head size from it
    assert "encoder.layer.0.attention.self.query.weight" in out.per_layer
    assert not any("intermediate" in k for k in out.per_layer)
    section = out.config.fxprune
    assert section["version"] == 1 and section["original_model_type"] == "bert"


def _per_layer_llama():
    torch.manual_seed(0)
    m = T.LlamaForCausalLM(llama_cfg()).eval()
    with torch.no_grad():
        for i, w in ((0, 40), (1, 32)):
            mlp = m.model.layers[i].mlp
            for lin in (mlp.gate_proj, mlp.up_proj):
                lin.weight = torch.nn.Parameter(lin.weight[:w].clone())
            mlp.down_proj.weight = torch.nn.Parameter(mlp.down_proj.weight[:, :w].clone())
        m.model.layers[1].mlp.down_proj.bias = torch.nn.Parameter(torch.randn(32))  # a repair's bias
    return m


def test_per_layer_checkpoint_loads_with_fxprune_and_is_refused_by_plain_transformers(tmp_path):
    m = _per_layer_llama()
    out = H.pruned_config(m.config, {k: v.shape for k, v in m.state_dict().items()}, type(m))
    assert not out.uniform and out.changed == {}
    assert out.per_layer["model.layers.1.mlp.down_proj.bias"] == [32]
    m.config = out.config
    x = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        ref = m(x).logits
        assert torch.equal(H.rebuild(out.config, m.state_dict(), type(m))(x).logits, ref)
    assert H.save_pretrained(m, str(tmp_path)) is True
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "fxprune_llama"
    back = H.from_pretrained(str(tmp_path))
    assert type(back) is T.LlamaForCausalLM and back.model.layers[1].mlp.down_proj.bias is not None
    assert back.model.layers[0].mlp.up_proj.out_features == 40
    with torch.no_grad():
        assert torch.equal(back(x).logits, ref)
        x3 = torch.randint(0, 64, (3, 5))
        assert torch.equal(back(x3).logits, m(x3).logits)
    with pytest.raises(ValueError, match="does not recognize this architecture"):
        T.AutoModelForCausalLM.from_pretrained(str(tmp_path))
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):  # the stock class meets the original widths
        T.LlamaForCausalLM.from_pretrained(str(tmp_path))


def test_read_config_errors(tmp_path):
    with pytest.raises(H.CheckpointError, match="no config.json"):
        H.read_config(str(tmp_path))
    cfg = llama_cfg().to_dict()
    cfg.update(model_type="fxprune_llama", fxprune={"version": 2, "original_model_type": "llama", "per_layer": {}})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(H.CheckpointError, match="upgrade fxprune"):
        H.read_config(str(tmp_path))
    cfg.pop("fxprune")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(H.CheckpointError, match="without its fxprune section"):
        H.read_config(str(tmp_path))
