"""Models: SPyNet, BasicVSR, IconVSR (BasicSR-compatible parameter names).

All models map an LR clip (B, T, 3, h, w), float in [0, 1], to (B, T, 3, 4h, 4w).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from mgvsr.models.basicvsr import BasicVSR
from mgvsr.models.blocks import flow_warp
from mgvsr.models.dcn import DCNv2Pack, ModulatedDeformConv2d, modulated_deform_conv2d
from mgvsr.models.edvr import EDVRFeatureExtractor, PCDAlignment, TSAFusion
from mgvsr.models.iconvsr import IconVSR
from mgvsr.models.spynet import SpyNet
from mgvsr.models.weights import (
    WeightsError,
    export_basicsr,
    load_state,
    load_weights,
    save_safetensors,
)

if TYPE_CHECKING:
    from mgvsr.config import ModelConfig

__all__ = [
    "BasicVSR",
    "IconVSR",
    "SpyNet",
    "EDVRFeatureExtractor",
    "PCDAlignment",
    "TSAFusion",
    "DCNv2Pack",
    "ModulatedDeformConv2d",
    "modulated_deform_conv2d",
    "flow_warp",
    "build_model",
    "load_state",
    "load_weights",
    "save_safetensors",
    "export_basicsr",
    "WeightsError",
]


def build_model(cfg: "ModelConfig") -> nn.Module:
    """Build the network described by ``cfg`` (a :class:`mgvsr.config.ModelConfig`).

    Pretrained SPyNet / EDVR weights (``spynet_weights`` / ``edvr_weights``) are loaded into the
    sub-networks, then ``init_weights`` (a full model, strict) if set.
    """
    if cfg.scale != 4:
        raise ValueError(f"model.scale: only x4 is supported, got {cfg.scale}")
    if cfg.name == "basicvsr":
        model: nn.Module = BasicVSR(cfg.num_feat, cfg.num_block, spynet_path=cfg.spynet_weights, head_feat=cfg.head_feat)
    elif cfg.name == "iconvsr":
        model = IconVSR(
            cfg.num_feat,
            cfg.num_block,
            keyframe_stride=cfg.keyframe_stride,
            temporal_padding=cfg.temporal_padding,
            spynet_path=cfg.spynet_weights,
            edvr_path=cfg.edvr_weights,
            head_feat=cfg.head_feat,
        )
    else:
        raise ValueError(f"model.name: unknown model '{cfg.name}'; choose 'basicvsr' or 'iconvsr'")
    if cfg.init_weights:
        load_weights(model, cfg.init_weights, strict=True)
    return model
