"""IconVSR (Chan et al., CVPR 2021): BasicVSR + information-refill + coupled propagation.

* Information-refill: every ``keyframe_stride``-th frame (and the last frame) is a keyframe; an EDVR
  feature extractor (PCD alignment + TSA fusion over a window of ``2 * temporal_padding + 1`` frames)
  computes its features, which are fused into the propagated features (``backward_fusion`` /
  ``forward_fusion``) before the residual trunks.
* Coupled propagation: the forward trunk also takes the backward branch's feature of that frame.

Shapes: input (B, T, 3, h, w) float in [0, 1], output (B, T, 3, 4h, 4w), any T >= 1 and h, w >= 4.
Frames are reflect-padded to multiples of 4 for the EDVR pyramid and the output is cropped back.
Names and shapes match BasicSR's ``IconVSR`` (``basicsr/archs/basicvsr_arch.py``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mgvsr.models.basicvsr import HR_FEAT, RecurrentVSRBase, warp
from mgvsr.models.blocks import ConvResidualBlocks, check_clip, same_layout
from mgvsr.models.edvr import EDVRFeatureExtractor
from mgvsr.models.spynet import SpyNet


def keyframe_indices(num_frames: int, stride: int) -> list[int]:
    """Frames 0, stride, 2*stride, ... plus the last frame."""
    idx = list(range(0, num_frames, stride))
    if idx[-1] != num_frames - 1:
        idx.append(num_frames - 1)
    return idx


def temporal_window_index(num_frames: int, padding: int) -> list[int]:
    """Source frame for each position -padding .. num_frames - 1 + padding of the padded clip.

    Matches BasicSR: for padding p the left pad is frames [2p, 2p-1, ..., p+1] and the right pad
    frames [n-p-2, ..., n-2p-1] (e.g. p = 2: ``x[:, [4, 3]]`` and ``x[:, [-4, -5]]``). Clips too short
    for that (n < 2p + 1) fall back to mirror reflection about the end frames, clamped to the clip.
    """
    n, p = num_frames, padding
    index = []
    for pos in range(-p, n + p):
        if pos < 0:
            src = p - pos
        elif pos >= n:
            src = 2 * n - p - 2 - pos
        else:
            src = pos
        if not 0 <= src < n:  # short clip: plain reflection, then clamp
            src = -pos if pos < 0 else 2 * (n - 1) - pos
            src = min(max(src, 0), n - 1)
        index.append(src)
    return index


class IconVSR(RecurrentVSRBase):
    """IconVSR x4. ``edvr_path`` optionally loads the keyframe extractor, ``spynet_path`` SPyNet."""

    def __init__(
        self,
        num_feat: int = 64,
        num_block: int = 30,
        keyframe_stride: int = 5,
        temporal_padding: int = 2,
        spynet_path: Optional[str] = None,
        edvr_path: Optional[str] = None,
        head_feat: int = HR_FEAT,
    ) -> None:
        super().__init__()
        if keyframe_stride < 1 or temporal_padding < 1:
            raise ValueError(
                f"IconVSR: keyframe_stride and temporal_padding must be >= 1, got {keyframe_stride}, {temporal_padding}"
            )
        self.num_feat = num_feat
        self.keyframe_stride = keyframe_stride
        self.temporal_padding = temporal_padding
        self.edvr = EDVRFeatureExtractor(temporal_padding * 2 + 1, num_feat, edvr_path)
        self.spynet = SpyNet(spynet_path)
        self.backward_fusion = nn.Conv2d(2 * num_feat, num_feat, 3, 1, 1, bias=True)
        self.backward_trunk = ConvResidualBlocks(num_feat + 3, num_feat, num_block)
        self.forward_fusion = nn.Conv2d(2 * num_feat, num_feat, 3, 1, 1, bias=True)
        self.forward_trunk = ConvResidualBlocks(2 * num_feat + 3, num_feat, num_block)
        self._make_head(num_feat, head_feat)

    def keyframe_features(self, x: torch.Tensor, keyframes: list[int]) -> dict[int, torch.Tensor]:
        """EDVR features of each keyframe from its temporally padded window, one batched call."""
        b, t = x.shape[:2]
        window = 2 * self.temporal_padding + 1
        src = temporal_window_index(t, self.temporal_padding)
        # Window of keyframe k covers padded positions k .. k + window - 1.
        index = torch.tensor([src[k + j] for k in keyframes for j in range(window)], device=x.device)
        windows = x.index_select(1, index).view(b, len(keyframes), window, *x.shape[2:])
        feats = self.edvr(windows.transpose(0, 1).reshape(len(keyframes) * b, window, *x.shape[2:]))
        feats = feats.view(len(keyframes), b, *feats.shape[1:])
        return {k: feats[j] for j, k in enumerate(keyframes)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_clip(x, "IconVSR input", min_size=4)
        b, t, c, h_in, w_in = x.shape
        # Reflect-pad to multiples of 4 (EDVR's pyramid has levels at 1/2 and 1/4).
        pad_h, pad_w = (4 - h_in % 4) % 4, (4 - w_in % 4) % 4
        if pad_h or pad_w:
            x = F.pad(x.reshape(b * t, c, h_in, w_in), [0, pad_w, 0, pad_h], mode="reflect")
            x = x.view(b, t, c, h_in + pad_h, w_in + pad_w)
        h, w = x.shape[-2:]

        keyframes = keyframe_indices(t, self.keyframe_stride)
        flows_forward, flows_backward = self.compute_flows(x)
        key_feats = self.keyframe_features(x, keyframes)

        # Backward-time propagation with information-refill at keyframes.
        backward_feats: list[torch.Tensor] = [x.new_empty(0)] * t
        feat = same_layout(x.new_zeros(b, self.num_feat, h, w), x[:, 0])
        for i in range(t - 1, -1, -1):
            if i < t - 1:
                feat = warp(feat, flows_backward[:, i])
            if i in key_feats:
                feat = self.backward_fusion(torch.cat([feat, key_feats[i]], dim=1))
            feat = self.backward_trunk(torch.cat([x[:, i], feat], dim=1))
            backward_feats[i] = feat

        # Forward-time propagation coupled with the backward features; reconstruct frame by frame.
        outputs = []
        feat = same_layout(x.new_zeros(b, self.num_feat, h, w), x[:, 0])
        for i in range(t):
            if i > 0:
                feat = warp(feat, flows_forward[:, i - 1])
            if i in key_feats:
                feat = self.forward_fusion(torch.cat([feat, key_feats[i]], dim=1))
            feat = self.forward_trunk(torch.cat([x[:, i], backward_feats[i], feat], dim=1))
            outputs.append(self.reconstruct(feat, x[:, i]))
        return torch.stack(outputs, dim=1)[..., : 4 * h_in, : 4 * w_in]
