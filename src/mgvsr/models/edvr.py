"""EDVR pieces used by IconVSR's keyframe branch: PCD alignment, TSA fusion, the feature extractor.

Names and shapes follow BasicSR (``basicsr/archs/edvr_arch.py`` and ``EDVRFeatureExtractor`` in
``basicsr/archs/basicvsr_arch.py``), so BasicSR's "EDVR for IconVSR" weights load with strict=True.
Pyramid levels: L1 = full LR size, L2 = 1/2, L3 = 1/4 (inputs must have h, w divisible by 4).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mgvsr.models.blocks import make_blocks
from mgvsr.models.dcn import DCNv2Pack


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.1, inplace=True)


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class PCDAlignment(nn.Module):
    """Pyramid, Cascading and Deformable alignment of neighbour features to reference features.

    Works on any batch of (neighbour, reference) pairs: ``nbr`` and ``ref`` are lists
    ``[L1, L2, L3]`` of (N, C, h / 2**l, w / 2**l) tensors; returns aligned L1 features (N, C, h, w).
    """

    def __init__(self, num_feat: int = 64, deformable_groups: int = 8) -> None:
        super().__init__()
        self.offset_conv1 = nn.ModuleDict()
        self.offset_conv2 = nn.ModuleDict()
        self.offset_conv3 = nn.ModuleDict()
        self.dcn_pack = nn.ModuleDict()
        self.feat_conv = nn.ModuleDict()
        for i in (3, 2, 1):  # coarse to fine, as BasicSR registers them
            level = f"l{i}"
            self.offset_conv1[level] = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
            if i == 3:
                self.offset_conv2[level] = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            else:
                self.offset_conv2[level] = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
                self.offset_conv3[level] = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.dcn_pack[level] = DCNv2Pack(num_feat, num_feat, 3, padding=1, deformable_groups=deformable_groups)
            if i < 3:
                self.feat_conv[level] = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
        self.cas_offset_conv1 = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
        self.cas_offset_conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.cas_dcnpack = DCNv2Pack(num_feat, num_feat, 3, padding=1, deformable_groups=deformable_groups)

    def forward(self, nbr: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        up_offset: Optional[torch.Tensor] = None
        up_feat: Optional[torch.Tensor] = None
        feat = nbr[0]
        for i in (3, 2, 1):
            level = f"l{i}"
            offset = _lrelu(self.offset_conv1[level](torch.cat([nbr[i - 1], ref[i - 1]], dim=1)))
            if i == 3:
                offset = _lrelu(self.offset_conv2[level](offset))
            else:
                offset = _lrelu(self.offset_conv2[level](torch.cat([offset, up_offset], dim=1)))
                offset = _lrelu(self.offset_conv3[level](offset))
            feat = self.dcn_pack[level](nbr[i - 1], offset)
            if i < 3:
                feat = self.feat_conv[level](torch.cat([feat, up_feat], dim=1))
            if i > 1:
                feat = _lrelu(feat)
                # Offsets are in pixels of this level: double them on the finer level.
                up_offset = _up2(offset) * 2
                up_feat = _up2(feat)
        # Cascading refinement at L1.
        offset = torch.cat([feat, ref[0]], dim=1)
        offset = _lrelu(self.cas_offset_conv2(_lrelu(self.cas_offset_conv1(offset))))
        return _lrelu(self.cas_dcnpack(feat, offset))


class TSAFusion(nn.Module):
    """Temporal-spatial attention fusion of (B, T, C, h, w) aligned features into (B, C, h, w)."""

    def __init__(self, num_feat: int = 64, num_frame: int = 5, center_frame_idx: int = 2) -> None:
        super().__init__()
        self.center_frame_idx = center_frame_idx
        # temporal attention
        self.temporal_attn1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.temporal_attn2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.feat_fusion = nn.Conv2d(num_frame * num_feat, num_feat, 1, 1)
        # spatial attention
        self.spatial_attn1 = nn.Conv2d(num_frame * num_feat, num_feat, 1)
        self.spatial_attn2 = nn.Conv2d(num_feat * 2, num_feat, 1)
        self.spatial_attn3 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.spatial_attn4 = nn.Conv2d(num_feat, num_feat, 1)
        self.spatial_attn5 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.spatial_attn_l1 = nn.Conv2d(num_feat, num_feat, 1)
        self.spatial_attn_l2 = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
        self.spatial_attn_l3 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.spatial_attn_add1 = nn.Conv2d(num_feat, num_feat, 1)
        self.spatial_attn_add2 = nn.Conv2d(num_feat, num_feat, 1)

    @staticmethod
    def _pool(x: torch.Tensor) -> torch.Tensor:
        """Max and average 3x3 / stride-2 pooling, concatenated on channels."""
        return torch.cat([F.max_pool2d(x, 3, 2, 1), F.avg_pool2d(x, 3, 2, 1)], dim=1)

    def forward(self, aligned: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = aligned.shape
        # Temporal attention: per-pixel sigmoid(<embedding of frame, embedding of centre frame>).
        emb_ref = self.temporal_attn1(aligned[:, self.center_frame_idx])
        emb = self.temporal_attn2(aligned.reshape(b * t, c, h, w)).view(b, t, -1, h, w)
        corr = torch.sigmoid((emb * emb_ref.unsqueeze(1)).sum(dim=2))  # (b, t, h, w)
        aligned = (aligned * corr.unsqueeze(2)).reshape(b, t * c, h, w)

        feat = _lrelu(self.feat_fusion(aligned))

        # Spatial attention with a two-level pyramid.
        attn = _lrelu(self.spatial_attn1(aligned))
        attn = _lrelu(self.spatial_attn2(self._pool(attn)))
        attn_level = _lrelu(self.spatial_attn_l1(attn))
        attn_level = _lrelu(self.spatial_attn_l2(self._pool(attn_level)))
        attn_level = _up2(_lrelu(self.spatial_attn_l3(attn_level)))
        attn = _lrelu(self.spatial_attn3(attn)) + attn_level
        attn = _up2(_lrelu(self.spatial_attn4(attn)))
        attn = self.spatial_attn5(attn)
        attn_add = self.spatial_attn_add2(_lrelu(self.spatial_attn_add1(attn)))
        # sigmoid(attn) * 2 is about 1 at initialisation.
        return feat * torch.sigmoid(attn) * 2 + attn_add


class EDVRFeatureExtractor(nn.Module):
    """EDVR front end: per-frame pyramid features, PCD alignment to the centre frame, TSA fusion.

    Input (B, N, 3, h, w) with h, w divisible by 4 and N = ``num_input_frame``; output (B, C, h, w).
    All N frames of all B windows are aligned in one batched PCD call.
    BasicSR hard-codes 64 channels in ``feature_extraction``; here it follows ``num_feat`` (identical
    at the released size 64, and small variants work).
    """

    def __init__(
        self, num_input_frame: int, num_feat: int, load_path: Optional[str] = None, deformable_groups: int = 8
    ) -> None:
        super().__init__()
        self.num_input_frame = num_input_frame
        self.center_frame_idx = num_input_frame // 2
        if num_feat % deformable_groups:
            raise ValueError(f"EDVRFeatureExtractor: num_feat={num_feat} must be divisible by {deformable_groups}")
        self.conv_first = nn.Conv2d(3, num_feat, 3, 1, 1)
        self.feature_extraction = make_blocks(5, num_feat)
        self.conv_l2_1 = nn.Conv2d(num_feat, num_feat, 3, 2, 1)
        self.conv_l2_2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_l3_1 = nn.Conv2d(num_feat, num_feat, 3, 2, 1)
        self.conv_l3_2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.pcd_align = PCDAlignment(num_feat=num_feat, deformable_groups=deformable_groups)
        self.fusion = TSAFusion(num_feat=num_feat, num_frame=num_input_frame, center_frame_idx=self.center_frame_idx)
        if load_path:
            self.load_pretrained(load_path)

    def load_pretrained(self, path: str) -> None:
        """Load extractor weights: BasicSR's "EDVR for IconVSR" file, a full EDVR checkpoint (the
        reconstruction part is ignored), or an IconVSR checkpoint (``edvr.`` prefix)."""
        from mgvsr.models.weights import load_weights_into

        load_weights_into(self, path, prefix="edvr.", ignore_extra=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c, h, w = x.shape
        if n != self.num_input_frame or h % 4 or w % 4:
            raise ValueError(
                f"EDVRFeatureExtractor: expected (B, {self.num_input_frame}, 3, h, w) with h, w divisible by 4, "
                f"got {tuple(x.shape)}"
            )
        feat_l1 = self.feature_extraction(_lrelu(self.conv_first(x.reshape(b * n, c, h, w))))
        feat_l2 = _lrelu(self.conv_l2_2(_lrelu(self.conv_l2_1(feat_l1))))
        feat_l3 = _lrelu(self.conv_l3_2(_lrelu(self.conv_l3_1(feat_l2))))
        nbr = [feat_l1, feat_l2, feat_l3]
        # Reference = centre frame of each window, repeated for its n neighbours.
        ref = []
        for f in nbr:
            f5 = f.view(b, n, *f.shape[1:])
            ref.append(f5[:, self.center_frame_idx : self.center_frame_idx + 1].expand_as(f5).reshape(f.shape))
        aligned = self.pcd_align(nbr, ref).view(b, n, -1, h, w)
        return self.fusion(aligned)
