"""Models from third-party libraries, random init from small configs (nothing is downloaded).

``build(name)`` returns ``(model, args, kwargs)`` in eval mode, made informative for the
oracles (zoo.make_informative). ``MODELS`` maps each name to (library, domain, builder);
``available(name)`` says whether its library is installed (the ``thirdparty`` extra).
"""
from __future__ import annotations

import importlib.util

import torch
import torch.nn as nn

import zoo

__all__ = ["MODELS", "build", "available", "library"]


def _x(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _diffusers_unet():
    from diffusers import UNet2DModel
    m = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
                    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                    norm_num_groups=8, attention_head_dim=8)
    return m, (_x(2, 3, 16, 16), torch.tensor([10, 500])), {"return_dict": False}


def _diffusers_cond_unet():
    from diffusers import UNet2DConditionModel
    m = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                             block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24,
                             norm_num_groups=8, attention_head_dim=8)
    return m, (_x(2, 4, 16, 16), torch.tensor([10, 500]), _x(2, 6, 24, seed=2)), {"return_dict": False}


def _smp(arch, encoder):
    def make():
        import segmentation_models_pytorch as smp
        m = getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, in_channels=3, classes=2)
        return m, (_x(2, 3, 64, 64),), {}
    return make


def _monai_unet():
    from monai.networks.nets import UNet
    m = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
    return m, (_x(2, 1, 32, 32),), {}


def _monai_basic_unet():
    from monai.networks.nets import BasicUNet
    m = BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4))
    return m, (_x(1, 1, 32, 32, 32),), {}


def _monai_swin_unetr():
    from monai.networks.nets import SwinUNETR
    m = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, spatial_dims=3, depths=(1, 1, 1, 1),
                  num_heads=(1, 1, 2, 2))
    return m, (_x(1, 1, 64, 64, 64),), {}


def _tv_fpn_backbone():
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    m = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    return m, (_x(2, 3, 64, 64),), {}


def _tv_retinanet_head():
    from torchvision.models.detection.retinanet import RetinaNetHead

    class Head(nn.Module):  # the detection head over three FPN levels
        def __init__(self):
            super().__init__()
            self.head = RetinaNetHead(32, num_anchors=3, num_classes=5)

        def forward(self, p3, p4, p5):
            out = self.head([p3, p4, p5])
            return out["cls_logits"], out["bbox_regression"]

    return Head(), (_x(2, 32, 16, 16), _x(2, 32, 8, 8, seed=2), _x(2, 32, 4, 4, seed=3)), {}


def _hf_detr():
    import transformers as T
    backbone = T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage1", "stage2"])
    cfg = T.DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False, d_model=32,
                       encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                       encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=5, num_labels=3)
    return T.DetrForObjectDetection(cfg), (), {"pixel_values": _x(2, 3, 64, 64), "return_dict": False}


def _hf_yolos():
    import transformers as T
    cfg = T.YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        image_size=[32, 32], patch_size=8, num_detection_tokens=5, num_labels=3)
    return T.YolosForObjectDetection(cfg), (), {"pixel_values": _x(2, 3, 32, 32), "return_dict": False}


def _open_clip():
    import open_clip
    m = open_clip.CLIP(embed_dim=32, vision_cfg=dict(layers=2, width=64, patch_size=16, image_size=32, head_width=32),
                       text_cfg=dict(context_length=8, vocab_size=100, width=32, heads=2, layers=2))
    text = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(3))
    return m, (_x(2, 3, 32, 32), text), {}


def _hf_clip():
    import transformers as T
    cfg = T.CLIPConfig(text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=16),
                       vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, image_size=32, patch_size=8), projection_dim=16)
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(3))
    return T.CLIPModel(cfg), (), {"input_ids": ids, "pixel_values": _x(2, 3, 32, 32), "return_dict": False}


def _hf_wav2vec2():
    import transformers as T
    cfg = T.Wav2Vec2Config(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
                           num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, do_stable_layer_norm=True)
    return T.Wav2Vec2ForCTC(cfg), (_x(2, 400),), {}


def _hf_whisper():
    import transformers as T
    cfg = T.WhisperConfig(vocab_size=64, num_mel_bins=8, d_model=32, encoder_layers=2, decoder_layers=2,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, max_source_positions=16, max_target_positions=16, use_cache=False,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    dec = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(3))
    return T.WhisperModel(cfg), (), {"input_features": _x(2, 8, 32), "decoder_input_ids": dec}


# name: (library module, domain, builder)
MODELS = {
    "diffusers UNet2DModel": ("diffusers", "diffusion", _diffusers_unet),
    "diffusers UNet2DConditionModel": ("diffusers", "diffusion", _diffusers_cond_unet),
    "smp Unet (resnet18)": ("segmentation_models_pytorch", "segmentation", _smp("Unet", "resnet18")),
    "smp FPN (mobilenet_v2)": ("segmentation_models_pytorch", "segmentation", _smp("FPN", "mobilenet_v2")),
    "smp DeepLabV3Plus (resnet18)": ("segmentation_models_pytorch", "segmentation", _smp("DeepLabV3Plus", "resnet18")),
    "MONAI UNet 2-D": ("monai", "medical imaging", _monai_unet),
    "MONAI BasicUNet 3-D": ("monai", "medical imaging", _monai_basic_unet),
    "MONAI SwinUNETR 3-D": ("monai", "medical imaging", _monai_swin_unetr),
    "torchvision FPN backbone (resnet18)": ("torchvision", "detection", _tv_fpn_backbone),
    "torchvision RetinaNet head": ("torchvision", "detection", _tv_retinanet_head),
    "HF DetrForObjectDetection": ("transformers", "detection", _hf_detr),
    "HF YolosForObjectDetection": ("transformers", "detection", _hf_yolos),
    "open_clip CLIP": ("open_clip", "contrastive image-text", _open_clip),
    "HF CLIPModel": ("transformers", "contrastive image-text", _hf_clip),
    "HF Wav2Vec2ForCTC": ("transformers", "speech", _hf_wav2vec2),
    "HF WhisperModel": ("transformers", "speech", _hf_whisper),
}


def library(name: str) -> str:
    return MODELS[name][0]


def available(name: str) -> bool:
    return importlib.util.find_spec(library(name)) is not None


@torch.no_grad()
def build(name: str):
    """``(model, args, kwargs)``: random init (seed 0), eval mode, informative for the oracles."""
    zoo.import_torchvision()
    try:
        import transformers
        transformers.logging.set_verbosity_error()
    except ImportError:
        pass
    torch.manual_seed(0)
    model, args, kwargs = MODELS[name][2]()
    model.eval()
    zoo.make_informative(_WithKwargs(model, kwargs), args)
    return model.eval(), args, kwargs


class _WithKwargs(nn.Module):
    """``model`` called with fixed keyword inputs, for ``zoo.make_informative``."""

    def __init__(self, model: nn.Module, kwargs: dict):
        super().__init__()
        self.model, self.kwargs = model, kwargs

    def forward(self, *args):
        return self.model(*args, **self.kwargs)
