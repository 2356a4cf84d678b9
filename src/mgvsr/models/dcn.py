"""Modulated deformable convolution (DCNv2) in pure PyTorch.

Semantics match torchvision's ``deform_conv2d`` with a mask and mmcv / BasicSR
``ModulatedDeformConv2d``:

* ``offset`` is (N, 2 * G * kh * kw, Ho, Wo) for G deformable groups. For group g and kernel tap
  k = i * kw + j (row-major), channel ``2 * (g * kh * kw + k)`` is the vertical offset dy and the next
  channel the horizontal offset dx.
* ``mask`` is (N, G * kh * kw, Ho, Wo), channel ``g * kh * kw + k``; it multiplies the sampled value.
* Input channels are split into G contiguous groups; group g uses offset / mask group g.
* Tap k of output pixel (oy, ox) samples the input at
  ``y = oy * stride - pad + i * dilation + dy``, ``x = ox * stride - pad + j * dilation + dx``
  with bilinear interpolation; positions outside the image contribute zero (per corner).

Implementation: one ``grid_sample`` gathers all taps of all groups at once into "columns"
(N, C * kh * kw, Ho * Wo), and one batched matmul with the weight produces the output, so autograd
gives gradients for input, offset, mask, weight and bias.

Backends (:func:`set_backend`): the layers call :func:`deform_conv`, which runs this pure-PyTorch
kernel by default (``"torch"``, every device, deterministic). ``"torchvision"`` runs
``torchvision.ops.deform_conv2d`` (same semantics, compiled kernels; torchvision is optional and
never required); ``"auto"`` uses torchvision on CUDA tensors when it imports, else the pure kernel.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from mgvsr.runtime import fp32_region

IntPair = Union[int, tuple[int, int]]


def _pair(v: IntPair) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def modulated_deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> torch.Tensor:
    """DCNv2 forward; the number of deformable groups is read from ``offset.shape[1]``."""
    n, c, h, w = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    taps = kh * kw
    if c != c_per_group * groups or c_out % groups != 0:
        raise ValueError(f"deform conv: weight {tuple(weight.shape)} does not fit {c} input channels, groups={groups}")
    if offset.shape[1] % (2 * taps) != 0:
        raise ValueError(f"deform conv: offset has {offset.shape[1]} channels, not a multiple of 2*{taps}")
    dg = offset.shape[1] // (2 * taps)
    if dg < 1 or c % dg != 0:
        raise ValueError(f"deform conv: {c} input channels cannot be split into {dg} deformable groups")
    h_out = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if offset.shape != (n, 2 * dg * taps, h_out, w_out):
        raise ValueError(f"deform conv: offset {tuple(offset.shape)}, expected {(n, 2 * dg * taps, h_out, w_out)}")
    if mask.shape != (n, dg * taps, h_out, w_out):
        raise ValueError(f"deform conv: mask {tuple(mask.shape)}, expected {(n, dg * taps, h_out, w_out)}")

    # Sampling positions in input pixels, (N, G, taps, Ho, Wo); at least float32 for precision.
    dev = x.device
    fdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    ki = torch.arange(kh, device=dev, dtype=fdt).repeat_interleave(kw)  # tap row index
    kj = torch.arange(kw, device=dev, dtype=fdt).repeat(kh)  # tap column index
    oy = torch.arange(h_out, device=dev, dtype=fdt) * sh - ph
    ox = torch.arange(w_out, device=dev, dtype=fdt) * sw - pw
    base_y = (ki * dh).view(taps, 1, 1) + oy.view(1, h_out, 1)
    base_x = (kj * dw).view(taps, 1, 1) + ox.view(1, 1, w_out)
    off = offset.reshape(n, dg, taps, 2, h_out, w_out).to(fdt)
    pos_y = base_y + off[:, :, :, 0]
    pos_x = base_x + off[:, :, :, 1]

    # grid_sample with align_corners=False maps pixel p to (2p + 1) / size - 1; zeros padding gives
    # exactly the "outside corners contribute zero" rule of the reference kernels.
    grid = torch.stack(((2 * pos_x + 1) / w - 1, (2 * pos_y + 1) / h - 1), dim=-1)
    # The grid stays in float32 under autocast (a bfloat16 grid misplaces taps by up to 1/3 pixel on a
    # 320-pixel input, see flow_warp); sampling runs in float32, the result in x's dtype.
    grid = grid.view(n * dg, taps * h_out, w_out, 2)
    with fp32_region(x):
        sampled = F.grid_sample(
            x.reshape(n * dg, c // dg, h, w).to(fdt), grid, mode="bilinear", padding_mode="zeros",
            align_corners=False,
        ).to(x.dtype)  # (N*G, C/G, taps*Ho, Wo)
    sampled = sampled.view(n, dg, c // dg, taps, h_out, w_out) * mask.reshape(n, dg, 1, taps, h_out, w_out)

    # Columns ordered (channel, tap) to match weight.view(C_out, C/groups * taps).
    cols = sampled.reshape(n, groups, c_per_group * taps, h_out * w_out)
    wmat = weight.reshape(groups, c_out // groups, c_per_group * taps)
    out = torch.matmul(wmat, cols).reshape(n, c_out, h_out, w_out)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


BACKENDS = ("torch", "torchvision", "auto")
_backend = "torch"


def set_backend(name: str) -> None:
    """Choose the DCN kernel for every layer: ``"torch"`` (default), ``"torchvision"`` or ``"auto"``."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"DCN backend {name!r} is not one of {list(BACKENDS)}")
    if name == "torchvision" and _torchvision_deform_conv2d() is None:
        raise ValueError("DCN backend 'torchvision': torchvision.ops.deform_conv2d cannot be imported")
    _backend = name


def get_backend() -> str:
    return _backend


def _torchvision_deform_conv2d():
    """``torchvision.ops.deform_conv2d`` or None when torchvision is not installed / does not import."""
    try:
        from torchvision.ops import deform_conv2d
    except Exception:  # ImportError, or a torchvision built for another torch
        return None
    return deform_conv2d


def deform_conv(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Modulated deformable convolution with the kernel chosen by :func:`set_backend`.

    Arguments as :func:`modulated_deform_conv2d`. torchvision reads the weight groups from the
    weight's shape, exactly as the pure kernel does with ``groups``.
    """
    use_tv = _backend == "torchvision" or (_backend == "auto" and x.is_cuda)
    tv = _torchvision_deform_conv2d() if use_tv else None
    if tv is None:
        return modulated_deform_conv2d(x, offset, mask, weight, bias, stride, padding, dilation, groups)
    return tv(
        x, offset, weight, bias, stride=_pair(stride), padding=_pair(padding), dilation=_pair(dilation), mask=mask
    )


class ModulatedDeformConv2d(nn.Module):
    """DCNv2 layer with explicit ``offset`` and ``mask``; parameters ``weight`` and ``bias``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels ({in_channels}, {out_channels}) must be divisible by groups={groups}")
        if in_channels % deformable_groups:
            raise ValueError(f"in_channels={in_channels} must be divisible by deformable_groups={deformable_groups}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) weight and zero bias (mmcv / BasicSR init)."""
        stdv = 1.0 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        with torch.no_grad():
            self.weight.uniform_(-stdv, stdv)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return deform_conv(
            x, offset, mask, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )


class DCNv2Pack(ModulatedDeformConv2d):
    """DCNv2 whose offsets and mask are predicted from a second feature map (EDVR / BasicSR style).

    ``conv_offset`` (zero-initialised) maps ``feat`` to 3 * G * kh * kw channels, split with
    ``torch.chunk(out, 3, dim=1)`` into o1, o2, mask; offset = cat(o1, o2), mask = sigmoid(mask).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        kh, kw = self.kernel_size
        self.conv_offset = nn.Conv2d(
            self.in_channels,
            self.deformable_groups * 3 * kh * kw,
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=True,
        )
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        o1, o2, mask = torch.chunk(self.conv_offset(feat), 3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        return super().forward(x, offset, torch.sigmoid(mask))
