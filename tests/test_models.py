"""BasicVSR / IconVSR / SPyNet: BasicSR-compatible names, shapes for odd sizes and short clips,
gradients, batch independence, frame-by-frame reconstruction."""

import json
from pathlib import Path

import pytest
import torch

from mgvsr.config import ModelConfig
from mgvsr.models import BasicVSR, IconVSR, SpyNet, build_model, flow_warp
from mgvsr.models.iconvsr import keyframe_indices, temporal_window_index

DATA = Path(__file__).parent / "data"


def _manifest(name):
    return json.loads((DATA / f"model_manifest_{name}.json").read_text())


@pytest.mark.parametrize(
    "name,factory",
    [("basicvsr", lambda: BasicVSR(64, 30)), ("iconvsr", lambda: IconVSR(64, 30, 5, 2))],
)
def test_state_dict_matches_basicsr_manifest(name, factory):
    manifest = _manifest(name)
    model = factory()
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = manifest["state_dict"]
    assert sorted(set(expected) - set(ours)) == [], "keys missing from our model"
    assert sorted(set(ours) - set(expected)) == [], "keys BasicSR does not have"
    wrong = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert wrong == {}
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]
    buffers = {k for k, _ in model.named_buffers()}
    assert buffers == set(manifest["buffers"])


def test_parameter_counts_match_paper_scale():
    assert _manifest("basicvsr")["num_params"] == pytest.approx(6.3e6, rel=0.01)
    assert _manifest("iconvsr")["num_params"] == pytest.approx(8.7e6, rel=0.01)


SMALL = {
    "basicvsr": lambda: BasicVSR(num_feat=8, num_block=1),
    "iconvsr": lambda: IconVSR(num_feat=8, num_block=1, keyframe_stride=2, temporal_padding=2),
}


@pytest.fixture(scope="module")
def small_models():
    torch.manual_seed(0)
    return {name: f().eval() for name, f in SMALL.items()}


@pytest.mark.parametrize("name", ["basicvsr", "iconvsr"])
@pytest.mark.parametrize("t", [1, 2, 5])
@pytest.mark.parametrize("hw", [(23, 37), (16, 16), (32, 48)])
def test_forward_shapes(small_models, name, t, hw):
    h, w = hw
    x = torch.rand(1, t, 3, h, w)
    with torch.no_grad():
        y = small_models[name](x)
    assert y.shape == (1, t, 3, 4 * h, 4 * w)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["basicvsr", "iconvsr"])
def test_batch_items_are_independent(small_models, name):
    """The forward is vectorised over the batch: item i only depends on clip i."""
    x = torch.rand(2, 3, 3, 16, 20)
    model = small_models[name]
    with torch.no_grad():
        both = model(x)
        one = model(x[1:])
    torch.testing.assert_close(both[1:], one, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["basicvsr", "iconvsr"])
def test_reconstruction_runs_frame_by_frame(small_models, name):
    model = small_models[name]
    calls = []
    handle = model.upconv1.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        with torch.no_grad():
            model(torch.rand(2, 4, 3, 16, 16))
    finally:
        handle.remove()
    assert calls == [2, 2, 2, 2]  # one call per frame, batch 2 each


@pytest.mark.parametrize("name", ["basicvsr", "iconvsr"])
def test_gradients_reach_spynet_and_trunks(name):
    torch.manual_seed(0)
    model = SMALL[name]()
    y = model(torch.rand(1, 3, 3, 16, 16))
    y.mean().backward()
    spy = [p.grad for p in model.spynet.parameters()]
    assert all(g is not None for g in spy)
    assert sum(g.abs().sum() for g in spy) > 0
    assert model.backward_trunk.main[0].weight.grad.abs().sum() > 0
    assert model.forward_trunk.main[0].weight.grad.abs().sum() > 0
    if name == "iconvsr":
        assert model.edvr.conv_first.weight.grad.abs().sum() > 0
        assert model.edvr.pcd_align.cas_dcnpack.conv_offset.weight.grad.abs().sum() > 0


def test_clip_of_one_frame_does_not_use_flow():
    model = SMALL["basicvsr"]()
    model.spynet.forward = None  # would fail if called
    y = model(torch.rand(2, 1, 3, 16, 16))
    assert y.shape == (2, 1, 3, 64, 64)


def test_flows_match_direct_spynet_calls():
    torch.manual_seed(0)
    model = SMALL["basicvsr"]()
    with torch.no_grad():
        for p in model.spynet.parameters():
            p.normal_(0, 0.02)
        x = torch.rand(2, 3, 3, 20, 24)
        fwd, bwd = model.compute_flows(x)
        assert fwd.shape == bwd.shape == (2, 2, 2, 20, 24)
        torch.testing.assert_close(bwd[:, 1], model.spynet(x[:, 1], x[:, 2]), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fwd[:, 0], model.spynet(x[:, 1], x[:, 0]), atol=1e-5, rtol=1e-4)


def test_spynet_rescales_flow_to_input_size(monkeypatch):
    net = SpyNet()
    seen = {}

    def fake_process(ref, supp):  # constant (1, 2) px flow at the resized (multiple-of-32) size
        seen["size"] = tuple(ref.shape[-2:])
        flow = ref.new_zeros(ref.shape[0], 2, *ref.shape[-2:])
        flow[:, 0], flow[:, 1] = 1.0, 2.0
        return flow

    monkeypatch.setattr(net, "_process", fake_process)
    flow = net(torch.rand(1, 3, 23, 37), torch.rand(1, 3, 23, 37))
    assert seen["size"] == (32, 64)
    assert flow.shape == (1, 2, 23, 37)
    torch.testing.assert_close(flow[:, 0], torch.full((1, 23, 37), 37 / 64))
    torch.testing.assert_close(flow[:, 1], torch.full((1, 23, 37), 2 * 23 / 32))


def test_spynet_multiple_of_32_input():
    """No resizing path: output has the input size and is finite."""
    net = SpyNet()
    x = torch.rand(3, 3, 32, 64)
    flow = net(x, x)
    assert flow.shape == (3, 2, 32, 64) and torch.isfinite(flow).all()


def test_flow_warp_integer_shift():
    x = torch.arange(2 * 4 * 5, dtype=torch.float32).view(1, 2, 4, 5)
    flow = torch.zeros(1, 4, 5, 2)
    torch.testing.assert_close(flow_warp(x, flow), x)
    flow[..., 0] = 1.0  # sample one pixel to the right; zeros outside
    expected = torch.zeros_like(x)
    expected[..., :-1] = x[..., 1:]
    torch.testing.assert_close(flow_warp(x, flow), expected)
    with pytest.raises(ValueError, match="flow_warp"):
        flow_warp(x, torch.zeros(1, 3, 5, 2))


def test_temporal_window_index_matches_basicsr_padding():
    n = 10
    idx = temporal_window_index(n, 2)
    assert idx[:2] == [4, 3] and idx[2:-2] == list(range(n)) and idx[-2:] == [n - 4, n - 5]
    idx = temporal_window_index(n, 3)
    assert idx[:3] == [6, 5, 4] and idx[-3:] == [n - 5, n - 6, n - 7]
    for n in (1, 2, 3, 4):  # short clips stay inside the clip
        assert all(0 <= i < n for i in temporal_window_index(n, 2))
    assert keyframe_indices(7, 5) == [0, 5, 6]
    assert keyframe_indices(1, 5) == [0]
    assert keyframe_indices(6, 5) == [0, 5]


def test_bad_input_is_rejected():
    model = SMALL["basicvsr"]()
    with pytest.raises(ValueError, match=r"\(B, T, 3, h, w\)"):
        model(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="float"):
        model(torch.zeros(1, 2, 3, 16, 16, dtype=torch.uint8))


def test_build_model_from_config(tmp_path):
    model = build_model(ModelConfig(name="iconvsr", num_feat=8, num_block=1, keyframe_stride=3, temporal_padding=2))
    assert isinstance(model, IconVSR) and model.keyframe_stride == 3
    model = build_model(ModelConfig(name="basicvsr", num_feat=8, num_block=2))
    assert isinstance(model, BasicVSR) and len(model.forward_trunk.main[2]) == 2
    with pytest.raises(ValueError, match="model.scale"):
        build_model(ModelConfig(scale=2))


def test_keyframe_features_match_basicsr_loop(small_models):
    """Batched keyframe windows equal BasicSR's per-keyframe loop over the mirrored clip."""
    model = small_models["iconvsr"]
    x = torch.rand(1, 7, 3, 16, 16)
    keyframes = keyframe_indices(7, model.keyframe_stride)
    with torch.no_grad():
        ours = model.keyframe_features(x, keyframes)
        padded = torch.cat([x[:, [4, 3]], x, x[:, [-4, -5]]], dim=1)  # BasicSR, temporal_padding=2
        for k in keyframes:
            ref = model.edvr(padded[:, k : k + 5])
            torch.testing.assert_close(ours[k], ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "basicvsr", "num_feat": 8, "num_block": 1, "head_feat": 8},
        {"name": "iconvsr", "num_feat": 8, "num_block": 1, "head_feat": 8},
        {"name": "edvr", "num_feat": 8, "num_block": 1, "head_feat": 8, "num_frame": 3, "deformable_groups": 1,
         "num_extract_block": 1},
        {"name": "basicvsrpp", "num_feat": 8, "num_block": 1, "head_feat": 8},
    ],
    ids=lambda f: f["name"],
)
def test_zero_init_output_starts_at_the_bilinear_base(fields):
    x = torch.rand(1, 3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    base = torch.nn.functional.interpolate(x.flatten(0, 1), scale_factor=4, mode="bilinear", align_corners=False)
    base = base.view(1, 3, 3, 128, 128)
    if fields["name"] == "edvr":  # one output: the centre frame
        base = base[:, 1]
    torch.manual_seed(0)
    plain_model = build_model(ModelConfig(**fields)).eval()
    torch.manual_seed(0)
    zeroed_model = build_model(ModelConfig(**fields, zero_init_output=True)).eval()
    with torch.no_grad():
        plain, zeroed = plain_model(x), zeroed_model(x)
    assert not torch.allclose(plain, base, atol=1e-4)  # BasicSR's init: base + a random residual
    torch.testing.assert_close(zeroed, base, atol=1e-6, rtol=0)
    # Only conv_last differs: every other parameter keeps BasicSR's init.
    zeroed_state = zeroed_model.state_dict()
    for name, value in plain_model.state_dict().items():
        if name.startswith("conv_last."):
            assert zeroed_state[name].abs().sum() == 0 and value.abs().sum() > 0
        else:
            torch.testing.assert_close(zeroed_state[name], value, atol=0, rtol=0)
