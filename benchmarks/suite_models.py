"""The models of the benchmark suite: torchvision, timm (small variants) and Hugging Face tiny configs.

``build(zoo, name)`` returns ``(model, args, kwargs)`` with random weights (nothing is
downloaded), in eval mode, made informative for the oracles (see tests/zoo.py).
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import zoo  # noqa: E402

# one or two per torchvision family (the default run); --all-torchvision takes every model <= 100M params
TV_SUBSET = ["alexnet", "vgg11", "squeezenet1_1", "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2",
             "densenet121", "googlenet", "inception_v3", "mobilenet_v2", "mobilenet_v3_large", "mnasnet0_5",
             "efficientnet_b0", "efficientnet_v2_s", "shufflenet_v2_x0_5", "regnet_y_400mf", "regnet_x_400mf",
             "convnext_tiny", "swin_t", "swin_v2_t", "vit_b_16", "maxvit_t",
             "fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]
TV_QUICK = ["resnet18", "mobilenet_v3_large", "swin_t"]

# (name, create_model kwargs, input side)
TIMM = [("resnet18", {}, 64), ("efficientnet_b0", {}, 64), ("mobilenetv3_small_100", {}, 64),
        ("regnetx_002", {}, 64), ("convnext_atto", {}, 64), ("vit_tiny_patch16_224", dict(img_size=64), 64),
        ("deit_tiny_patch16_224", dict(img_size=64), 64), ("swin_tiny_patch4_window7_224", dict(img_size=112), 112),
        ("mixer_s16_224", dict(img_size=64), 64), ("mobilevit_xxs", {}, 64), ("levit_128s", dict(img_size=64), 64),
        ("efficientformerv2_s0", dict(img_size=64), 64)]
TIMM_QUICK = ["resnet18", "vit_tiny_patch16_224"]

HF = ["bert", "gpt2", "llama", "vit"]
HF_QUICK = ["bert", "llama"]

MAX_TV_PARAMS = 100e6


def import_torchvision():
    return zoo.import_torchvision()


def suite(quick: bool, all_torchvision: bool = False) -> list:
    """[(zoo, name)] of the coverage table."""
    if quick:
        tv = TV_QUICK
    elif all_torchvision:
        tv = zoo.model_names()
    else:
        tv = TV_SUBSET
    return ([("torchvision", n) for n in tv] + [("timm", n) for n, _, _ in TIMM if not quick or n in TIMM_QUICK]
            + [("hf", n) for n in HF if not quick or n in HF_QUICK])


def _timm(name: str):
    zoo.import_torchvision()
    import timm
    kw, side = next((k, s) for n, k, s in TIMM if n == name)
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, **kw).eval()
    with torch.no_grad():  # zero-initialised heads make the oracles vacuous
        for mod in m.modules():
            if isinstance(mod, nn.Linear) and not mod.weight.abs().max() > 0:
                nn.init.normal_(mod.weight, std=0.05)
                if mod.bias is not None:
                    nn.init.normal_(mod.bias, std=0.05)
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    zoo.make_informative(m, (x,))
    return m, (x,), {}


def _hf(name: str):
    zoo.import_torchvision()
    import transformers as T
    T.logging.set_verbosity_error()
    torch.manual_seed(0)
    V = 64
    ids = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(1))
    if name == "bert":
        cfg = T.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=48, max_position_embeddings=32)
        return T.BertModel(cfg).eval(), (), dict(input_ids=ids)
    if name == "gpt2":
        cfg = T.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0,
                           eos_token_id=0)
        return T.GPT2LMHeadModel(cfg).eval(), (), dict(input_ids=ids, use_cache=False)
    if name == "llama":
        cfg = T.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        return T.LlamaForCausalLM(cfg).eval(), (), dict(input_ids=ids, use_cache=False)
    if name == "vit":
        cfg = T.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=48, num_labels=5)
        return T.ViTForImageClassification(cfg).eval(), (), dict(pixel_values=torch.randn(2, 3, 32, 32))
    raise KeyError(name)


def build(zoo_name: str, name: str, side: int | None = None):
    """(model, args, kwargs). ``side`` overrides the torchvision input side (e.g. 224 for timings)."""
    if zoo_name == "torchvision":
        m = zoo.build(name)
        s = side or zoo.input_size(name)
        x = torch.randn(1 if side else 2, 3, s, s, generator=torch.Generator().manual_seed(1))
        return m, (x,), {}
    if zoo_name == "timm":
        return _timm(name)
    if zoo_name == "hf":
        return _hf(name)
    raise KeyError(zoo_name)
