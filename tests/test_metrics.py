"""Tests for mgvsr.metrics: PSNR / SSIM against scikit-image, hand values and a direct SSIM loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mgvsr.metrics import ClipAverager, frame_metrics, psnr, rgb_to_y, ssim, tensor_to_uint8


def _pair(shape=(40, 48, 3), noise=12.0, seed=0):
    """A random-ish uint8 image and a noisy copy of it."""
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 256, size=shape).astype(np.uint8)
    # Smooth a little so SSIM is not trivially ~0.
    gt = ((gt.astype(np.float64) + np.roll(gt, 1, axis=0) + np.roll(gt, 1, axis=1)) / 3).round()
    gt = gt.astype(np.uint8)
    pred = np.clip(gt + rng.normal(0, noise, size=shape), 0, 255).round().astype(np.uint8)
    return pred, gt


# --------------------------------------------------------------------------------------------------
# PSNR
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 3, 10])
def test_psnr_constant_offset_is_exact(d):
    rng = np.random.default_rng(1)
    gt = rng.integers(20, 230, size=(16, 20, 3)).astype(np.uint8)
    pred = (gt.astype(np.int32) + d).astype(np.uint8)
    expected = 10 * math.log10(255.0**2 / d**2)
    assert abs(psnr(pred, gt) - expected) < 1e-9
    assert abs(psnr(gt, pred) - expected) < 1e-9


def test_identical_images():
    pred, _ = _pair()
    assert psnr(pred, pred.copy()) == float("inf")
    assert ssim(pred, pred.copy()) == 1.0
    assert psnr(pred, pred, y_channel=True) == float("inf")


@pytest.mark.parametrize("shape", [(33, 47, 3), (30, 41)])
def test_psnr_matches_skimage(shape):
    pred, gt = _pair(shape)
    ref = peak_signal_noise_ratio(gt, pred, data_range=255)
    assert abs(psnr(pred, gt) - ref) < 1e-6


def test_psnr_float_input_equals_uint8():
    pred, gt = _pair()
    assert psnr(pred.astype(np.float32), gt.astype(np.float64)) == pytest.approx(psnr(pred, gt), abs=1e-12)


def test_crop_border():
    pred, gt = _pair((32, 36, 3))
    b = 4
    cropped = psnr(pred[b:-b, b:-b], gt[b:-b, b:-b])
    assert psnr(pred, gt, crop_border=b) == pytest.approx(cropped, abs=1e-12)
    # Errors confined to the border disappear once it is cropped.
    damaged = gt.copy()
    damaged[:b] = 0
    damaged[:, -b:] = 255
    assert psnr(damaged, gt) < 30
    assert psnr(damaged, gt, crop_border=b) == float("inf")
    assert ssim(damaged, gt, crop_border=b) == 1.0


# --------------------------------------------------------------------------------------------------
# Y channel
# --------------------------------------------------------------------------------------------------


def test_rgb_to_y_known_values():
    colours = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    y = rgb_to_y(colours)
    assert y.dtype == np.float64 and y.shape == (1, 5)
    np.testing.assert_allclose(y[0], [16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966], atol=1e-12)


def test_y_channel_psnr_and_bgr_convention():
    pred, gt = _pair((36, 40, 3))
    y_pred, y_gt = rgb_to_y(pred), rgb_to_y(gt)
    mse = np.mean((y_pred - y_gt) ** 2)
    assert psnr(pred, gt, y_channel=True) == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-9)
    # BasicSR's BGR formula on the channel-reversed image gives the same luma.
    bgr = gt[..., ::-1].astype(np.float64)
    y_bgr = bgr @ np.array([24.966, 128.553, 65.481]) / 255.0 + 16.0
    np.testing.assert_allclose(y_gt, y_bgr, atol=1e-10)
    # SSIM on Y equals SSIM of the single-channel Y images.
    assert ssim(pred, gt, y_channel=True) == pytest.approx(ssim(y_pred, y_gt), abs=1e-12)


def test_y_channel_ignored_for_gray():
    pred, gt = _pair((30, 30))
    assert psnr(pred, gt, y_channel=True) == psnr(pred, gt)


# --------------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------------


def _ssim_direct(a: np.ndarray, b: np.ndarray) -> float:
    """Reference: an explicit loop over every 11x11 window of a small single-channel image."""
    x = np.arange(11) - 5.0
    g = np.exp(-(x**2) / (2 * 1.5**2))
    win = np.outer(g, g)
    win /= win.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    values = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            ma, mb = (win * pa).sum(), (win * pb).sum()
            va = (win * (pa - ma) ** 2).sum()
            vb = (win * (pb - mb) ** 2).sum()
            cov = (win * (pa - ma) * (pb - mb)).sum()
            values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_direct_window_loop():
    pred, gt = _pair((14, 15, 3), noise=20.0, seed=3)
    expected = np.mean([_ssim_direct(pred[..., c], gt[..., c]) for c in range(3)])
    assert ssim(pred, gt) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("shape", [(37, 45, 3), (32, 29)])
def test_ssim_matches_skimage_matlab_convention(shape):
    pred, gt = _pair(shape, noise=15.0, seed=5)
    kwargs = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    if len(shape) == 3:
        kwargs["channel_axis"] = -1
    # skimage's full map filters with 'reflect' borders; its interior [5:-5, 5:-5] is the valid region
    # MATLAB / BasicSR average. Compare that interior's mean explicitly.
    _, smap = structural_similarity(gt.astype(np.float64), pred.astype(np.float64), full=True, **kwargs)
    interior = smap[5:-5, 5:-5]
    assert ssim(pred, gt) == pytest.approx(float(interior.mean()), abs=1e-9)


def test_ssim_symmetry_and_range():
    pred, gt = _pair(noise=40.0)
    s = ssim(pred, gt)
    assert s == pytest.approx(ssim(gt, pred), abs=1e-12)
    assert 0.0 < s < 1.0


def test_frame_metrics():
    pred, gt = _pair()
    p, s = frame_metrics(pred, gt, crop_border=2, y_channel=True)
    assert p == psnr(pred, gt, crop_border=2, y_channel=True)
    assert s == ssim(pred, gt, crop_border=2, y_channel=True)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_shape_mismatch_names_both_shapes():
    a = np.zeros((16, 16, 3), np.uint8)
    b = np.zeros((16, 18, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\(16, 16, 3\).*\(16, 18, 3\)"):
        psnr(a, b)


def test_bad_inputs():
    img = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="channels last"):
        psnr(np.zeros((3, 16, 16), np.uint8), np.zeros((3, 16, 16), np.uint8))
    with pytest.raises(TypeError, match="dtype int64"):
        psnr(img.astype(np.int64), img.astype(np.int64))
    with pytest.raises(TypeError, match="numpy array"):
        psnr(torch.zeros(16, 16, 3), img)
    with pytest.raises(ValueError, match="crop_border"):
        psnr(img, img, crop_border=8)
    with pytest.raises(ValueError, match="11x11"):
        ssim(img, img, crop_border=3)
    with pytest.raises(ValueError, match="shape"):
        rgb_to_y(np.zeros((4, 4), np.uint8))


# --------------------------------------------------------------------------------------------------
# tensor_to_uint8
# --------------------------------------------------------------------------------------------------


def test_tensor_to_uint8_rounding_and_layout():
    x = torch.rand(2, 3, 5, 7) * 1.4 - 0.2  # some values outside [0, 1]
    out = tensor_to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (2, 5, 7, 3)
    ref = np.round(np.clip(x.numpy().astype(np.float32), 0, 1) * np.float32(255)).astype(np.uint8)
    np.testing.assert_array_equal(out, ref.transpose(0, 2, 3, 1))
    single = tensor_to_uint8(x[1])
    np.testing.assert_array_equal(single, out[1])
    exact = torch.tensor([0.0, 1 / 255, 0.2, 1.0, 1.7, -0.3]).view(1, 1, 6).expand(3, 1, 6)
    np.testing.assert_array_equal(tensor_to_uint8(exact)[0, :, 0], [0, 1, 51, 255, 255, 0])


def test_tensor_to_uint8_errors():
    with pytest.raises(TypeError, match="float"):
        tensor_to_uint8(torch.zeros(3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        tensor_to_uint8(torch.zeros(4, 4))


# --------------------------------------------------------------------------------------------------
# Clip aggregation
# --------------------------------------------------------------------------------------------------


def test_clip_average_is_mean_of_clip_means():
    avg = ClipAverager()
    avg.add("calendar", 30.0, 0.80)
    avg.add("calendar", 32.0, 0.90)
    avg.add("city", 40.0, 0.95)
    rows = avg.clip_means()
    assert list(rows) == ["calendar", "city"]
    assert rows["calendar"] == pytest.approx({"psnr": 31.0, "ssim": 0.85, "frames": 2})
    assert rows["city"] == pytest.approx({"psnr": 40.0, "ssim": 0.95, "frames": 1})
    average = avg.average()
    assert average["psnr"] == pytest.approx(35.5)  # not the frame mean 34.0
    assert average["ssim"] == pytest.approx(0.90)
    summary = avg.summary()
    assert summary["average"] == average and summary["clips"] == rows
    table = avg.format_table()
    assert "calendar" in table and "Average" in table and "35.5000" in table
    assert len(avg) == 2


def test_clip_averager_psnr_only_and_errors():
    avg = ClipAverager()
    with pytest.raises(ValueError, match="no frames"):
        avg.average()
    avg.add("a", 20.0)
    avg.add("b", 30.0)
    assert avg.average() == {"psnr": 25.0}
    with pytest.raises(ValueError, match="frame_ssim"):
        avg.add("a", 21.0, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        avg.add("a", float("nan"))
