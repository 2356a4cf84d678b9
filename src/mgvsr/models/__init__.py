"""Models: SPyNet, BasicVSR, IconVSR (BasicSR-compatible parameter names).

``build_model(ModelConfig)`` and ``build_for_inference(weights_file)`` live in
:mod:`mgvsr.models.loading`, the one place that turns a config or a weights file into a model.
All models map an LR clip (B, T, 3, h, w), float in [0, 1], to (B, T, 3, 4h, 4w).
"""

from __future__ import annotations

from mgvsr.models.basicvsr import BasicVSR
from mgvsr.models.blocks import flow_warp
from mgvsr.models.dcn import DCNv2Pack, ModulatedDeformConv2d, modulated_deform_conv2d
from mgvsr.models.edvr import EDVRFeatureExtractor, PCDAlignment, TSAFusion
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
