"""EDVR and BasicVSR++ through every tool: a short multigrid training run (the centre-frame loss for EDVR),
then export (BasicSR .pth -> safetensors with the config), eval and upscale of the trained weights,
plus the FLOP counter and ``mgvsr schedule`` on the new configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import load_benchmark
import torch
import yaml
from PIL import Image

from mgvsr.cli import main
from mgvsr.config import ModelConfig, load_config
from mgvsr.flops import train_flops
from mgvsr.models import build_model
from mgvsr.models.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]

MODELS = {
    "edvr": {"name": "edvr", "num_feat": 8, "num_block": 1, "num_frame": 3, "deformable_groups": 2,
             "num_extract_block": 1, "head_feat": 8},
    "basicvsrpp": {"name": "basicvsrpp", "num_feat": 8, "num_block": 1, "head_feat": 8},
}


@pytest.fixture(scope="module")
def frames_root(tmp_path_factory) -> Path:
    """Two clips of 5 smooth moving 64x64 frames (PNG), LR (16x16) made on the fly (BI), and a folder
    ``lr`` of 3 frames of 16x16 as input for ``mgvsr upscale``."""
    root = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    for c in range(2):
        base = np.kron(rng.random((20, 20, 3)), np.ones((4, 4, 1)))  # 80x80
        folder = root / f"clip{c}"
        folder.mkdir()
        for t in range(5):
            Image.fromarray((base[t : t + 64, t : t + 64] * 255).astype(np.uint8)).save(folder / f"{t:04d}.png")
    small = root.parent / "lr_input"
    small.mkdir()
    for t in range(3):
        Image.fromarray((base[t : t + 64 : 4, t : t + 64 : 4] * 255).astype(np.uint8)).save(small / f"{t:04d}.png")
    return root


def _config(tmp_path: Path, frames_root: Path, model: dict) -> Path:
    sliding = model["name"] == "edvr"
    cfg = {
        "model": model,
        "data": {"train": {"kind": "frames", "root": str(frames_root)},
                 "val": {"kind": "frames", "root": str(frames_root), "max_frames": 2}, "num_workers": 0},
        "schedule": {"kind": "multigrid", "total_iters": 2, "num_frames": 3, "patch_size": 16, "batch_size": 1,
                     "spatial_stages": [16], "temporal_fractions": [1.0] if sliding else [0.67, 1.0]},  # T 2 -> 3
        "optim": {"lr": 1e-3, "fix_flow_iters": 1, "flow_lr_mult": 0.25},
        "train": {"name": model["name"], "out_dir": str(tmp_path / "runs"), "log_every": 1, "val_every": 2,
                  "save_every": 2, "tensorboard": False, "progress": False},
    }
    path = tmp_path / f"{model['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module", params=sorted(MODELS))
def trained(request, tmp_path_factory, frames_root) -> tuple[str, Path]:
    """A 2-step multigrid run of a tiny model (with validation); returns (name, run folder)."""
    from mgvsr.train import train

    name = request.param
    tmp_path = tmp_path_factory.mktemp(name)
    summary = train(load_config(_config(tmp_path, frames_root, MODELS[name])))
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"]) and np.isfinite(summary["val_psnr_y"])
    run = tmp_path / "runs" / name
    assert (run / "weights" / "model.safetensors").is_file()
    return name, run


def test_export_round_trip(trained, tmp_path):
    """safetensors -> BasicSR .pth -> safetensors (config inferred from the names) keeps every tensor."""
    name, run = trained
    weights = run / "weights" / "model.safetensors"
    assert main(["export", "--weights", str(weights), "--to", "basicsr", str(tmp_path / "net.pth")]) == 0
    assert main(["export", "--weights", str(tmp_path / "net.pth"), "--to", "safetensors",
                 str(tmp_path / "again.safetensors")]) == 0
    model = load_weights(build_model(ModelConfig(**MODELS[name])), tmp_path / "net.pth", strict=True)
    again = load_weights(build_model(ModelConfig(**MODELS[name])), tmp_path / "again.safetensors", strict=True)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, rtol=0, atol=0)


def test_eval_chunked_and_tiled(trained, frames_root, tmp_path, capsys):
    name, run = trained
    out = tmp_path / "res.json"
    rc = main(["eval", "--weights", str(run / "weights" / "model.safetensors"), "--data", f"frames:{frames_root}",
               "--device", "cpu", "--out", str(out), "--max-frames", "2", "--chunk", "1", "--tile", "12",
               "--tile-overlap", "4", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert data["model"]["name"] == name
    assert np.isfinite(data["results"][0]["channels"]["rgb"]["average"]["psnr"])


def test_upscale_frame_folder(trained, frames_root, tmp_path, capsys):
    """One 4x output PNG per input frame."""
    name, run = trained
    dst = tmp_path / "up"
    weights = run / "weights" / "model.safetensors"
    rc = main(["upscale", str(frames_root.parent / "lr_input"), str(dst), "--weights", str(weights),
               "--device", "cpu", "--chunk", "2", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    pngs = sorted(dst.glob("*.png"))
    assert len(pngs) == 3 and Image.open(pngs[0]).size == (64, 64)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_flop_counter_runs_on_the_new_models(name):
    cfg = ModelConfig(**MODELS[name])
    small, big = train_flops(cfg, 3, 32), train_flops(cfg, 3, 64)
    assert 0 < small < big
    assert big / small == pytest.approx(4.0, rel=0.1)  # convolutions scale with the pixel count


@pytest.mark.parametrize(
    "path",
    ["edvr_m_reds_fixed", "edvr_m_reds_multigrid", "basicvsr_m_reds_fixed", "basicvsr_m_reds_multigrid",
     "basicvsrpp_reds_fixed", "basicvsrpp_reds_multigrid", "basicvsrpp_vimeo_BI_fixed",
     "basicvsrpp_vimeo_BI_multigrid"],
)
def test_new_configs_load_and_schedule(path, capsys):
    cfg = load_config(ROOT / "configs" / f"{path}.yaml")
    assert main(["schedule", str(ROOT / "configs" / f"{path}.yaml"), "--cost", "pixels"]) == 0
    printed = capsys.readouterr().out
    if cfg.model.name == "edvr":
        assert "sliding-window model" in printed
        assert cfg.schedule.num_frames == cfg.model.num_frame == 5
    if path.endswith("multigrid"):
        assert "fewer pixels" in printed


def test_model_step_time_benchmark_smoke(tmp_path, capsys):
    """benchmarks/model_step_time.py at tiny sizes, one timed step: every schedule shape gets a median."""
    bench = load_benchmark("model_step_time")
    out = tmp_path / "steps.json"
    rc = bench.main([str(ROOT / "configs" / "edvr_m_reds_multigrid.yaml"), "model.num_feat=8", "model.num_block=1",
                     "model.deformable_groups=2", "model.num_extract_block=1", "model.head_feat=8",
                     "schedule.batch_size=1", "schedule.patch_size=16", "schedule.spatial_stages=[16]",
                     "--amp", "none", "--repeat", "1", "--no-tune", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["shapes"] == [[5, 16, 1]] and "machine" in data and data["command"].startswith("python ")
    timing = data["amp"]["none"]
    assert timing["median_step_s"]["T5_p16_b1"] > 0
    assert timing["projected_speedup"] == pytest.approx(1.0)  # one shape: the run is the fixed run
    assert data["flop_ratio"] == pytest.approx(1.0)
    assert "projected run" in capsys.readouterr().out
