"""Image quality metrics as video super-resolution papers report them (PSNR / SSIM).

The numbers match BasicSR's ``calculate_psnr`` / ``calculate_ssim`` (``basicsr/metrics/psnr_ssim.py``),
which in turn match the MATLAB code used by the VSR literature, with one difference in convention:

* Images here are **RGB**, channels last: ``uint8`` arrays of shape (H, W, 3), or (H, W) for a single
  channel. Float arrays are accepted too and must already be on the [0, 255] scale (not [0, 1]).
  BasicSR's functions take OpenCV's BGR order; the Y channel below uses the RGB-order coefficients, so
  ``psnr(rgb, ...)`` equals BasicSR's ``calculate_psnr(bgr, ...)`` for the same picture.
* All arithmetic is float64. (BasicSR's ``to_y_channel`` goes through float32; the difference is
  below 1e-5 dB.)
* ``crop_border`` removes that many pixels from every edge before measuring (the scale factor for
  Vid4 / Vimeo-90K-T evaluation in some papers; 0 for REDS4 in BasicVSR).
* ``y_channel=True`` measures the luma channel of ITU-R BT.601 limited-range YCbCr
  (MATLAB ``rgb2ycbcr``), on the [16, 235] scale.

Video results are averaged the way VSR papers report them: per-frame values are averaged within a clip,
then the clips are averaged with equal weight (:class:`ClipAverager`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "psnr",
    "ssim",
    "rgb_to_y",
    "frame_metrics",
    "tensor_to_uint8",
    "ClipAverager",
]

# ITU-R BT.601 luma for R, G, B on the [0, 255] scale (MATLAB rgb2ycbcr): Y = 16 + coeffs . rgb / 255.
_Y_COEFFS_RGB = np.array([65.481, 128.553, 24.966], dtype=np.float64)

# SSIM constants (Wang et al. 2004, MATLAB reference code) for a dynamic range L = 255.
_SSIM_C1 = (0.01 * 255.0) ** 2
_SSIM_C2 = (0.03 * 255.0) ** 2
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def _check_image(img: np.ndarray, name: str) -> None:
    """Raise a clear error unless ``img`` is an (H, W) or (H, W, C) uint8 / float array."""
    if not isinstance(img, np.ndarray):
        raise TypeError(f"{name} must be a numpy array (H, W) or (H, W, C), got {type(img).__name__}")
    if img.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (H, W) or (H, W, C), got shape {img.shape}")
    if img.ndim == 3 and img.shape[2] not in (1, 3):
        raise ValueError(
            f"{name} must have 1 or 3 channels last (H, W, C), got shape {img.shape}; "
            "a (C, H, W) array must be transposed first"
        )
    if img.dtype != np.uint8 and not np.issubdtype(img.dtype, np.floating):
        raise TypeError(f"{name} must be uint8 or float on the [0, 255] scale, got dtype {img.dtype}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {img.shape})")


def _prepare_pair(
    pred: np.ndarray, gt: np.ndarray, crop_border: int, y_channel: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Validate, crop, optionally convert to Y; return two float64 (H, W, C) arrays."""
    _check_image(pred, "pred")
    _check_image(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt shapes differ: pred {pred.shape} vs gt {gt.shape}")
    if not isinstance(crop_border, (int, np.integer)) or crop_border < 0:
        raise ValueError(f"crop_border must be an integer >= 0, got {crop_border!r}")
    h, w = pred.shape[:2]
    if 2 * crop_border >= min(h, w):
        raise ValueError(f"crop_border={crop_border} removes the whole {h}x{w} image")

    out = []
    for img in (pred, gt):
        img = img if img.ndim == 3 else img[:, :, None]
        if crop_border:
            img = img[crop_border:-crop_border, crop_border:-crop_border, :]
        img = img.astype(np.float64)
        if y_channel and img.shape[2] == 3:
            img = rgb_to_y(img)[:, :, None]
        out.append(img)
    return out[0], out[1]


# --------------------------------------------------------------------------------------------------
# Colour
# --------------------------------------------------------------------------------------------------


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Luma of an RGB image: ITU-R BT.601 limited range, as MATLAB's ``rgb2ycbcr``.

    Args:
        img: (..., 3) array, RGB order, uint8 or float on the [0, 255] scale.

    Returns:
        float64 array of shape ``img.shape[:-1]`` on the [16, 235] scale (not rounded):
        ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``.
    """
    if not isinstance(img, np.ndarray) or img.ndim < 1 or img.shape[-1] != 3:
        shape = getattr(img, "shape", None)
        raise ValueError(f"rgb_to_y expects an RGB array with 3 channels last, got shape {shape}")
    return np.asarray(img, dtype=np.float64) @ _Y_COEFFS_RGB / 255.0 + 16.0


# --------------------------------------------------------------------------------------------------
# PSNR / SSIM
# --------------------------------------------------------------------------------------------------


def psnr(pred: np.ndarray, gt: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """Peak signal-to-noise ratio in dB with peak 255, over all pixels and channels.

    Args:
        pred, gt: RGB uint8 (H, W, 3) or (H, W) arrays, or floats on the [0, 255] scale.
        crop_border: pixels removed from each edge before measuring.
        y_channel: measure the BT.601 Y channel instead of R, G, B.

    Returns:
        ``10 log10(255^2 / MSE)``; ``inf`` when the images are identical.
    """
    a, b = _prepare_pair(pred, gt, crop_border, y_channel)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(255.0 * 255.0 / mse))


def _gaussian_window_1d(size: int = _SSIM_WINDOW, sigma: float = _SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian taps (OpenCV ``getGaussianKernel(size, sigma)`` for sigma > 0)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Correlate a 2-D image with ``outer(taps, taps)`` keeping only the 'valid' region.

    Equivalent to ``cv2.filter2D(img, -1, outer(taps, taps))[r:-r, r:-r]`` with ``r = len(taps)//2``:
    the border mode never matters because every kept output sees only real pixels. Done as two 1-D
    passes (the window is separable), each a sum of shifted slices.
    """
    k = len(taps)
    h, w = img.shape
    rows = sum(taps[i] * img[i : h - k + 1 + i, :] for i in range(k))
    return sum(taps[j] * rows[:, j : w - k + 1 + j] for j in range(k))


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of one float64 channel pair on the [0, 255] scale (MATLAB / BasicSR ``_ssim``)."""
    taps = _gaussian_window_1d()
    mu_a = _filter_valid(a, taps)
    mu_b = _filter_valid(b, taps)
    mu_a2, mu_b2, mu_ab = mu_a**2, mu_b**2, mu_a * mu_b
    var_a = _filter_valid(a * a, taps) - mu_a2
    var_b = _filter_valid(b * b, taps) - mu_b2
    cov_ab = _filter_valid(a * b, taps) - mu_ab
    num = (2.0 * mu_ab + _SSIM_C1) * (2.0 * cov_ab + _SSIM_C2)
    den = (mu_a2 + mu_b2 + _SSIM_C1) * (var_a + var_b + _SSIM_C2)
    return float(np.mean(num / den))


def ssim(pred: np.ndarray, gt: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """Structural similarity, MATLAB convention (Wang et al. 2004), averaged over channels.

    11x11 Gaussian window (sigma 1.5), statistics on the 'valid' region only (an image loses 5 pixels
    on each side), ``C1 = (0.01*255)^2``, ``C2 = (0.03*255)^2``, population (not sample) variances.
    The SSIM map of each channel is averaged, then the channel means are averaged.

    Args:
        pred, gt: RGB uint8 (H, W, 3) or (H, W) arrays, or floats on the [0, 255] scale; after
            ``crop_border`` both sides must be at least 11 pixels.
        crop_border: pixels removed from each edge before measuring.
        y_channel: measure the BT.601 Y channel instead of R, G, B.

    Returns:
        SSIM in [-1, 1]; exactly 1.0 for identical images.
    """
    a, b = _prepare_pair(pred, gt, crop_border, y_channel)
    if min(a.shape[:2]) < _SSIM_WINDOW:
        raise ValueError(
            f"ssim needs at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels after crop_border={crop_border}, "
            f"got {a.shape[0]}x{a.shape[1]}"
        )
    return float(np.mean([_ssim_channel(a[:, :, c], b[:, :, c]) for c in range(a.shape[2])]))


def frame_metrics(
    pred: np.ndarray, gt: np.ndarray, crop_border: int = 0, y_channel: bool = False
) -> tuple[float, float]:
    """``(psnr, ssim)`` of one frame pair, same arguments as :func:`psnr`."""
    return (
        psnr(pred, gt, crop_border=crop_border, y_channel=y_channel),
        ssim(pred, gt, crop_border=crop_border, y_channel=y_channel),
    )


# --------------------------------------------------------------------------------------------------
# Tensors -> images
# --------------------------------------------------------------------------------------------------


def tensor_to_uint8(x: "torch.Tensor") -> np.ndarray:
    """Turn a float RGB tensor in [0, 1] into uint8 image(s), as BasicSR's ``tensor2img`` rounds.

    ``(x.clamp(0, 1) * 255).round()`` computed in float32 on the CPU (round half to even, as
    ``torch.round`` / ``numpy.round``), then channels moved last.

    Args:
        x: (C, H, W) or (T, C, H, W) float tensor, C = 1 or 3, on any device.

    Returns:
        uint8 array (H, W, C) or (T, H, W, C).
    """
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"tensor_to_uint8 expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"tensor_to_uint8 expects a float tensor in [0, 1], got dtype {x.dtype}")
    if x.ndim not in (3, 4) or x.shape[-3] not in (1, 3):
        raise ValueError(
            f"tensor_to_uint8 expects shape (C, H, W) or (T, C, H, W) with C in (1, 3), "
            f"got {tuple(x.shape)}"
        )
    y = (x.detach().to("cpu", torch.float32).clamp(0.0, 1.0) * 255.0).round()
    return y.movedim(-3, -1).to(torch.uint8).numpy()


# --------------------------------------------------------------------------------------------------
# Aggregation over clips
# --------------------------------------------------------------------------------------------------


class ClipAverager:
    """Collect per-frame metrics and average them per clip, then over clips.

    This is how VSR papers (and BasicSR's video validation) report a dataset score: every clip weighs
    the same however many frames it has (``mean over clips of mean over frames``), which differs from
    a mean over all frames when clips differ in length.

    Example::

        avg = ClipAverager()
        for clip, frames in results:
            for pred, gt in frames:
                avg.add(clip, *frame_metrics(pred, gt, y_channel=True))
        table = avg.summary()   # {"clips": {...}, "average": {...}}
    """

    def __init__(self) -> None:
        self._psnr: dict[str, list[float]] = {}
        self._ssim: dict[str, list[float]] = {}

    def add(self, clip: str, frame_psnr: float, frame_ssim: Optional[float] = None) -> None:
        """Record one frame of ``clip``. Clips keep the order in which they first appear.

        ``frame_ssim`` may be omitted only if it is omitted for every frame of every clip.
        """
        if not isinstance(clip, str) or not clip:
            raise ValueError(f"clip must be a non-empty string, got {clip!r}")
        has_ssim = frame_ssim is not None
        if self._psnr and has_ssim != bool(self._ssim):
            raise ValueError(
                f"clip {clip!r}: frame_ssim must be given for every frame or for none "
                f"(got {'a value' if has_ssim else 'None'} after frames that had "
                f"{'none' if has_ssim else 'one'})"
            )
        value = float(frame_psnr)
        if math.isnan(value):
            raise ValueError(f"clip {clip!r}: frame_psnr is NaN")
        self._psnr.setdefault(clip, []).append(value)
        if has_ssim:
            self._ssim.setdefault(clip, []).append(float(frame_ssim))

    def __len__(self) -> int:
        """Number of clips seen so far."""
        return len(self._psnr)

    @property
    def clips(self) -> list[str]:
        return list(self._psnr)

    def clip_means(self) -> dict[str, dict[str, float]]:
        """Per clip: ``{"psnr": mean, "ssim": mean (if recorded), "frames": count}``."""
        rows: dict[str, dict[str, float]] = {}
        for clip, values in self._psnr.items():
            row: dict[str, float] = {"psnr": float(np.mean(values)), "frames": len(values)}
            if clip in self._ssim:
                row["ssim"] = float(np.mean(self._ssim[clip]))
            rows[clip] = row
        return rows

    def average(self) -> dict[str, float]:
        """Dataset score: ``{"psnr": ..., "ssim": ...}``, the unweighted mean of the clip means."""
        if not self._psnr:
            raise ValueError("ClipAverager.average(): no frames were added")
        rows = self.clip_means().values()
        out = {"psnr": float(np.mean([r["psnr"] for r in rows]))}
        if self._ssim:
            out["ssim"] = float(np.mean([r["ssim"] for r in rows]))
        return out

    def summary(self) -> dict[str, dict]:
        """``{"clips": clip_means(), "average": average()}``, ready for JSON or a table."""
        return {"clips": self.clip_means(), "average": self.average()}

    def format_table(self, digits: int = 4) -> str:
        """Plain-text table: one row per clip and an ``Average`` row."""
        rows = self.clip_means()
        width = max([len("Average")] + [len(c) for c in rows])
        has_ssim = bool(self._ssim)
        header = f"{'clip':<{width}}  {'frames':>6}  {'PSNR':>{digits + 4}}"
        if has_ssim:
            header += f"  {'SSIM':>{digits + 2}}"
        lines = [header]
        for clip, r in rows.items():
            line = f"{clip:<{width}}  {int(r['frames']):>6d}  {r['psnr']:>{digits + 4}.{digits}f}"
            if has_ssim:
                line += f"  {r['ssim']:>{digits + 2}.{digits}f}"
            lines.append(line)
        avg = self.average()
        frames = sum(int(r["frames"]) for r in rows.values())
        line = f"{'Average':<{width}}  {frames:>6d}  {avg['psnr']:>{digits + 4}.{digits}f}"
        if has_ssim:
            line += f"  {avg['ssim']:>{digits + 2}.{digits}f}"
        lines.append(line)
        return "\n".join(lines)
