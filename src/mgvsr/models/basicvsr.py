"""BasicVSR (Chan et al., CVPR 2021): bidirectional recurrent propagation with SPyNet flow warping.

Shapes: input LR clip (B, T, 3, h, w), float in [0, 1]; output (B, T, 3, 4h, 4w). Any T >= 1 (T = 1
uses no flow) and any h, w. Module names and parameter shapes match BasicSR's
``basicsr/archs/basicvsr_arch.py`` (``BasicVSR``), so released checkpoints load with strict=True.

Per clip, the flows of all neighbouring frame pairs in both directions are computed in one SPyNet
call; the backward branch runs first and keeps its features, then the forward branch fuses them and
reconstructs each frame as soon as its forward feature is ready (the x4 head runs frame by frame).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mgvsr.models.blocks import ConvResidualBlocks, check_clip, flow_warp, same_layout
from mgvsr.models.spynet import SpyNet

# BasicSR hard-codes 64 channels in the HR part of the x4 upsampling head. Keep 64 to load released
# checkpoints; small CPU variants may narrow it (``head_feat``), since at 4x resolution it dominates their cost.
HR_FEAT = 64


class RecurrentVSRBase(nn.Module):
    """Shared pieces of BasicVSR and IconVSR: flow computation and the x4 reconstruction head.

    Subclasses define ``spynet``, ``upconv1``, ``upconv2``, ``conv_hr`` and ``conv_last``.
    """

    spynet: SpyNet
    upconv1: nn.Conv2d
    upconv2: nn.Conv2d
    conv_hr: nn.Conv2d
    conv_last: nn.Conv2d

    def _make_head(self, num_feat: int, head_feat: int = HR_FEAT) -> None:
        if head_feat < 1:
            raise ValueError(f"head_feat must be >= 1, got {head_feat}")
        self.upconv1 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1, bias=True)
        self.upconv2 = nn.Conv2d(num_feat, head_feat * 4, 3, 1, 1, bias=True)
        self.conv_hr = nn.Conv2d(head_feat, head_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(head_feat, 3, 3, 1, 1)

    def compute_flows(self, x: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Flows between neighbouring frames of ``x`` (B, T, 3, h, w), each (B, T-1, 2, h, w).

        Returns ``(flows_forward, flows_backward)``: ``flows_backward[:, i]`` warps features of frame
        i+1 onto frame i (used by the backward branch); ``flows_forward[:, i]`` warps frame i onto
        frame i+1. Both directions go through SPyNet as one batch. ``(None, None)`` when T == 1.
        """
        b, t, c, h, w = x.shape
        if t == 1:
            return None, None
        x_prev = same_layout(x[:, :-1].reshape(-1, c, h, w), x[:, 0])
        x_next = same_layout(x[:, 1:].reshape(-1, c, h, w), x[:, 0])
        flows = self.spynet(torch.cat([x_prev, x_next]), torch.cat([x_next, x_prev]))
        flows_backward, flows_forward = flows.view(2, b, t - 1, 2, h, w).unbind(0)
        return flows_forward, flows_backward

    def reconstruct(self, feat: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """x4 head for one frame: (B, C, h, w) features + (B, 3, h, w) LR -> (B, 3, 4h, 4w)."""
        out = F.leaky_relu(F.pixel_shuffle(self.upconv1(feat), 2), 0.1, inplace=True)
        out = F.leaky_relu(F.pixel_shuffle(self.upconv2(out), 2), 0.1, inplace=True)
        out = F.leaky_relu(self.conv_hr(out), 0.1, inplace=True)
        out = self.conv_last(out)
        return out + F.interpolate(lr, scale_factor=4, mode="bilinear", align_corners=False)


def warp(feat: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Warp (B, C, h, w) features with a (B, 2, h, w) flow."""
    return flow_warp(feat, flow.permute(0, 2, 3, 1))


class BasicVSR(RecurrentVSRBase):
    """BasicVSR x4. ``num_feat`` channels, ``num_block`` residual blocks per propagation branch.

    ``spynet_path`` optionally loads pretrained SPyNet weights (BasicSR or MMagic file). ``head_feat`` is
    the width of the HR part of the upsampling head (64 in BasicSR; only that loads released weights).
    """

    def __init__(
        self, num_feat: int = 64, num_block: int = 30, spynet_path: Optional[str] = None, head_feat: int = HR_FEAT
    ) -> None:
        super().__init__()
        if num_feat < 1 or num_block < 0:
            raise ValueError(f"BasicVSR: num_feat must be >= 1 and num_block >= 0, got {num_feat}, {num_block}")
        self.num_feat = num_feat
        self.spynet = SpyNet(spynet_path)
        self.backward_trunk = ConvResidualBlocks(num_feat + 3, num_feat, num_block)
        self.forward_trunk = ConvResidualBlocks(num_feat + 3, num_feat, num_block)
        self.fusion = nn.Conv2d(num_feat * 2, num_feat, 1, 1, 0, bias=True)
        self._make_head(num_feat, head_feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_clip(x, "BasicVSR input")
        b, t, _, h, w = x.shape
        flows_forward, flows_backward = self.compute_flows(x)

        # Backward-time propagation: frame T-1 down to 0.
        backward_feats: list[torch.Tensor] = [x.new_empty(0)] * t
        feat = same_layout(x.new_zeros(b, self.num_feat, h, w), x[:, 0])
        for i in range(t - 1, -1, -1):
            if i < t - 1:
                feat = warp(feat, flows_backward[:, i])
            feat = self.backward_trunk(torch.cat([x[:, i], feat], dim=1))
            backward_feats[i] = feat

        # Forward-time propagation, fusion and reconstruction, frame by frame.
        outputs = []
        feat = same_layout(x.new_zeros(b, self.num_feat, h, w), x[:, 0])
        for i in range(t):
            if i > 0:
                feat = warp(feat, flows_forward[:, i - 1])
            feat = self.forward_trunk(torch.cat([x[:, i], feat], dim=1))
            fused = F.leaky_relu(self.fusion(torch.cat([backward_feats[i], feat], dim=1)), 0.1, inplace=True)
            outputs.append(self.reconstruct(fused, x[:, i]))
        return torch.stack(outputs, dim=1)
