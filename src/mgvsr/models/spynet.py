"""SPyNet optical flow (Ranjan & Black, CVPR 2017) as used by BasicVSR / IconVSR.

A 6-level image pyramid (1/32 ... 1/1 of the input after resizing to multiples of 32); at each level a
small CNN (``basic_module[level]``) refines the upsampled flow from the coarser level given the
reference frame, the supporting frame warped by that flow, and the flow itself. Inputs are RGB in
[0, 1], normalised internally with the ImageNet mean/std (buffers ``mean`` and ``std``, kept in the
state dict as BasicSR does). Names and shapes match BasicSR's ``basicsr/archs/spynet_arch.py``.

Flow convention: ``spynet(ref, supp)`` returns the flow (N, 2, H, W) in pixels such that
``flow_warp(supp, flow)`` is aligned with ``ref``; channel 0 is x (width), channel 1 is y (height).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mgvsr.models.blocks import flow_warp, same_layout
from mgvsr.models.weights import load_weights_into

NUM_LEVELS = 6


class SpyNetBasicModule(nn.Module):
    """Five 7x7 convs 8 -> 32 -> 64 -> 32 -> 16 -> 2 with ReLU between (``basic_module.{0,2,4,6,8}``)."""

    def __init__(self) -> None:
        super().__init__()
        channels = [8, 32, 64, 32, 16, 2]
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
            layers.append(nn.Conv2d(cin, cout, kernel_size=7, stride=1, padding=3))
            if i < len(channels) - 2:
                layers.append(nn.ReLU(inplace=False))
        self.basic_module = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.basic_module(x)


class SpyNet(nn.Module):
    """SPyNet flow estimator; ``load_path`` optionally loads pretrained weights (BasicSR or MMagic file)."""

    # Fixed ImageNet normalisation: a weights file may lack these (see models.weights.check_state).
    CONSTANT_BUFFERS = ("mean", "std")

    def __init__(self, load_path: Optional[str] = None) -> None:
        super().__init__()
        self.basic_module = nn.ModuleList([SpyNetBasicModule() for _ in range(NUM_LEVELS)])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        if load_path:
            self.load_pretrained(load_path)

    def load_pretrained(self, path: str) -> None:
        """Load SPyNet weights; a ``spynet.`` prefix (weights cut from a full model) is stripped."""
        load_weights_into(self, path, prefix="spynet.")

    def _process(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        """Flow for inputs whose height and width are multiples of 2**(NUM_LEVELS - 1)."""
        # Normalise both frames in one go, then build the pyramids (finest level last).
        both = (torch.cat([ref, supp], dim=0) - self.mean) / self.std
        pyramid = [both]
        for _ in range(NUM_LEVELS - 1):
            pyramid.append(F.avg_pool2d(pyramid[-1], kernel_size=2, stride=2, count_include_pad=False))
        pyramid.reverse()

        n = ref.shape[0]
        coarse = pyramid[0]
        flow = same_layout(coarse.new_zeros(n, 2, coarse.shape[2], coarse.shape[3]), coarse)
        for level, images in enumerate(pyramid):
            ref_l, supp_l = images[:n], images[n:]
            if level > 0:
                # Twice the resolution -> twice the displacement in pixels.
                flow = F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True) * 2.0
            warped = flow_warp(supp_l, flow.permute(0, 2, 3, 1), padding_mode="border")
            flow = flow + self.basic_module[level](torch.cat([ref_l, warped, flow], dim=1))
        return flow

    def forward(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        """Flow from ``ref`` to ``supp`` (both (N, 3, H, W) in [0, 1]) as (N, 2, H, W) pixels.

        Any H, W: frames are resized (bilinear) to the next multiples of 32, the flow is computed
        there, resized back and its x / y components rescaled by W / W32 and H / H32.
        """
        if ref.shape != supp.shape or ref.dim() != 4 or ref.shape[1] != 3:
            raise ValueError(
                f"SpyNet: ref and supp must both be (N, 3, H, W); got {tuple(ref.shape)} and {tuple(supp.shape)}"
            )
        h, w = ref.shape[-2:]
        unit = 2 ** (NUM_LEVELS - 1)
        h_up, w_up = unit * math.ceil(h / unit), unit * math.ceil(w / unit)
        if (h_up, w_up) != (h, w):
            ref = F.interpolate(ref, size=(h_up, w_up), mode="bilinear", align_corners=False)
            supp = F.interpolate(supp, size=(h_up, w_up), mode="bilinear", align_corners=False)
        flow = self._process(ref, supp)
        if (h_up, w_up) != (h, w):
            flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
            scale = flow.new_tensor([w / w_up, h / h_up]).view(1, 2, 1, 1)
            flow = flow * scale
        return flow
