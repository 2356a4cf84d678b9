"""``mgvsr export`` and reading weights for inference (config from metadata / checkpoint / shapes)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from mgvsr.cli import main
from mgvsr.config import ModelConfig
from mgvsr.export import export_weights
from mgvsr.models import build_model
from mgvsr.models.loading import METADATA_KEY, build_for_inference, infer_model_config, read_model_config_metadata
from mgvsr.models.weights import WeightsError, load_weights

TINY = ModelConfig(name="basicvsr", num_feat=4, num_block=2)


def shifted(state: dict, delta: float) -> dict:
    return {k: v + delta if v.is_floating_point() else v.clone() for k, v in state.items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


@pytest.fixture
def checkpoint(tmp_path) -> tuple[Path, dict, dict]:
    """A training checkpoint as the trainer writes it: model, ema, config, step."""
    model = build_model(TINY)
    raw, ema = model.state_dict(), shifted(model.state_dict(), 0.01)
    path = tmp_path / "ckpt_000100.pth"
    torch.save({"model": raw, "ema": ema, "config": {"model": dataclasses.asdict(TINY)}, "step": 100}, path)
    return path, raw, ema


def test_checkpoint_to_basicsr_loads_back_strictly(tmp_path, checkpoint):
    path, raw, ema = checkpoint
    out = export_weights(path, tmp_path / "net.pth", "basicsr")
    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert set(saved) == {"params", "params_ema"}
    assert_same_state(saved["params"], raw)
    assert_same_state(saved["params_ema"], ema)
    for key, expected in (("params", raw), ("params_ema", ema)):
        model = load_weights(build_model(TINY), out, strict=True, key=key)
        assert_same_state(model.state_dict(), expected)


def test_checkpoint_without_ema_gives_params_only(tmp_path):
    model = build_model(TINY)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict(), "ema": None, "config": {"model": dataclasses.asdict(TINY)}, "step": 1}, path)
    saved = torch.load(export_weights(path, tmp_path / "net.pth", "basicsr"), weights_only=True)
    assert set(saved) == {"params"}


def test_basicsr_to_safetensors_carries_the_config(tmp_path, checkpoint):
    path, raw, ema = checkpoint
    basicsr = export_weights(path, tmp_path / "net.pth", "basicsr")
    ours = export_weights(basicsr, tmp_path / "net.safetensors", "safetensors")
    cfg = read_model_config_metadata(ours)
    assert (cfg.name, cfg.num_feat, cfg.num_block) == ("basicvsr", 4, 2)
    model, built_cfg = build_for_inference(ours, "cpu")  # --weights alone is enough
    assert built_cfg == cfg
    assert_same_state(model.state_dict(), ema)  # EMA weights are the ones exported by default
    raw_out = export_weights(basicsr, tmp_path / "raw.safetensors", "safetensors", use_ema=False)
    from safetensors import safe_open

    with safe_open(str(raw_out), framework="pt") as f:
        assert f.metadata()["mgvsr_weights"] == "raw"
        assert json.loads(f.metadata()[METADATA_KEY])["num_block"] == 2
    # A plain BasicSR file (no metadata) reads the same through shape inference.
    model2, cfg2 = build_for_inference(basicsr, "cpu")
    assert (cfg2.num_feat, cfg2.num_block) == (4, 2)
    assert_same_state(model2.state_dict(), ema)


def test_infer_model_config_from_names_and_shapes():
    state = build_model(ModelConfig(num_feat=6, num_block=3)).state_dict()
    cfg = infer_model_config(state)
    assert (cfg.name, cfg.num_feat, cfg.num_block) == ("basicvsr", 6, 3)
    # MMagic names (generator. prefix, *_resblocks) are understood too.
    mmagic = {"generator." + k.replace("backward_trunk", "backward_resblocks"): v for k, v in state.items()}
    assert infer_model_config(mmagic).num_block == 3
    icon = build_model(ModelConfig(name="iconvsr", num_feat=8, num_block=1, temporal_padding=3)).state_dict()
    cfg = infer_model_config(icon)
    assert (cfg.name, cfg.num_feat, cfg.num_block, cfg.temporal_padding) == ("iconvsr", 8, 1, 3)
    with pytest.raises(WeightsError, match="cannot tell the model"):
        infer_model_config({"conv.weight": torch.zeros(1)})


def test_cli_export_and_errors(tmp_path, checkpoint, capsys):
    path, raw, ema = checkpoint
    out = tmp_path / "sub" / "model.safetensors"
    assert main(["export", "--weights", str(path), "--to", "safetensors", str(out)]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out

    assert main(["export", "--weights", str(tmp_path / "missing.pth"), "--to", "basicsr", str(tmp_path / "x.pth")]) == 2
    assert "missing.pth" in capsys.readouterr().err

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00" * 64)
    assert main(["export", "--weights", str(garbage), "--to", "basicsr", str(tmp_path / "x.pth")]) == 2
    assert "garbage.pth" in capsys.readouterr().err

    # Wrong depth override: refused before anything is written.
    assert main(["export", "--weights", str(out), "--to", "basicsr", str(tmp_path / "x.pth"), "--num-block", "5"]) == 2
    assert "model.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()

    assert main(["export", "--weights", str(out), "--to", "safetensors", str(out)]) == 2
    assert "overwrite the input" in capsys.readouterr().err


class NotATensor:
    pass


def test_arbitrary_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": NotATensor()}, "config": {}}, path)
    from mgvsr.models.weights import WeightsError

    with pytest.raises(WeightsError, match="refused to load.*weights_only"):
        export_weights(path, tmp_path / "o.safetensors", "safetensors")
