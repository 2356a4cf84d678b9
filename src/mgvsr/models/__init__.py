"""Models: SPyNet, BasicVSR, IconVSR, EDVR, BasicVSR++ (BasicSR-compatible parameter names).

Recurrent models (BasicVSR, IconVSR, BasicVSR++) map an LR clip (B, T, 3, h, w), float in [0, 1], to
(B, T, 3, 4h, 4w). EDVR is a sliding-window model: ``forward`` maps a window (B, N, 3, h, w) to its
centre frame (B, 3, 4h, 4w) (what training uses), and ``forward_clip`` maps a clip (B, T, 3, h, w) to
(B, T, 3, 4h, 4w) (what inference uses). Whole-clip callers use :func:`forward_clip`, which picks
the model's ``forward_clip`` when it has one.
``build_model(ModelConfig)`` and ``build_for_inference(weights_file)`` live in
:mod:`mgvsr.models.loading`, the one place that turns a config or a weights file into a model.
"""

from __future__ import annotations

import torch
from torch import nn

from mgvsr.models.basicvsr import BasicVSR
from mgvsr.models.blocks import flow_warp
from mgvsr.models.dcn import DCNv2Pack, ModulatedDeformConv2d, modulated_deform_conv2d
from mgvsr.models.basicvsrpp import BasicVSRPlusPlus, SecondOrderDeformableAlignment
from mgvsr.models.edvr import EDVR, EDVRFeatureExtractor, PCDAlignment, TSAFusion
from mgvsr.models.iconvsr import IconVSR
from mgvsr.models.loading import build_for_inference, build_model, read_weights
from mgvsr.models.spynet import SpyNet
from mgvsr.models.weights import (
    WeightsError,
    export_basicsr,
    load_state,
    load_weights,
    save_safetensors,
)

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
    "build_for_inference",
    "read_weights",
    "load_state",
    "load_weights",
    "save_safetensors",
    "export_basicsr",
    "WeightsError",
]


def forward_clip(model: nn.Module, clip: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, h, w) -> (B, T, 3, 4h, 4w) for any model: a sliding-window model's ``forward_clip``
    (every frame from its own padded window), else the model's plain forward. The one way whole-clip
    callers (the evaluation runner) call a model."""
    method = getattr(model, "forward_clip", None)
    return method(clip) if method is not None else model(clip)
