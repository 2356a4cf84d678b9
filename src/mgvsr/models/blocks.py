"""Small building blocks shared by the models.

Conventions: feature maps are ``(N, C, H, W)``; optical flow is in pixels, channel 0 = horizontal
(x, width) displacement and channel 1 = vertical (y, height) displacement. Module and parameter names
follow BasicSR (``basicsr/archs/arch_util.py``) so that released checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mgvsr.runtime import fp32_region, is_channels_last


def init_residual_conv_(conv: nn.Conv2d, scale: float = 0.1) -> None:
    """Kaiming-normal init scaled by ``scale`` and zero bias (BasicSR's residual-block init)."""
    nn.init.kaiming_normal_(conv.weight)
    with torch.no_grad():
        conv.weight.mul_(scale)
        if conv.bias is not None:
            conv.bias.zero_()


class ResidualBlockNoBN(nn.Module):
    """``x + conv2(relu(conv1(x)))`` with 3x3 convolutions and no normalisation.

    Parameters: ``conv1.{weight,bias}``, ``conv2.{weight,bias}`` (as BasicSR).
    """

    def __init__(self, num_feat: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=True)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=True)
        init_residual_conv_(self.conv1)
        init_residual_conv_(self.conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x), inplace=True))


def make_blocks(num_block: int, num_feat: int) -> nn.Sequential:
    """``num_block`` residual blocks in a ``Sequential`` (children named ``0``, ``1``, ...)."""
    return nn.Sequential(*[ResidualBlockNoBN(num_feat) for _ in range(num_block)])


class ConvResidualBlocks(nn.Module):
    """Input conv (``num_in_ch -> num_out_ch``) + LeakyReLU(0.1) + ``num_block`` residual blocks.

    Parameter names: ``main.0`` (input conv) and ``main.2.<i>.conv{1,2}`` (blocks), as BasicSR.
    """

    def __init__(self, num_in_ch: int, num_out_ch: int, num_block: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(num_in_ch, num_out_ch, 3, 1, 1, bias=True),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            make_blocks(num_block, num_out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def flow_warp(
    x: torch.Tensor,
    flow: torch.Tensor,
    interp_mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = True,
) -> torch.Tensor:
    """Backward-warp ``x`` (N, C, H, W) with ``flow`` (N, H, W, 2) given in pixels.

    The output at pixel (i, j) samples ``x`` at ``(j + flow[..., 0], i + flow[..., 1])``; same
    convention and defaults as BasicSR's ``flow_warp`` (grid_sample, bilinear, zeros padding,
    ``align_corners=True``: pixel centres map to -1 and 1 at the borders).

    Mixed precision: the grid is built and sampled in float32 (float64 for float64 inputs) whatever
    the autocast state, and the result is returned in ``x``'s dtype. A bfloat16 grid has 8
    significant bits: sampling positions would be off by up to 1/16 pixel on a 64-pixel patch, 1/3
    pixel on a 320-pixel frame and over a pixel at 1280 (docs/performance.md). The result keeps ``x``'s
    channels_last layout (grid_sample itself returns a contiguous tensor).
    """
    if x.shape[-2:] != flow.shape[1:3] or flow.shape[-1] != 2 or flow.shape[0] != x.shape[0]:
        raise ValueError(f"flow_warp: flow {tuple(flow.shape)} does not match features {tuple(x.shape)}")
    _, _, h, w = x.shape
    dtype = torch.float64 if torch.float64 in (x.dtype, flow.dtype) else torch.float32
    flow = flow.to(dtype)
    gy, gx = torch.meshgrid(
        torch.arange(h, device=x.device, dtype=dtype),
        torch.arange(w, device=x.device, dtype=dtype),
        indexing="ij",
    )
    vx = (gx + flow[..., 0]) * (2.0 / max(w - 1, 1)) - 1.0
    vy = (gy + flow[..., 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack((vx, vy), dim=-1)
    with fp32_region(x):
        out = F.grid_sample(x.to(dtype), grid, mode=interp_mode, padding_mode=padding_mode,
                            align_corners=align_corners)
    return same_layout(out.to(x.dtype), x)


def same_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` in channels_last when ``like`` is a channels_last 4-D tensor, else ``t`` unchanged."""
    return t.contiguous(memory_format=torch.channels_last) if is_channels_last(like) else t


def check_clip(x: torch.Tensor, name: str, min_size: int = 1) -> None:
    """Raise a clear ``ValueError`` unless ``x`` is a float clip of shape (B, T, 3, h, w)."""
    if x.dim() != 5 or x.shape[2] != 3:
        raise ValueError(f"{name}: expected an LR clip of shape (B, T, 3, h, w), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a float clip in [0, 1], got dtype {x.dtype}")
    if x.shape[1] < 1 or x.shape[3] < min_size or x.shape[4] < min_size:
        raise ValueError(
            f"{name}: clip {tuple(x.shape)} is too small; need T >= 1 and h, w >= {min_size}"
        )
