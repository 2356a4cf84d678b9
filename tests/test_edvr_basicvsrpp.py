"""EDVR and BasicVSR++: BasicSR state dicts, odd sizes, the sliding-window contract (forward_clip and its
reflection_circle padding), the flow-guided deformable alignment against the independent DCN
reference, MMagic names, config inference from weights, the centre-frame loss and config checks."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mgvsr.config import ConfigError, ModelConfig, from_dict
from mgvsr.evaluation.runner import run_clip
from mgvsr.models.loading import infer_model_config
from mgvsr.losses import pixel_loss, sr_loss
from mgvsr.models import EDVR, BasicVSRPlusPlus, SecondOrderDeformableAlignment, build_model, forward_clip
from mgvsr.models import dcn
from mgvsr.models.basicvsr import warp
from mgvsr.models.edvr import window_indices
from mgvsr.models.weights import load_state, mmagic_to_basicsr
from test_dcn import reference_dcn

DATA = Path(__file__).parent / "data"


def _manifest(name):
    return json.loads((DATA / f"model_manifest_{name}.json").read_text())


@pytest.mark.parametrize(
    "name,factory",
    [
        ("edvr_m", lambda: EDVR(**{k: v for k, v in _manifest("edvr_m")["args"].items()})),
        ("basicvsrpp", lambda: BasicVSRPlusPlus(**_manifest("basicvsrpp")["args"])),
    ],
)
def test_state_dict_matches_basicsr_manifest(name, factory):
    manifest = _manifest(name)
    model = factory()
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = manifest["state_dict"]
    assert sorted(set(expected) - set(ours)) == [], "keys missing from our model"
    assert sorted(set(ours) - set(expected)) == [], "keys BasicSR does not have"
    assert {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]} == {}
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]
    assert {k for k, _ in model.named_buffers()} == set(manifest["buffers"])


def test_paper_scale_parameter_counts():
    assert _manifest("edvr_m")["num_params"] == pytest.approx(3.3e6, rel=0.01)  # EDVR-M
    assert _manifest("basicvsrpp")["num_params"] == pytest.approx(7.3e6, rel=0.01)  # BasicVSR++ paper


def test_edvr_variants_have_basicsr_names():
    no_tsa = EDVR(num_feat=16, num_frame=3, deformable_groups=4, num_extract_block=1, num_reconstruct_block=1,
                  with_tsa=False)
    assert no_tsa.state_dict()["fusion.weight"].shape == (16, 48, 1, 1)
    deblur = EDVR(num_feat=16, deformable_groups=4, num_extract_block=1, num_reconstruct_block=1, with_predeblur=True)
    keys = set(deblur.state_dict())
    assert "conv_first.weight" not in keys and "conv_1x1.weight" in keys
    assert {"predeblur.resblock_l1.4.conv2.weight", "predeblur.stride_conv_l3.bias"} <= keys
    hr = EDVR(num_feat=16, deformable_groups=4, num_extract_block=1, num_reconstruct_block=1, with_predeblur=True,
              hr_in=True)
    assert "predeblur.stride_conv_hr2.weight" in hr.state_dict()
    with torch.no_grad():
        assert hr(torch.rand(1, 5, 3, 32, 48)).shape == (1, 3, 32, 48)  # same-size output
    with pytest.raises(ValueError, match="with_predeblur"):
        EDVR(hr_in=True)


# --------------------------------------------------------------------------------------------------
# Small models: shapes, odd sizes, sliding window
# --------------------------------------------------------------------------------------------------


def small_edvr(**kw):
    torch.manual_seed(0)
    args = dict(num_feat=8, num_frame=5, deformable_groups=2, num_extract_block=1, num_reconstruct_block=1,
                head_feat=8)
    args.update(kw)
    return EDVR(**args).eval()


def small_pp(**kw):
    torch.manual_seed(0)
    return BasicVSRPlusPlus(mid_channels=8, num_blocks=1, head_feat=8, **kw).eval()


@pytest.mark.parametrize("hw", [(23, 37), (16, 16), (4, 5)])
def test_edvr_forward_returns_centre_frame_on_any_size(hw):
    h, w = hw
    with torch.no_grad():
        y = small_edvr()(torch.rand(2, 5, 3, h, w))
    assert y.shape == (2, 3, 4 * h, 4 * w) and torch.isfinite(y).all()


def test_edvr_pads_odd_sizes_instead_of_failing_and_matches_on_the_padded_input():
    model = small_edvr()
    x = torch.rand(1, 5, 3, 13, 18)
    padded = F.pad(x.view(5, 3, 13, 18), [0, 2, 0, 3], mode="reflect").view(1, 5, 3, 16, 20)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded)[..., : 4 * 13, : 4 * 18])


def test_edvr_wrong_window_length_is_a_clear_error():
    with pytest.raises(ValueError, match="num_frame=5"):
        small_edvr()(torch.rand(1, 4, 3, 16, 16))


def test_reflection_circle_indices_match_basicsr_examples():
    # BasicSR generate_frame_indices(crt_idx, max_frame_num=10, num_frames=5, padding='reflection_circle').
    assert window_indices(10, 0, 5, 2) == [4, 3, 0, 1, 2]
    assert window_indices(10, 1, 5, 2) == [4, 0, 1, 2, 3]
    assert window_indices(10, 5, 5, 2) == [3, 4, 5, 6, 7]
    assert window_indices(10, 8, 5, 2) == [6, 7, 8, 9, 5]
    assert window_indices(10, 9, 5, 2) == [7, 8, 9, 6, 5]
    assert window_indices(2, 0, 5, 2) == [1, 1, 0, 1, 0]  # too short: clamped into the clip


def test_forward_clip_predicts_every_frame_from_its_window():
    model = small_edvr()
    x = torch.rand(1, 6, 3, 8, 12)
    with torch.no_grad():
        clip = model.forward_clip(x)
        assert clip.shape == (1, 6, 3, 32, 48)
        for i in (0, 1, 3, 5):  # both padded ends and the inside
            window = x[:, window_indices(6, i, 5, 2)]
            torch.testing.assert_close(clip[:, i], model(window), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model.forward_clip(x, windows_per_call=4), clip, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(forward_clip(model, x), clip)


def test_run_clip_uses_forward_clip_and_chunks_exactly_with_enough_overlap():
    model = small_edvr()
    clip = torch.rand(6, 3, 8, 8)
    whole = run_clip(model, clip)
    assert whole.shape == (6, 3, 32, 32)
    from mgvsr.evaluation.runner import InferenceOptions

    chunked = run_clip(model, clip, InferenceOptions(chunk=3, chunk_overlap=2))
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("t,hw", [(1, (23, 37)), (3, (23, 37)), (4, (8, 12))])
def test_basicvsrpp_forward_shapes(t, hw):
    h, w = hw
    with torch.no_grad():
        y = small_pp()(torch.rand(1, t, 3, h, w))
    assert y.shape == (1, t, 3, 4 * h, 4 * w) and torch.isfinite(y).all()


def test_basicvsrpp_batch_items_are_independent():
    model = small_pp()
    x = torch.rand(2, 3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[1:], model(x[1:]), atol=1e-5, rtol=1e-4)


def test_basicvsrpp_mirror_shortcut_gives_the_same_flows():
    model = small_pp()
    for p in model.spynet.parameters():  # a non-trivial flow
        p.data.normal_(0, 0.02)
    x = torch.rand(1, 2, 3, 8, 8)
    mirrored = torch.cat([x, x.flip(1)], dim=1)
    assert BasicVSRPlusPlus.is_mirror_extended(mirrored) and not BasicVSRPlusPlus.is_mirror_extended(x)
    with torch.no_grad():
        shortcut = model.flows(mirrored)
        direct = model.compute_flows(mirrored)
    torch.testing.assert_close(shortcut[0], direct[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(shortcut[1], direct[1], atol=1e-5, rtol=1e-4)


def test_basicvsrpp_not_low_res_input_keeps_the_size():
    model = small_pp(is_low_res_input=False)
    with torch.no_grad():
        assert model(torch.rand(1, 2, 3, 16, 20)).shape == (1, 2, 3, 16, 20)


def test_gradients_reach_edvr_alignment_and_fusion():
    edvr = small_edvr().train()
    edvr(torch.rand(1, 5, 3, 8, 8)).mean().backward()
    assert edvr.pcd_align.cas_dcnpack.conv_offset.weight.grad.abs().sum() > 0
    assert edvr.fusion.spatial_attn_add2.weight.grad.abs().sum() > 0


def test_gradients_reach_every_basicvsrpp_branch():
    pp = small_pp().train()
    pp(torch.rand(1, 3, 3, 8, 8)).mean().backward()
    for name in ("backward_1", "forward_1", "backward_2", "forward_2"):
        assert pp.deform_align[name].conv_offset[-1].weight.grad.abs().sum() > 0
        assert pp.backbone[name].main[0].weight.grad.abs().sum() > 0
    assert sum(p.grad.abs().sum() for p in pp.spynet.parameters()) > 0


# --------------------------------------------------------------------------------------------------
# Flow-guided deformable alignment vs the independent reference
# --------------------------------------------------------------------------------------------------


def test_second_order_alignment_matches_reference_dcn():
    torch.manual_seed(0)
    mid, h, w = 8, 5, 6
    align = SecondOrderDeformableAlignment(2 * mid, mid, 3, padding=1, deformable_groups=16,
                                           max_residue_magnitude=10).double()
    torch.nn.init.normal_(align.conv_offset[-1].weight, std=0.05)  # a non-zero residue and mask
    x = torch.randn(2, 2 * mid, h, w, dtype=torch.float64)
    cond = torch.randn(2, 3 * mid, h, w, dtype=torch.float64)
    flow_1 = torch.randn(2, 2, h, w, dtype=torch.float64)
    flow_2 = torch.randn(2, 2, h, w, dtype=torch.float64)
    ours = align(x, cond, flow_1, flow_2)

    # The same offsets built independently: residue + the flow of each half of the groups in (dy, dx).
    out = align.conv_offset(torch.cat([cond, flow_1, flow_2], dim=1))
    taps, groups = 9, 16
    residue = 10 * torch.tanh(out[:, : 2 * taps * groups])
    mask = torch.sigmoid(out[:, 2 * taps * groups :])
    offset = residue.clone().view(2, groups, taps, 2, h, w)
    for g in range(groups):
        flow = flow_1 if g < groups // 2 else flow_2
        offset[:, g, :, 0] += flow[:, 1:2]  # dy
        offset[:, g, :, 1] += flow[:, 0:1]  # dx
    ref = reference_dcn(x, offset.view(2, -1, h, w), mask, align.weight, align.bias, 1, 1, 1, 1, groups)
    torch.testing.assert_close(ours, ref, atol=1e-9, rtol=1e-9)


def test_zero_residue_alignment_is_flow_warping_of_each_half():
    """With a zero residue, unit mask and an identity-tap kernel, the DCN warps feature i-1 with flow_1
    and feature i-2 with flow_2, exactly as flow_warp (bilinear, zeros outside)."""
    mid, h, w = 8, 6, 7
    align = SecondOrderDeformableAlignment(2 * mid, 2 * mid, 3, padding=1, deformable_groups=16).double()
    with torch.no_grad():
        align.weight.zero_()
        align.bias.zero_()
        for c in range(2 * mid):
            align.weight[c, c, 1, 1] = 1.0  # centre tap copies channel c
        last = align.conv_offset[-1]
        last.bias[2 * 9 * 16 :] = 50.0  # sigmoid -> 1
    x = torch.randn(1, 2 * mid, h, w, dtype=torch.float64)
    flow_1 = torch.rand(1, 2, h, w, dtype=torch.float64) * 2 - 1
    flow_2 = torch.rand(1, 2, h, w, dtype=torch.float64) * 2 - 1
    out = align(x, torch.zeros(1, 3 * 2 * mid, h, w, dtype=torch.float64), flow_1, flow_2)
    torch.testing.assert_close(out[:, :mid], warp(x[:, :mid], flow_1), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(out[:, mid:], warp(x[:, mid:], flow_2), atol=1e-9, rtol=1e-9)


def test_torchvision_backend_gives_the_same_result():
    pytest.importorskip("torchvision.ops")
    torch.manual_seed(0)
    x = torch.randn(2, 16, 6, 7)
    offset = torch.randn(2, 2 * 4 * 9, 6, 7) * 2
    mask = torch.rand(2, 4 * 9, 6, 7)
    weight, bias = torch.randn(8, 16, 3, 3), torch.randn(8)
    ref = dcn.modulated_deform_conv2d(x, offset, mask, weight, bias, 1, 1, 1, 1)
    dcn.set_backend("torchvision")
    try:
        tv = dcn.deform_conv(x, offset, mask, weight, bias, 1, 1, 1, 1)
    finally:
        dcn.set_backend("torch")
    torch.testing.assert_close(tv, ref, atol=1e-4, rtol=1e-4)


def test_backend_names_are_checked():
    with pytest.raises(ValueError, match="not one of"):
        dcn.set_backend("cuda")
    assert dcn.get_backend() == "torch"


# --------------------------------------------------------------------------------------------------
# Weights: MMagic names, config inference
# --------------------------------------------------------------------------------------------------


def _to_mmagic_edvr(name: str) -> str:
    """BasicSR EDVR name -> MMagic EDVRNet name (the inverse of the documented mapping)."""
    import re

    name = re.sub(r"^conv_l([23])_([12])\.", r"feat_l\1_conv\2.conv.", name)
    name = re.sub(r"^upconv([12])\.", r"upsample\1.upsample_conv.", name)
    name = re.sub(
        r"^pcd_align\.((?:offset_conv[123]\.l[123]|feat_conv\.l[12]|cas_offset_conv[12]))\.", r"pcd_alignment.\1.conv.", name
    )
    name = re.sub(r"^pcd_align\.", "pcd_alignment.", name)
    name = re.sub(r"^fusion\.(feat_fusion|spatial_attn[1-4]|spatial_attn_l[123]|spatial_attn_add1)\.", r"fusion.\1.conv.", name)
    return name


def test_mmagic_edvr_checkpoint_loads_into_edvr(tmp_path):
    model = small_edvr()
    mm = {"generator." + _to_mmagic_edvr(k): v for k, v in model.state_dict().items()}
    assert "generator.pcd_alignment.offset_conv1.l3.conv.weight" in mm
    assert "generator.fusion.feat_fusion.conv.weight" in mm and "generator.feat_l3_conv2.conv.bias" in mm
    torch.save({"meta": {}, "state_dict": mm}, tmp_path / "mm.pth")
    state = load_state(tmp_path / "mm.pth")
    assert set(state) == set(model.state_dict())
    assert all(mmagic_to_basicsr(k) == k for k in model.state_dict())  # idempotent on BasicSR names
    cfg = infer_model_config({k[len("generator."):]: v for k, v in mm.items()})
    assert (cfg.name, cfg.num_feat, cfg.num_block, cfg.num_frame, cfg.deformable_groups) == ("edvr", 8, 1, 5, 2)


def test_mmagic_basicvsrpp_names_map():
    model = small_pp()
    names = {k.replace("upconv1.", "upsample1.upsample_conv.").replace("upconv2.", "upsample2.upsample_conv."): k
             for k in model.state_dict()}
    import re

    names = {re.sub(r"basic_module\.(\d)\.basic_module\.(\d)\.",
                    lambda m: f"basic_module.{m.group(1)}.basic_module.{int(m.group(2)) // 2}.conv.", k): v
             for k, v in names.items()}
    assert {mmagic_to_basicsr(k) for k in names} == set(model.state_dict())


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(name="edvr", num_feat=16, num_block=3, num_frame=3, deformable_groups=4, num_extract_block=2,
                    head_feat=16),
        ModelConfig(name="edvr", num_feat=16, num_block=1, num_frame=7, deformable_groups=8, num_extract_block=1,
                    with_tsa=False, with_predeblur=True),
        ModelConfig(name="basicvsrpp", num_feat=16, num_block=2, head_feat=8),
    ],
)
def test_infer_model_config_from_weights(cfg):
    state = build_model(cfg).state_dict()
    inferred = infer_model_config(state)
    for field in ("name", "num_feat", "num_block", "num_frame", "deformable_groups", "num_extract_block",
                  "with_tsa", "with_predeblur", "head_feat"):
        if cfg.name == "basicvsrpp" and field in ("num_frame", "deformable_groups", "num_extract_block"):
            continue
        assert getattr(inferred, field) == getattr(cfg, field), field


# --------------------------------------------------------------------------------------------------
# Loss and config checks
# --------------------------------------------------------------------------------------------------


def test_sr_loss_compares_centre_frame_for_sliding_window_output():
    hr = torch.rand(2, 5, 3, 8, 8)
    pred = torch.rand(2, 3, 8, 8)
    assert sr_loss("l1", pred, hr, center_frame_idx=2) == pixel_loss("l1", pred, hr[:, 2])
    assert sr_loss("l1", hr + 0.1, hr) == pytest.approx(0.1, abs=1e-6)
    with pytest.raises(ValueError, match="center_frame_idx"):
        sr_loss("l1", pred, hr)


@pytest.mark.parametrize(
    "model,schedule,needle",
    [
        ({"name": "edvr"}, {"num_frames": 7}, "schedule.num_frames"),
        ({"name": "edvr"}, {"num_frames": 5, "kind": "multigrid", "spatial_stages": [32, 64]},
         "schedule.temporal_fractions"),
        ({"name": "edvr"}, {"num_frames": 5, "kind": "cycles"}, "schedule.cycle_shapes"),
        ({"name": "edvr", "num_feat": 12}, {"num_frames": 5}, "model.num_feat"),
        ({"name": "edvr", "center_frame_idx": 5}, {"num_frames": 5}, "model.center_frame_idx"),
        ({"name": "basicvsrpp", "num_feat": 12}, {}, "model.num_feat"),
    ],
)
def test_config_checks_name_the_key(model, schedule, needle):
    with pytest.raises(ConfigError, match=needle):
        from_dict({"model": model, "schedule": schedule})


def test_edvr_multigrid_with_spatial_stages_only_is_valid():
    cfg = from_dict({
        "model": {"name": "edvr"},
        "schedule": {"kind": "multigrid", "num_frames": 5, "spatial_stages": [32, 64], "temporal_fractions": [1.0]},
    })
    assert cfg.model.sliding_window
