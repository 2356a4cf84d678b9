"""Low-resolution frames from high-resolution ones: the BI and BD degradations of the VSR literature.

* **BI** (bicubic): MATLAB ``imresize(hr, 1/scale)`` -- antialiased Keys cubic (a = -0.5), the kernel
  stretched by ``scale`` when shrinking, symmetric (mirror) padding at the borders, output size
  ``ceil(in / scale)``. Used for REDS and the Vimeo-90K / Vid4 "BI" sets.
* **BD** (blur + down-sample): BasicVSR's ``BD_degradation.m`` (github.com/ckkelvinchan/BasicVSR-IconVSR),
  used for its Vimeo-90K / Vid4 / UDM10 "BD" sets::

      kernelsize = ceil(sigma * 3) * 2 + 2;                  % 12 for sigma = 1.6
      kernel = fspecial('gaussian', kernelsize, sigma);
      lq = imfilter(gt, kernel, 'replicate');
      lq = lq(scale/2:scale:end-scale/2, scale/2:scale:end-scale/2, :);

  In 0-based terms: a normalised ``k x k`` Gaussian (``k = 12``: taps at -5.5 ... 5.5), correlated
  with replicate borders, where MATLAB anchors an even kernel at its 6th tap -- so output pixel ``i``
  is the Gaussian average centred at ``i + 0.5``; then rows / columns ``1, 5, 9, ...`` are kept
  (offset ``(scale - 1) // 2``, every ``scale``-th, ``floor(in / scale)`` of them). Each kept pixel is
  therefore the blur centred on its ``scale x scale`` block, like a bicubic x4 pixel. Note this is not
  the DUF / EDVR ``duf_downsample`` (13x13 kernel, reflect padding, other offset), which some repos
  also call BD; ``kernel_size=13`` selects the odd kernel (centred on the pixel) if needed.

Both are separable linear maps, so each is applied as two small matrices: ``lr = A_h @ hr @ A_w^T``
(precomputed, cached per size). A 720p RGB frame takes about 15-30 ms on one CPU core.

Inputs and outputs:

* numpy ``uint8`` frames (H, W) or (H, W, C): computed in float64, then rounded half away from zero
  and clipped to [0, 255] like MATLAB's uint8 conversion, returned as ``uint8``. This reproduces the
  dataset scripts (EDVR / BasicSR's ``generate_LR_Vimeo90K.m``, BasicVSR's BD script), which
  filter ``im2double`` images and round once when writing the PNG. (MATLAB's ``imresize`` called directly
  on a uint8 array also rounds between its two passes, which can move a pixel by one level.)
  Numpy float arrays (any scale) are returned as float64 without rounding.
* torch float tensors (..., H, W), e.g. (C, H, W) or (T, C, H, W), on any device: returned in the same
  dtype and device, not rounded and not clamped (bicubic can overshoot [0, 1] slightly).

This module imports only numpy and torch so it can be used on its own.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal, Optional, TypeVar, Union

import numpy as np
import torch

__all__ = ["bicubic_resize", "blur_downsample", "degrade", "imresize_matrix", "bd_matrix"]

Frames = TypeVar("Frames", np.ndarray, torch.Tensor)


# --------------------------------------------------------------------------------------------------
# 1-D weight matrices
# --------------------------------------------------------------------------------------------------


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB ``imresize``'s 'bicubic')."""
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def _mirror(index: np.ndarray, length: int) -> np.ndarray:
    """Map any 0-based index into [0, length) by symmetric reflection (edge pixel repeated).

    Same as MATLAB ``imresize``: ``aux = [1:n, n:-1:1]; aux(mod(i - 1, 2n) + 1)``.
    """
    m = np.mod(index, 2 * length)
    return np.where(m < length, m, 2 * length - 1 - m)


@lru_cache(maxsize=64)
def imresize_matrix(in_length: int, scale: float) -> np.ndarray:
    """(out_length, in_length) float64 matrix of MATLAB ``imresize(..., scale, 'bicubic')`` on one axis.

    ``out_length = ceil(in_length * scale)``. Row ``o`` holds the normalised weights of output sample
    ``o``, whose centre maps to input coordinate ``u = (o + 1) / scale + (1 - 1 / scale) / 2`` (1-based,
    MATLAB's convention that pixel edges line up). When shrinking (``scale < 1``) the kernel is
    ``scale * cubic(scale * d)`` (width ``4 / scale``) to antialias; taps that fall outside the image
    are mirrored back in. The returned array is read-only (it is cached).
    """
    if in_length < 1:
        raise ValueError(f"imresize: input length must be >= 1, got {in_length}")
    if not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"imresize: scale must be a positive number, got {scale}")
    out_length = math.ceil(in_length * scale)
    antialias = scale < 1
    kernel_width = 4.0 / scale if antialias else 4.0

    u = np.arange(1, out_length + 1, dtype=np.float64) / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    taps = math.ceil(kernel_width) + 2  # one spare tap; its weight is 0 when not needed
    index = left[:, None] + np.arange(taps)[None, :]  # 1-based input positions
    dist = u[:, None] - index
    weights = scale * _cubic(scale * dist) if antialias else _cubic(dist)
    weights = weights / weights.sum(axis=1, keepdims=True)

    matrix = np.zeros((out_length, in_length), dtype=np.float64)
    rows = np.broadcast_to(np.arange(out_length)[:, None], index.shape)
    np.add.at(matrix, (rows, _mirror(index.astype(np.int64) - 1, in_length)), weights)
    matrix.setflags(write=False)
    return matrix


def _bd_kernel_size(sigma: float) -> int:
    """BasicVSR's ``ceil(sigma * 3) * 2 + 2`` (12 for sigma = 1.6)."""
    return int(math.ceil(sigma * 3)) * 2 + 2


@lru_cache(maxsize=64)
def bd_matrix(in_length: int, scale: int, sigma: float, kernel_size: int) -> np.ndarray:
    """(in_length // scale, in_length) float64 matrix: 1-D Gaussian blur + subsampling of BD.

    Blur taps: ``fspecial('gaussian', kernel_size, sigma)`` is ``outer(g, g)`` with ``g`` the
    normalised samples of ``exp(-x^2 / 2 sigma^2)`` at ``x = -(k-1)/2 ... (k-1)/2``. (fspecial also
    zeroes taps below ``eps * max``; that changes nothing at double precision.) MATLAB's ``imfilter``
    anchors tap number ``c = (k - 1) // 2`` (0-based) on the output pixel and replicates the edge
    pixels. Output row ``o`` is the blurred pixel ``(scale - 1) // 2 + o * scale``.
    """
    if in_length < scale:
        raise ValueError(f"BD degradation: input length {in_length} is smaller than the scale {scale}")
    if kernel_size < 1:
        raise ValueError(f"BD degradation: kernel_size must be >= 1, got {kernel_size}")
    if not sigma > 0:
        raise ValueError(f"BD degradation: sigma must be > 0, got {sigma}")
    x = np.arange(kernel_size, dtype=np.float64) - (kernel_size - 1) / 2.0
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    g = g / g.sum()
    anchor = (kernel_size - 1) // 2  # MATLAB: floor((k + 1) / 2), 1-based
    offsets = np.arange(kernel_size) - anchor

    out_length = in_length // scale
    centres = (scale - 1) // 2 + scale * np.arange(out_length)
    index = np.clip(centres[:, None] + offsets[None, :], 0, in_length - 1)  # replicate border
    matrix = np.zeros((out_length, in_length), dtype=np.float64)
    rows = np.broadcast_to(np.arange(out_length)[:, None], index.shape)
    np.add.at(matrix, (rows, index), np.broadcast_to(g, index.shape))
    matrix.setflags(write=False)
    return matrix


# --------------------------------------------------------------------------------------------------
# Applying separable maps
# --------------------------------------------------------------------------------------------------


def _spatial_size(x: Union[np.ndarray, torch.Tensor], name: str) -> tuple[int, int]:
    """(H, W) of a numpy (H, W[, C]) frame or a torch (..., H, W) tensor, with checks."""
    if isinstance(x, np.ndarray):
        if x.ndim not in (2, 3):
            raise ValueError(f"{name}: numpy frames must be (H, W) or (H, W, C), got shape {x.shape}")
        if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{name}: numpy frames must be uint8 or float, got dtype {x.dtype}")
        return int(x.shape[0]), int(x.shape[1])
    if isinstance(x, torch.Tensor):
        if x.ndim < 2:
            raise ValueError(f"{name}: tensors must be (..., H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(
                f"{name}: tensors must be float (e.g. in [0, 1]), got dtype {x.dtype}; "
                "pass uint8 frames as numpy arrays (H, W, C)"
            )
        return int(x.shape[-2]), int(x.shape[-1])
    raise TypeError(f"{name}: expected a numpy array or a torch tensor, got {type(x).__name__}")


def _apply(x: Frames, rows: np.ndarray, cols: np.ndarray) -> Frames:
    """``rows @ frame @ cols.T`` on the spatial axes, with MATLAB-style uint8 output for uint8 input."""
    if isinstance(x, torch.Tensor):
        # Low-precision matmul is slow or unsupported on some devices; compute in float32 at least.
        work = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        a = torch.tensor(rows, dtype=work, device=x.device)
        b = torch.tensor(cols.T, dtype=work, device=x.device)
        return (a @ x.to(work) @ b).to(x.dtype)

    planes = x.astype(np.float64)
    squeeze = planes.ndim == 2
    if squeeze:
        planes = planes[:, :, None]
    out = np.matmul(rows, planes.transpose(2, 0, 1))  # (C, out_h, W)
    out = np.matmul(out, cols.T).transpose(1, 2, 0)  # (out_h, out_w, C)
    if squeeze:
        out = out[:, :, 0]
    if x.dtype == np.uint8:
        # MATLAB converts to uint8 by rounding half away from zero and saturating.
        out = np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def bicubic_resize(x: Frames, scale: float) -> Frames:
    """MATLAB-compatible ``imresize(x, scale, 'bicubic')`` (antialiased when shrinking).

    Args:
        x: uint8 / float numpy frame (H, W) or (H, W, C), or float tensor (..., H, W).
        scale: resize factor, e.g. ``0.25`` for x4 down-sampling (``2.0`` enlarges).

    Returns:
        Frames of size ``(ceil(H * scale), ceil(W * scale))``, same kind as ``x`` (see module doc).
    """
    h, w = _spatial_size(x, "bicubic_resize")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"bicubic_resize: scale must be a positive number, got {scale!r}")
    return _apply(x, imresize_matrix(h, float(scale)), imresize_matrix(w, float(scale)))


def blur_downsample(
    x: Frames, scale: int = 4, sigma: float = 1.6, kernel_size: Optional[int] = None
) -> Frames:
    """BD degradation: Gaussian blur (replicate border) then keep every ``scale``-th pixel.

    Follows BasicVSR's ``BD_degradation.m`` exactly (see the module docstring): kernel size
    ``ceil(3 sigma) * 2 + 2`` (12 for the standard sigma = 1.6) unless ``kernel_size`` is given;
    kept rows / columns start at 0-based ``(scale - 1) // 2`` (= 1 for x4) and step ``scale``.

    Args:
        x: uint8 / float numpy frame (H, W) or (H, W, C), or float tensor (..., H, W).
        scale: integer down-sampling factor.
        sigma: Gaussian standard deviation in HR pixels.
        kernel_size: blur window size; None = BasicVSR's rule.

    Returns:
        Frames of size ``(H // scale, W // scale)``, same kind as ``x``.
    """
    h, w = _spatial_size(x, "blur_downsample")
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"blur_downsample: scale must be an integer >= 1, got {scale!r}")
    size = _bd_kernel_size(sigma) if kernel_size is None else int(kernel_size)
    rows = bd_matrix(h, int(scale), float(sigma), size)
    cols = bd_matrix(w, int(scale), float(sigma), size)
    return _apply(x, rows, cols)


def degrade(x: Frames, kind: Literal["BI", "BD"] = "BI", scale: int = 4) -> Frames:
    """Make LR frames from HR frames: ``"BI"`` = :func:`bicubic_resize` by ``1/scale``,
    ``"BD"`` = :func:`blur_downsample` with sigma 1.6 (the standard settings for x4)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"degrade: scale must be an integer >= 1, got {scale!r}")
    if kind == "BI":
        return bicubic_resize(x, 1.0 / scale)
    if kind == "BD":
        return blur_downsample(x, scale=scale)
    raise ValueError(f"degrade: unknown degradation {kind!r} (choose 'BI' or 'BD')")


def degrade_frames(hr: np.ndarray, kind: str, scale: int) -> np.ndarray:
    """``uint8 (T, H, W, 3)`` -> ``uint8 (T, H/scale, W/scale, 3)`` with the BI/BD degradation.

    The float result of :func:`degrade` is rounded half up and clipped to 8 bits, as MATLAB's
    ``im2uint8`` does, so stored and on-the-fly LR frames are the same numbers.
    """
    x = torch.from_numpy(np.ascontiguousarray(hr)).permute(0, 3, 1, 2).float().div_(255.0)
    y = degrade(x, kind=kind, scale=scale)
    y = y.mul(255.0).add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)  # MATLAB rounding
    return y.permute(0, 2, 3, 1).contiguous().numpy()
