"""EDVR (Wang et al., CVPRW 2019): PCD alignment, TSA fusion, the full sliding-window model and the
feature extractor used by IconVSR's keyframe branch.

Names and shapes follow BasicSR (``basicsr/archs/edvr_arch.py``: ``EDVR``, ``PCDAlignment``,
``TSAFusion``, ``PredeblurModule``; ``EDVRFeatureExtractor`` in ``basicsr/archs/basicvsr_arch.py``),
so BasicSR's EDVR checkpoints and its "EDVR for IconVSR" weights load with strict=True.
Pyramid levels: L1 = full LR size, L2 = 1/2, L3 = 1/4, so the pyramid needs h, w divisible by 4;
:class:`EDVR` reflect-pads other sizes and crops the output back.

EDVR is a *sliding-window* model: ``EDVR.forward`` maps a window (B, N, 3, h, w) of ``N = num_frame``
frames to the super-resolved centre frame (B, 3, 4h, 4w), as in BasicSR. ``EDVR.forward_clip`` maps a
whole clip (B, T, 3, h, w) to (B, T, 3, 4h, 4w): frame i is predicted from the window centred on it,
padded at the clip ends with BasicSR's ``reflection_circle`` rule (:func:`window_indices`), which is
the padding of BasicSR's REDS4 test options for EDVR (``VideoTestDataset``, ``padding:
reflection_circle``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mgvsr.models.blocks import ResidualBlockNoBN, check_clip, make_blocks
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




class _PyramidAligner(nn.Module):
    """EDVR's shared front end: L1 features -> L2 / L3 pyramid -> PCD alignment of every frame of a
    window to its centre frame (one batched PCD call for all B * N frames)."""

    conv_l2_1: nn.Conv2d
    conv_l2_2: nn.Conv2d
    conv_l3_1: nn.Conv2d
    conv_l3_2: nn.Conv2d
    pcd_align: PCDAlignment

    def _make_pyramid(self, num_feat: int, deformable_groups: int) -> None:
        self.conv_l2_1 = nn.Conv2d(num_feat, num_feat, 3, 2, 1)
        self.conv_l2_2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_l3_1 = nn.Conv2d(num_feat, num_feat, 3, 2, 1)
        self.conv_l3_2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.pcd_align = PCDAlignment(num_feat=num_feat, deformable_groups=deformable_groups)

    def align(self, feat_l1: torch.Tensor, b: int, n: int, center: int) -> torch.Tensor:
        """(B * N, C, h, w) L1 features of B windows of N frames -> (B, N, C, h, w) aligned to frame
        ``center`` of each window."""
        feat_l2 = _lrelu(self.conv_l2_2(_lrelu(self.conv_l2_1(feat_l1))))
        feat_l3 = _lrelu(self.conv_l3_2(_lrelu(self.conv_l3_1(feat_l2))))
        nbr = [feat_l1, feat_l2, feat_l3]
        # Reference = the centre frame of each window, repeated for its n neighbours.
        ref = []
        for f in nbr:
            per_window = f.view(b, n, *f.shape[1:])
            ref.append(per_window[:, center : center + 1].expand_as(per_window).reshape(f.shape))
        aligned = self.pcd_align(nbr, ref)
        return aligned.view(b, n, *aligned.shape[1:])


class EDVRFeatureExtractor(_PyramidAligner):
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
        self._make_pyramid(num_feat, deformable_groups)
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
        return self.fusion(self.align(feat_l1, b, n, self.center_frame_idx))


class PredeblurModule(nn.Module):
    """EDVR's optional pre-deblurring front end (``with_predeblur``): a three-level U-shaped stack of
    residual blocks on each frame; with ``hr_in`` two stride-2 convs first bring HR input to LR size."""

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, hr_in: bool = False) -> None:
        super().__init__()
        self.hr_in = hr_in
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        if hr_in:
            self.stride_conv_hr1 = nn.Conv2d(num_feat, num_feat, 3, 2, 1)
            self.stride_conv_hr2 = nn.Conv2d(num_feat, num_feat, 3, 2, 1)
        self.stride_conv_l2 = nn.Conv2d(num_feat, num_feat, 3, 2, 1)
        self.stride_conv_l3 = nn.Conv2d(num_feat, num_feat, 3, 2, 1)
        self.resblock_l3 = ResidualBlockNoBN(num_feat)
        self.resblock_l2_1 = ResidualBlockNoBN(num_feat)
        self.resblock_l2_2 = ResidualBlockNoBN(num_feat)
        self.resblock_l1 = nn.ModuleList([ResidualBlockNoBN(num_feat) for _ in range(5)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        l1 = _lrelu(self.conv_first(x))
        if self.hr_in:
            l1 = _lrelu(self.stride_conv_hr2(_lrelu(self.stride_conv_hr1(l1))))
        l2 = _lrelu(self.stride_conv_l2(l1))
        l3 = _lrelu(self.stride_conv_l3(l2))
        l2 = self.resblock_l2_1(l2) + _up2(self.resblock_l3(l3))
        l2 = _up2(self.resblock_l2_2(l2))
        for block in self.resblock_l1[:2]:
            l1 = block(l1)
        l1 = l1 + l2
        for block in self.resblock_l1[2:]:
            l1 = block(l1)
        return l1


def window_indices(num_frames: int, center: int, window: int, center_in_window: int) -> list[int]:
    """Source frames of the window of ``window`` frames whose position ``center_in_window`` is frame
    ``center`` of a clip of ``num_frames``, padded at the clip ends as BasicSR's ``reflection_circle``.

    With ``r = window - 1 - center_in_window`` frames after the centre and ``l = center_in_window``
    before it, a position ``i < 0`` reads frame ``center + r - i`` and a position ``i > last`` reads
    ``center - l - (i - last)`` (BasicSR's ``generate_frame_indices``; for 5 frames the first window is
    ``[4, 3, 0, 1, 2]`` and the last ``[n-3, n-2, n-1, n-4, n-5]``). Clips shorter than the window
    cannot follow that rule everywhere: indices are then clamped into the clip.
    """
    last = num_frames - 1
    after = window - 1 - center_in_window
    indices = []
    for i in range(center - center_in_window, center + after + 1):
        if i < 0:
            src = center + after - i
        elif i > last:
            src = center - center_in_window - (i - last)
        else:
            src = i
        indices.append(min(max(src, 0), last))
    return indices


class EDVR(_PyramidAligner):
    """EDVR x4 with BasicSR's constructor arguments and state dict.

    Args (as BasicSR): ``num_in_ch`` / ``num_out_ch`` (3: the output adds the bilinear upsampled
    centre frame), ``num_feat`` (width), ``num_frame`` (window length N), ``deformable_groups`` (PCD),
    ``num_extract_block`` / ``num_reconstruct_block`` (residual blocks before alignment / after
    fusion), ``center_frame_idx`` (reference frame of the window; None = ``num_frame // 2``),
    ``hr_in`` (input at HR size, brought to LR by the pre-deblur module: needs ``with_predeblur``;
    the output then has the input's size), ``with_predeblur``, ``with_tsa`` (TSA fusion, else a 1x1
    conv). ``head_feat`` is the width of the HR part of the x4 head (BasicSR: 64, the only value that
    loads released checkpoints; small CPU variants may narrow it).

    ``forward``: (B, N, 3, h, w) -> (B, 3, 4h, 4w), the centre frame. ``forward_clip``: (B, T, 3, h, w)
    -> (B, T, 3, 4h, 4w), every frame from its own ``reflection_circle``-padded window. Sizes not
    divisible by 4 (16 with ``hr_in``) are reflect-padded and the output is cropped back.
    """

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_frame: int = 5,
        deformable_groups: int = 8,
        num_extract_block: int = 5,
        num_reconstruct_block: int = 10,
        center_frame_idx: Optional[int] = None,
        hr_in: bool = False,
        with_predeblur: bool = False,
        with_tsa: bool = True,
        head_feat: int = 64,
    ) -> None:
        super().__init__()
        if num_in_ch != 3 or num_out_ch != 3:
            raise ValueError(
                f"EDVR: only RGB in and out is supported, got num_in_ch={num_in_ch}, num_out_ch={num_out_ch}"
            )
        if num_feat < 1 or num_feat % deformable_groups:
            raise ValueError(
                f"EDVR: num_feat={num_feat} must be a positive multiple of deformable_groups={deformable_groups}"
            )
        if num_frame < 1 or num_extract_block < 0 or num_reconstruct_block < 0 or head_feat < 1:
            raise ValueError(
                f"EDVR: need num_frame >= 1, block counts >= 0, head_feat >= 1; got {num_frame}, "
                f"{num_extract_block}, {num_reconstruct_block}, {head_feat}"
            )
        self.center_frame_idx = num_frame // 2 if center_frame_idx is None else center_frame_idx
        if not 0 <= self.center_frame_idx < num_frame:
            raise ValueError(f"EDVR: center_frame_idx={center_frame_idx} is outside a window of {num_frame} frames")
        if hr_in and not with_predeblur:
            raise ValueError("EDVR: hr_in=True needs with_predeblur=True (the pre-deblur module downsamples HR input)")
        self.num_frame = num_frame
        self.hr_in = hr_in
        self.with_predeblur = with_predeblur
        self.with_tsa = with_tsa

        if with_predeblur:
            self.predeblur = PredeblurModule(num_in_ch, num_feat, hr_in)
            self.conv_1x1 = nn.Conv2d(num_feat, num_feat, 1, 1)
        else:
            self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.feature_extraction = make_blocks(num_extract_block, num_feat)
        self._make_pyramid(num_feat, deformable_groups)
        if with_tsa:
            self.fusion: nn.Module = TSAFusion(num_feat, num_frame, self.center_frame_idx)
        else:
            self.fusion = nn.Conv2d(num_frame * num_feat, num_feat, 1, 1)
        self.reconstruction = make_blocks(num_reconstruct_block, num_feat)
        self.upconv1 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
        self.upconv2 = nn.Conv2d(num_feat, head_feat * 4, 3, 1, 1)
        self.conv_hr = nn.Conv2d(head_feat, head_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(head_feat, num_out_ch, 3, 1, 1)

    @property
    def size_multiple(self) -> int:
        """Input h and w must be multiples of this for the pyramid (padding handles the rest)."""
        return 16 if self.hr_in else 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_clip(x, "EDVR input", min_size=4)
        b, n, c, h_in, w_in = x.shape
        if n != self.num_frame:
            raise ValueError(
                f"EDVR input: expected a window of num_frame={self.num_frame} frames (B, N, 3, h, w), got "
                f"{tuple(x.shape)}; use forward_clip for whole clips"
            )
        x = _reflect_pad_to(x, self.size_multiple)
        h, w = x.shape[-2:]
        center = x[:, self.center_frame_idx]
        frames = x.reshape(b * n, c, h, w)
        if self.with_predeblur:
            feat_l1 = self.conv_1x1(self.predeblur(frames))
        else:
            feat_l1 = _lrelu(self.conv_first(frames))
        aligned = self.align(self.feature_extraction(feat_l1), b, n, self.center_frame_idx)
        if self.with_tsa:
            feat = self.fusion(aligned)
        else:
            feat = self.fusion(aligned.reshape(b, -1, *aligned.shape[-2:]))

        out = self.reconstruction(feat)
        out = _lrelu(F.pixel_shuffle(self.upconv1(out), 2))
        out = _lrelu(F.pixel_shuffle(self.upconv2(out), 2))
        out = self.conv_last(_lrelu(self.conv_hr(out)))
        if self.hr_in:
            out = out + center
            return out[..., :h_in, :w_in]
        out = out + F.interpolate(center, scale_factor=4, mode="bilinear", align_corners=False)
        return out[..., : 4 * h_in, : 4 * w_in]

    def forward_clip(self, x: torch.Tensor, windows_per_call: int = 0) -> torch.Tensor:
        """Super-resolve every frame of a clip (B, T, 3, h, w) -> (B, T, 3, 4h, 4w) from its own window.

        Frame i is the centre of the window :func:`window_indices` gives (``reflection_circle``
        padding at the clip ends, as BasicSR's test code). The windows of ``windows_per_call`` frames
        (0 = all T) are stacked on the batch axis of one ``forward`` call.
        """
        check_clip(x, "EDVR clip", min_size=4)
        b, t = x.shape[:2]
        per_call = t if windows_per_call <= 0 else windows_per_call
        outputs = []
        for start in range(0, t, per_call):
            frames = range(start, min(t, start + per_call))
            index = [j for i in frames for j in window_indices(t, i, self.num_frame, self.center_frame_idx)]
            windows = x.index_select(1, torch.tensor(index, device=x.device))
            windows = windows.view(b * len(frames), self.num_frame, *x.shape[2:])  # frame-major per clip
            out = self.forward(windows)
            outputs.append(out.view(b, len(frames), *out.shape[1:]))
        return torch.cat(outputs, dim=1)


def _reflect_pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad the bottom / right of a (B, N, C, h, w) clip up to multiples of ``multiple``."""
    b, n, c, h, w = x.shape
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if not (pad_h or pad_w):
        return x
    padded = F.pad(x.reshape(b * n, c, h, w), [0, pad_w, 0, pad_h], mode="reflect")
    return padded.view(b, n, c, h + pad_h, w + pad_w)


def infer_edvr_fields(state: dict) -> Optional[dict]:
    """ModelConfig fields of an EDVR state dict (BasicSR names), or None if it is not one.

    EDVR is recognised by ``pcd_align.*`` without an ``edvr.`` prefix (IconVSR's extractor) and
    ``reconstruction.<i>`` blocks; width from ``upconv1``'s input, the window length from the fusion
    conv, the deformable groups from the cascading DCN's offset conv (3 * 9 channels per group),
    the block counts from the block indices, TSA and pre-deblurring from their parameters.
    """
    if "pcd_align.cas_dcnpack.conv_offset.weight" not in state or "upconv1.weight" not in state:
        return None
    num_feat = int(state["upconv1.weight"].shape[1])
    with_tsa = "fusion.feat_fusion.weight" in state
    fusion = state["fusion.feat_fusion.weight" if with_tsa else "fusion.weight"]
    fields = {
        "name": "edvr",
        "num_feat": num_feat,
        "num_block": _count_blocks(state, "reconstruction."),
        "num_extract_block": _count_blocks(state, "feature_extraction."),
        "num_frame": int(fusion.shape[1]) // num_feat,
        "deformable_groups": int(state["pcd_align.cas_dcnpack.conv_offset.weight"].shape[0]) // 27,
        "with_tsa": with_tsa,
        "with_predeblur": "predeblur.conv_first.weight" in state,
    }
    if "conv_hr.weight" in state:
        fields["head_feat"] = int(state["conv_hr.weight"].shape[0])
    return fields


def _count_blocks(state: dict, prefix: str) -> int:
    """Number of residual blocks ``<prefix><i>.conv1`` in a state dict."""
    return len({k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix) and k.endswith("conv1.weight")})
