"""Torch PSNR / SSIM (mgvsr.evaluation.device_metrics) against the numpy reference (mgvsr.metrics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import synthetic as syn
from mgvsr import metrics as ref
from mgvsr.evaluation import device_metrics as dm
from mgvsr.evaluation.runner import quantize

PSNR_TOL = 1e-6  # dB
SSIM_TOL = 1e-8


def _pair(shape, noise, seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 256, size=shape).astype(np.uint8)
    gt = ((gt.astype(np.float64) + np.roll(gt, 1, axis=0) + np.roll(gt, 1, axis=1)) / 3).round().astype(np.uint8)
    pred = np.clip(gt + rng.normal(0, noise, size=shape), 0, 255).round().astype(np.uint8)
    return pred, gt


def _refs():
    """The reference pairs: noisy random images (RGB, gray, odd sizes) and a smooth panning clip's
    frame against its shifted neighbour (realistic SR-like errors)."""
    pairs = [_pair((40, 48, 3), 12.0, 0), _pair((33, 47, 3), 15.0, 5), _pair((30, 41), 20.0, 3),
             _pair((64, 80, 3), 2.0, 7)]
    clip = syn.smooth_clip(2, 72, 96, seed=1)
    pairs.append((clip[1], clip[0]))
    return pairs


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("crop_border", [0, 4])
@pytest.mark.parametrize("y_channel", [False, True])
def test_torch_metrics_equal_numpy_reference(device, crop_border, y_channel):
    for pred, gt in _refs():
        p, g = torch.from_numpy(pred).to(device), torch.from_numpy(gt).to(device)
        got_psnr = dm.psnr(p, g, crop_border, y_channel)
        got_ssim = dm.ssim(p, g, crop_border, y_channel)
        assert got_psnr.dtype == torch.float64 and got_psnr.device.type == device
        assert abs(float(got_psnr) - ref.psnr(pred, gt, crop_border, y_channel)) < PSNR_TOL
        assert abs(float(got_ssim) - ref.ssim(pred, gt, crop_border, y_channel)) < SSIM_TOL
        both = dm.frame_scores(p, g, crop_border, y_channel).tolist()
        assert both == [float(got_psnr), float(got_ssim)]


def test_identical_frames_and_y_values():
    pred, _ = _pair((20, 24, 3), 5.0, 1)
    p = torch.from_numpy(pred)
    assert float(dm.psnr(p, p.clone())) == float("inf")
    assert float(dm.ssim(p, p.clone())) == 1.0
    colours = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    np.testing.assert_allclose(dm.rgb_to_y(torch.from_numpy(colours)).numpy(), ref.rgb_to_y(colours), atol=1e-12)


def test_errors_name_the_problem():
    a = torch.zeros(16, 16, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="shapes differ"):
        dm.psnr(a, torch.zeros(16, 15, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="removes the whole"):
        dm.psnr(a, a, crop_border=8)
    with pytest.raises(ValueError, match="at least 11x11"):
        dm.ssim(a, a, crop_border=3)


def test_quantize_equals_tensor_to_uint8():
    x = torch.rand(3, 3, 9, 11) * 1.2 - 0.1
    x[0, 0, 0, :4] = torch.tensor([0.5 / 255, 1.5 / 255, 127.5 / 255, 2.5 / 255])  # exact halves
    q = quantize(x)
    assert q.dtype == torch.uint8 and q.shape == (3, 9, 11, 3)
    assert np.array_equal(q.numpy(), ref.tensor_to_uint8(x))
