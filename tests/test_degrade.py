"""Tests for mgvsr.data.degrade against direct per-pixel loops of the MATLAB formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mgvsr.data.degrade import bicubic_resize, blur_downsample, degrade

# --------------------------------------------------------------------------------------------------
# Independent references: one output pixel at a time, written from the MATLAB definitions.
# --------------------------------------------------------------------------------------------------


def _keys_cubic(t: float) -> float:
    t = abs(t)
    if t <= 1:
        return 1.5 * t**3 - 2.5 * t**2 + 1
    if t <= 2:
        return -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2
    return 0.0


def _contributions(n_in: int, scale: float, o: int) -> list[tuple[int, float]]:
    """MATLAB imresize 'contributions' for 1-based output index o: (0-based input, weight) pairs."""
    shrink = scale < 1
    width = 4 / scale if shrink else 4
    u = o / scale + 0.5 * (1 - 1 / scale)
    left = math.floor(u - width / 2)
    aux = list(range(1, n_in + 1)) + list(range(n_in, 0, -1))  # MATLAB symmetric index table
    pairs, total = [], 0.0
    for t in range(math.ceil(width) + 2):
        j = left + t
        w = scale * _keys_cubic(scale * (u - j)) if shrink else _keys_cubic(u - j)
        pairs.append((aux[(j - 1) % (2 * n_in)] - 1, w))
        total += w
    return [(j, w / total) for j, w in pairs]


def _imresize_loop(img: np.ndarray, scale: float) -> np.ndarray:
    """float64 (H, W) -> (ceil(H*s), ceil(W*s)), separable weights summed pixel by pixel."""
    h, w = img.shape
    oh, ow = math.ceil(h * scale), math.ceil(w * scale)
    out = np.zeros((oh, ow))
    for p in range(oh):
        rows = _contributions(h, scale, p + 1)
        for q in range(ow):
            cols = _contributions(w, scale, q + 1)
            out[p, q] = sum(wr * wc * img[r, c] for r, wr in rows for c, wc in cols)
    return out


def _bd_loop(img: np.ndarray, scale: int = 4, sigma: float = 1.6) -> np.ndarray:
    """BasicVSR BD_degradation.m: fspecial + imfilter(..., 'replicate') + lq(s/2:s:end-s/2, ...)."""
    k = math.ceil(sigma * 3) * 2 + 2
    half = (k - 1) / 2
    xs = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(xs, xs)
    kern = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    kern[kern < np.finfo(float).eps * kern.max()] = 0
    kern /= kern.sum()
    centre = (k + 1) // 2  # 1-based anchor used by imfilter
    h, w = img.shape
    rows = range(scale // 2, h - scale // 2 + 1, scale)  # MATLAB colon s/2:s:end-s/2 (1-based)
    cols = range(scale // 2, w - scale // 2 + 1, scale)
    out = np.zeros((len(rows), len(cols)))
    for a, i in enumerate(rows):
        for b, j in enumerate(cols):
            acc = 0.0
            for u in range(1, k + 1):
                for v in range(1, k + 1):
                    r = min(max(i + u - centre, 1), h)  # replicate border, 1-based
                    c = min(max(j + v - centre, 1), w)
                    acc += kern[u - 1, v - 1] * img[r - 1, c - 1]
            out[a, b] = acc
    return out


def _matlab_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def _image(h, w, c=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (h, w) if c is None else (h, w, c)
    return rng.integers(0, 256, size=shape).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# BI
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("h,w,scale", [(13, 18, 0.25), (16, 16, 0.25), (9, 11, 1 / 3), (5, 6, 2.0)])
def test_bicubic_float_matches_loop(h, w, scale):
    img = _image(h, w).astype(np.float64)
    out = bicubic_resize(img, scale)
    ref = _imresize_loop(img, scale)
    assert out.shape == ref.shape == (math.ceil(h * scale), math.ceil(w * scale))
    np.testing.assert_allclose(out, ref, atol=1e-9)


def test_bicubic_uint8_matches_loop_within_one_level():
    img = _image(20, 24, 3, seed=1)
    out = bicubic_resize(img, 0.25)
    assert out.dtype == np.uint8 and out.shape == (5, 6, 3)
    for c in range(3):
        ref = _matlab_uint8(_imresize_loop(img[..., c].astype(np.float64), 0.25))
        diff = np.abs(out[..., c].astype(int) - ref.astype(int))
        assert diff.max() <= 1
        assert (diff == 0).mean() > 0.9  # only exact .5 ties could differ


def test_bicubic_constant_and_ramp():
    const = np.full((21, 30, 3), 77, np.uint8)
    assert np.array_equal(bicubic_resize(const, 0.25), np.full((6, 8, 3), 77, np.uint8))
    # A horizontal ramp: x4 output pixel m sits at input coordinate 4m + 1.5 (0-based), and the
    # kernel is symmetric there, so away from the borders the ramp is reproduced exactly.
    w = 64
    ramp = np.tile(np.arange(w, dtype=np.float64) * 2.0 + 10.0, (8, 1))
    out = bicubic_resize(ramp, 0.25)
    m = np.arange(out.shape[1])
    interior = (4 * m + 1.5 - 8 >= 0) & (4 * m + 1.5 + 8 <= w - 1)
    np.testing.assert_allclose(out[1, interior], (4 * m[interior] + 1.5) * 2.0 + 10.0, atol=1e-9)


def test_bicubic_tensor_path_agrees_with_uint8():
    img = _image(24, 32, 3, seed=2)
    x64 = torch.from_numpy(img).permute(2, 0, 1).double() / 255
    out64 = bicubic_resize(x64, 0.25)
    assert out64.dtype == torch.float64 and out64.shape == (3, 6, 8)
    rounded = _matlab_uint8(out64.permute(1, 2, 0).numpy() * 255)
    np.testing.assert_array_equal(rounded, bicubic_resize(img, 0.25))
    # float32 and a leading time axis: same result to float32 precision, within one level once rounded.
    clip = torch.stack([x64.float(), x64.float()])
    out32 = bicubic_resize(clip, 0.25)
    assert out32.dtype == torch.float32 and out32.shape == (2, 3, 6, 8)
    torch.testing.assert_close(out32[1].double(), out64, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# BD
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("h,w", [(16, 20), (18, 23)])
def test_blur_downsample_matches_loop(h, w):
    img = _image(h, w, seed=3).astype(np.float64)
    out = blur_downsample(img, scale=4, sigma=1.6)
    ref = _bd_loop(img)
    assert out.shape == ref.shape == (h // 4, w // 4)
    np.testing.assert_allclose(out, ref, atol=1e-9)


def test_blur_downsample_uint8_and_tensor_paths():
    img = _image(24, 28, 3, seed=4)
    out = blur_downsample(img)
    assert out.dtype == np.uint8 and out.shape == (6, 7, 3)
    ref = _matlab_uint8(_bd_loop(img[..., 1].astype(np.float64)))
    assert np.abs(out[..., 1].astype(int) - ref.astype(int)).max() <= 1
    x = torch.from_numpy(img).permute(2, 0, 1).double() / 255
    lr = blur_downsample(x)
    np.testing.assert_array_equal(_matlab_uint8(lr.permute(1, 2, 0).numpy() * 255), out)


def test_blur_downsample_constant_and_centre():
    const = np.full((17, 22), 200, np.uint8)
    assert np.array_equal(blur_downsample(const), np.full((4, 5), 200, np.uint8))
    # With the 12-tap kernel anchored at tap 6, kept pixel m is the blur centred at 4m + 1.5,
    # the centre of its 4x4 block, so a ramp comes back exactly there (away from the borders).
    ramp = np.tile(np.arange(48, dtype=np.float64), (8, 1))
    out = blur_downsample(ramp)
    m = np.arange(out.shape[1])
    interior = (4 * m + 1 - 5 >= 0) & (4 * m + 1 + 6 <= 47)
    np.testing.assert_allclose(out[1, interior], 4 * m[interior] + 1.5, atol=1e-9)
    # An odd kernel is centred on the kept pixel itself (4m + 1).
    out13 = blur_downsample(ramp, kernel_size=13)
    interior = (4 * m + 1 - 6 >= 0) & (4 * m + 1 + 6 <= 47)
    np.testing.assert_allclose(out13[1, interior], 4 * m[interior] + 1.0, atol=1e-9)


# --------------------------------------------------------------------------------------------------
# degrade() and errors
# --------------------------------------------------------------------------------------------------


def test_degrade_dispatch():
    img = _image(32, 36, 3, seed=5)
    assert np.array_equal(degrade(img, "BI", 4), bicubic_resize(img, 0.25))
    assert np.array_equal(degrade(img, "BD", 4), blur_downsample(img, 4, 1.6))
    x = torch.rand(2, 3, 30, 37)
    assert degrade(x, "BI").shape == (2, 3, 8, 10)  # ceil
    assert degrade(x, "BD").shape == (2, 3, 7, 9)  # floor
    half = degrade(x.half(), "BI")
    assert half.dtype == torch.float16 and half.device == x.device


def test_errors_are_clear():
    img = _image(16, 16, 3)
    with pytest.raises(ValueError, match="unknown degradation 'XX'"):
        degrade(img, "XX")
    with pytest.raises(TypeError, match="float"):
        degrade(torch.zeros(3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, C\)"):
        bicubic_resize(np.zeros((2, 16, 16, 3), np.uint8), 0.25)
    with pytest.raises(TypeError, match="dtype int32"):
        blur_downsample(np.zeros((16, 16), np.int32))
    with pytest.raises(ValueError, match="scale"):
        bicubic_resize(img, 0)
    with pytest.raises(ValueError, match="scale"):
        degrade(img, "BD", scale=2.5)
    with pytest.raises(ValueError, match="smaller than the scale"):
        blur_downsample(np.zeros((3, 16), np.uint8))
