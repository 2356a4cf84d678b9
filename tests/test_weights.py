"""Weights I/O: safetensors / BasicSR / MMagic formats, strict loading errors, sub-network weights."""

import re

import pytest
import torch

from mgvsr.config import ModelConfig
from mgvsr.models import BasicVSR, IconVSR, build_model
from mgvsr.models.weights import (
    WeightsError,
    WeightsFileNotFoundError,
    export_basicsr,
    load_state,
    load_weights,
    mmagic_to_basicsr,
    save_safetensors,
)


def small(seed: int = 0, **kw) -> BasicVSR:
    torch.manual_seed(seed)
    return BasicVSR(num_feat=kw.get("num_feat", 8), num_block=kw.get("num_block", 1))


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_safetensors_round_trip(tmp_path):
    model = small(0)
    path = save_safetensors(model, tmp_path / "sub" / "w.safetensors", metadata={"step": "12"})
    assert path.is_file() and not list(path.parent.glob(".*.tmp"))
    fresh = load_weights(small(1), path)
    assert_same_state(fresh.state_dict(), model.state_dict())
    x = torch.rand(1, 2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert f.metadata()["step"] == "12"
    with pytest.raises(WeightsError, match="metadata"):
        save_safetensors(model, tmp_path / "bad.safetensors", metadata={"step": 12})


def test_export_basicsr_round_trip_prefers_ema(tmp_path):
    model, ema = small(0), small(1)
    path = export_basicsr(model, tmp_path / "net.pth", ema_state=ema)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"params", "params_ema"}
    assert_same_state(load_weights(small(2), path).state_dict(), ema.state_dict())  # auto -> EMA
    assert_same_state(load_weights(small(2), path, key="params").state_dict(), model.state_dict())
    only = export_basicsr(model.state_dict(), tmp_path / "only.pth")
    assert set(torch.load(only, weights_only=True)) == {"params"}
    assert_same_state(load_weights(small(2), only).state_dict(), model.state_dict())
    with pytest.raises(WeightsError, match="no 'params_ema' entry"):
        load_state(only, key="params_ema")


def test_fake_basicsr_checkpoint_with_ddp_prefix(tmp_path):
    model, ema = small(0), small(1)
    ckpt = {
        "params": {f"module.{k}": v for k, v in model.state_dict().items()},
        "params_ema": {f"module.{k}": v for k, v in ema.state_dict().items()},
    }
    torch.save(ckpt, tmp_path / "basicsr.pth")
    assert_same_state(load_weights(small(2), tmp_path / "basicsr.pth").state_dict(), ema.state_dict())


def to_mmagic_name(name: str) -> str:
    """BasicSR -> MMagic BasicVSRNet names, written independently of the loader's rules."""
    name = name.replace("backward_trunk.", "backward_resblocks.").replace("forward_trunk.", "forward_resblocks.")
    name = name.replace("upconv1.", "upsample1.upsample_conv.").replace("upconv2.", "upsample2.upsample_conv.")
    m = re.match(r"spynet\.basic_module\.(\d)\.basic_module\.(\d)\.(weight|bias)$", name)
    if m:
        name = f"spynet.basic_module.{m[1]}.basic_module.{int(m[2]) // 2}.conv.{m[3]}"
    return name


def test_fake_mmagic_checkpoint(tmp_path):
    model = small(0)
    state = {f"generator.{to_mmagic_name(k)}": v for k, v in model.state_dict().items()}
    assert "generator.upsample1.upsample_conv.weight" in state
    assert "generator.spynet.basic_module.0.basic_module.4.conv.weight" in state
    state["step_counter"] = torch.zeros(1)  # MMagic keeps this outside the generator
    torch.save({"meta": {"epoch": 3, "note": "mmagic"}, "state_dict": state}, tmp_path / "mmagic.pth")
    loaded = load_weights(small(1), tmp_path / "mmagic.pth")
    assert_same_state(loaded.state_dict(), model.state_dict())


def test_mmagic_name_mapping():
    assert mmagic_to_basicsr("backward_resblocks.main.2.0.conv1.weight") == "backward_trunk.main.2.0.conv1.weight"
    assert mmagic_to_basicsr("upsample2.upsample_conv.bias") == "upconv2.bias"
    assert mmagic_to_basicsr("spynet.basic_module.5.basic_module.3.conv.weight") == (
        "spynet.basic_module.5.basic_module.6.weight"
    )
    assert mmagic_to_basicsr("basic_module.1.basic_module.0.conv.bias") == "basic_module.1.basic_module.0.bias"
    for name in ("conv_last.weight", "fusion.bias", "spynet.basic_module.0.basic_module.8.weight"):
        assert mmagic_to_basicsr(name) == name


def test_mismatch_lists_keys_and_names_file(tmp_path):
    path = save_safetensors(small(0, num_block=1), tmp_path / "one_block.safetensors")
    with pytest.raises(WeightsError) as err:
        load_weights(small(0, num_block=2), path)
    msg = str(err.value)
    assert "one_block.safetensors" in msg and "missing keys" in msg
    assert "backward_trunk.main.2.1.conv1.weight" in msg

    with pytest.raises(WeightsError) as err:
        load_weights(small(0, num_block=1), save_safetensors(small(0, num_block=2), tmp_path / "two.safetensors"))
    assert "unexpected keys" in str(err.value) and "forward_trunk.main.2.1.conv2.bias" in str(err.value)

    with pytest.raises(WeightsError) as err:
        load_weights(small(0, num_feat=8), save_safetensors(small(0, num_feat=16), tmp_path / "wide.safetensors"))
    assert "shape mismatches" in str(err.value) and "fusion.weight" in str(err.value)

    # Non-strict: extra keys are fine, missing keys are kept from the model.
    load_weights(small(0, num_block=1), tmp_path / "two.safetensors", strict=False)


def test_missing_corrupt_and_unsafe_files(tmp_path):
    with pytest.raises(WeightsFileNotFoundError, match="nope.pth"):
        load_state(tmp_path / "nope.pth")

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(WeightsError, match="junk.pth"):
        load_state(junk)

    good = save_safetensors(small(0), tmp_path / "good.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(WeightsError, match="cut.safetensors.*safetensors"):
        load_state(cut)

    pth = export_basicsr(small(0), tmp_path / "good.pth")
    cut_pth = tmp_path / "cut.pth"
    cut_pth.write_bytes(pth.read_bytes()[:300])
    with pytest.raises(WeightsError, match="cut.pth"):
        load_state(cut_pth)

    torch.save({"params": {"w": torch.zeros(1)}, "extra": ModelConfig()}, tmp_path / "pickle.pth")
    with pytest.raises(WeightsError, match=r"pickle\.pth.*weights_only=True"):
        load_state(tmp_path / "pickle.pth")

    torch.save({"params": {"w": torch.zeros(1), "note": "x"}}, tmp_path / "mixed.pth")
    with pytest.raises(WeightsError, match="not tensors: note"):
        load_state(tmp_path / "mixed.pth")


def test_spynet_path_accepts_basicsr_file_without_buffers(tmp_path):
    torch.manual_seed(3)
    donor = small(3).spynet
    state = {k: v for k, v in donor.state_dict().items() if k not in ("mean", "std")}
    torch.save({"params": state}, tmp_path / "spynet.pth")
    model = BasicVSR(8, 1, spynet_path=str(tmp_path / "spynet.pth"))
    assert_same_state(model.spynet.state_dict(), donor.state_dict())
    # A full BasicVSR checkpoint also works: the spynet.* part is used.
    full = save_safetensors(small(4), tmp_path / "full.safetensors")
    model = BasicVSR(8, 1, spynet_path=str(full))
    assert_same_state(model.spynet.state_dict(), small(4).spynet.state_dict())


def test_edvr_path_ignores_reconstruction_layers(tmp_path):
    torch.manual_seed(5)
    donor = IconVSR(8, 1).edvr
    state = dict(donor.state_dict())
    state["reconstruction.0.conv1.weight"] = torch.zeros(8, 8, 3, 3)  # part of a full EDVR model
    state["conv_last.weight"] = torch.zeros(3, 64, 3, 3)
    torch.save({"params": state}, tmp_path / "edvr.pth")
    model = IconVSR(8, 1, edvr_path=str(tmp_path / "edvr.pth"))
    assert_same_state(model.edvr.state_dict(), donor.state_dict())
    del state["conv_first.weight"]
    torch.save({"params": state}, tmp_path / "edvr_bad.pth")
    with pytest.raises(WeightsError, match="(?s)edvr_bad.pth.*missing keys.*conv_first.weight"):
        IconVSR(8, 1, edvr_path=str(tmp_path / "edvr_bad.pth"))


def test_build_model_loads_init_weights(tmp_path):
    path = save_safetensors(small(7, num_block=2), tmp_path / "init.safetensors")
    model = build_model(ModelConfig(num_feat=8, num_block=2, init_weights=str(path)))
    assert_same_state(model.state_dict(), small(7, num_block=2).state_dict())
    with pytest.raises(WeightsError, match="init.safetensors"):
        build_model(ModelConfig(num_feat=8, num_block=3, init_weights=str(path)))
