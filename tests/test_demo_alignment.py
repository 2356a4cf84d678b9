"""benchmarks/demo_alignment.py: the swapped-out parts compute what its docstring says."""

import pytest
import torch
import torch.nn.functional as F
from conftest import load_benchmark

from mgvsr.models.basicvsr import BasicVSR
from mgvsr.models.blocks import flow_warp

ablation = load_benchmark("demo_alignment")


def _model() -> BasicVSR:
    return BasicVSR(num_feat=4, num_block=1, head_feat=4)


def test_zero_flow_has_spynets_shapes_and_is_zero():
    model = _model()
    x = torch.rand(2, 3, 3, 32, 32)
    fwd, bwd = ablation.zero_flows(model, x)
    ref_fwd, ref_bwd = model.compute_flows(x)
    assert fwd.shape == ref_fwd.shape and bwd.shape == ref_bwd.shape
    assert not fwd.any() and not bwd.any()
    assert ablation.zero_flows(model, x[:, :1]) == (None, None)


def test_bicubic_skip_with_a_zero_last_conv_is_bicubic_upsampling():
    model = _model()
    torch.nn.init.zeros_(model.conv_last.weight)
    torch.nn.init.zeros_(model.conv_last.bias)
    lr = torch.rand(1, 3, 8, 8)
    out = ablation.reconstruct_bicubic(model, torch.rand(1, 4, 8, 8), lr)
    torch.testing.assert_close(out, F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False))
    # ... and not the bilinear base the standard head adds.
    assert not torch.allclose(out, model.reconstruct(torch.rand(1, 4, 8, 8), lr))


def test_farneback_flow_follows_mgvsr_flow_convention():
    pytest.importorskip("cv2")
    torch.manual_seed(0)
    frame = F.interpolate(torch.rand(1, 3, 12, 20), size=(48, 80), mode="bicubic").clamp(0, 1)
    moved = torch.roll(frame, shifts=1, dims=3)  # the content moves 1 px to the right
    fwd, bwd = ablation.farneback_flows(_model(), torch.stack([frame, moved], dim=1))
    inner = (slice(None), slice(None), slice(10, -10), slice(10, -10))
    torch.testing.assert_close(bwd[:, 0][inner].mean((0, 2, 3)), torch.tensor([1.0, 0.0]), atol=0.02, rtol=0)
    torch.testing.assert_close(fwd[:, 0][inner].mean((0, 2, 3)), torch.tensor([-1.0, 0.0]), atol=0.02, rtol=0)
    # The backward flow warps the later frame onto the earlier one.
    warped = flow_warp(moved, bwd[:, 0].permute(0, 2, 3, 1))
    assert (warped - frame)[inner].abs().mean() < 0.1 * (moved - frame)[inner].abs().mean()


def test_unknown_variant_prints_usage_and_fails(capsys):
    assert ablation.main(["no_such_variant", "configs/demo.yaml"]) == 2
    assert "VARIANT: one of zero_flow, farneback, bicubic_skip" in capsys.readouterr().err
