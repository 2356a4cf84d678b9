"""Models: SPyNet, BasicVSR, IconVSR, EDVR, BasicVSR++ (BasicSR-compatible parameter names).

Recurrent models (BasicVSR, IconVSR, BasicVSR++) map an LR clip (B, T, 3, h, w), float in [0, 1], to
(B, T, 3, 4h, 4w). EDVR is a sliding-window model: ``forward`` maps a window (B, N, 3, h, w) to its
centre frame (B, 3, 4h, 4w) (what training uses), and ``forward_clip`` maps a clip (B, T, 3, h, w) to
(B, T, 3, 4h, 4w) (what inference uses). Whole-clip callers use :func:`forward_clip`, which picks
the model's ``forward_clip`` when it has one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from mgvsr.models.basicvsr import BasicVSR
from mgvsr.models.blocks import flow_warp
from mgvsr.models.dcn import DCNv2Pack, ModulatedDeformConv2d, modulated_deform_conv2d
from mgvsr.models.basicvsrpp import BasicVSRPlusPlus, SecondOrderDeformableAlignment
from mgvsr.models.edvr import EDVR, EDVRFeatureExtractor, PCDAlignment, TSAFusion
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
    "EDVR",
    "BasicVSRPlusPlus",
    "SecondOrderDeformableAlignment",
    "forward_clip",
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
    elif cfg.name == "edvr":
        model = EDVR(
            num_feat=cfg.num_feat,
            num_frame=cfg.num_frame,
            deformable_groups=cfg.deformable_groups,
            num_extract_block=cfg.num_extract_block,
            num_reconstruct_block=cfg.num_block,
            center_frame_idx=cfg.center_frame_idx,
            with_predeblur=cfg.with_predeblur,
            with_tsa=cfg.with_tsa,
            head_feat=cfg.head_feat,
        )
    elif cfg.name == "basicvsrpp":
        model = BasicVSRPlusPlus(
            mid_channels=cfg.num_feat,
            num_blocks=cfg.num_block,
            max_residue_magnitude=cfg.max_residue_magnitude,
            spynet_path=cfg.spynet_weights,
            cpu_cache_length=cfg.cpu_cache_length,
            head_feat=cfg.head_feat,
        )
    else:
        raise ValueError(
            f"model.name: unknown model '{cfg.name}'; choose 'basicvsr', 'iconvsr', 'edvr' or 'basicvsrpp'"
        )
    if cfg.init_weights:
        load_weights(model, cfg.init_weights, strict=True)
    return model


def forward_clip(model: nn.Module, clip: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, h, w) -> (B, T, 3, 4h, 4w) for any model: a sliding-window model's ``forward_clip``
    (every frame from its own padded window), else the model's plain forward."""
    run = getattr(model, "forward_clip", None)
    return run(clip) if run is not None else model(clip)
