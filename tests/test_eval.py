"""Evaluation protocols, checked against PSNR/SSIM computed by hand on constant frames.

Constant frames make every number closed-form: for constant predictions ``a`` and ground truth ``b``
(uint8 levels) PSNR = 10 log10(255^2 / (a - b)^2), on Y the difference is scaled by 219/255 (BT.601
limited range), and SSIM = (2ab + C1) / (a^2 + b^2 + C1) since all variances are zero.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mgvsr.config import DatasetConfig
from mgvsr.data import build_dataset, iter_clips
from mgvsr.evaluate import write_results
from mgvsr.evaluation import PROTOCOLS, bicubic_upscaler, model_upscaler, score_clips

C1 = (0.01 * 255) ** 2


def psnr_const(a: float, b: float, y: bool = False) -> float:
    diff = (a - b) * (219.0 / 255.0 if y else 1.0)
    return 10 * math.log10(255.0**2 / diff**2)


def ssim_const(a: float, b: float, y: bool = False) -> float:
    if y:
        a, b = 16 + 219 * a / 255, 16 + 219 * b / 255
    return (2 * a * b + C1) / (a * a + b * b + C1)


class ConstantModel(nn.Module):
    """Ignores the input: every output pixel of frame t is ``values[t]`` (or ``value``), x4 size."""

    def __init__(self, value: float = 0.5, by_position: bool = False):
        super().__init__()
        self.value = value
        self.by_position = by_position
        self.dummy = nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = x.shape
        out = x.new_full((b, t, c, 4 * h, 4 * w), self.value)
        if self.by_position:  # frame t of the *given* sequence gets t / 10
            out = out * 0 + torch.arange(t, dtype=x.dtype).view(1, t, 1, 1, 1) / 10
        return out


def write_frames(folder: Path, values: list[int], size: tuple[int, int], name=lambda i: f"{i:08d}.png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(values):
        Image.fromarray(np.full((*size, 3), v, np.uint8)).save(folder / name(i))


def vid4_fixture(root: Path) -> dict[str, list[int]]:
    """Two clips of different lengths, 32x32 GT with 8x8 LR, constant frames."""
    clips = {"calendar": [100, 110, 120], "walk": [90, 140]}
    for clip, values in clips.items():
        write_frames(root / "GT" / clip, values, (32, 32))
        write_frames(root / "BIx4" / clip, values, (8, 8))
    return clips


def test_vid4_protocol_matches_hand_computation(tmp_path):
    clips = vid4_fixture(tmp_path)
    ds = build_dataset(DatasetConfig(kind="vid4", root=str(tmp_path)))
    result = score_clips(model_upscaler(ConstantModel(0.5)), iter_clips(ds), PROTOCOLS["vid4"])
    # 0.5 * 255 = 127.5 rounds (half to even) to 128.
    assert list(result.scores) == ["y"]
    per_clip = {c: np.mean([psnr_const(128, v, y=True) for v in vals]) for c, vals in clips.items()}
    means = result.scores["y"].clip_means()
    for clip in clips:
        assert means[clip]["psnr"] == pytest.approx(per_clip[clip], abs=1e-9)
        assert means[clip]["frames"] == len(clips[clip])
    # Mean over clips of per-clip means (not over all 5 frames).
    assert result.scores["y"].average()["psnr"] == pytest.approx(np.mean(list(per_clip.values())), abs=1e-9)
    expected_ssim = np.mean([np.mean([ssim_const(128, v, y=True) for v in vals]) for vals in clips.values()])
    assert result.scores["y"].average()["ssim"] == pytest.approx(expected_ssim, abs=1e-9)


def test_reds4_protocol_is_rgb_all_frames(tmp_path):
    values = {"000": [60, 70], "011": [200], "015": [128, 130, 131], "020": [10]}
    for clip, vals in values.items():
        write_frames(tmp_path / "train_sharp" / clip, vals, (16, 16))
        write_frames(tmp_path / "train_sharp_bicubic" / "X4" / clip, vals, (4, 4))
    write_frames(tmp_path / "train_sharp" / "001", [5], (16, 16))  # not in REDS4: must be skipped
    write_frames(tmp_path / "train_sharp_bicubic" / "X4" / "001", [5], (4, 4))
    ds = build_dataset(DatasetConfig(kind="reds", root=str(tmp_path), split="REDS4"))
    result = score_clips(model_upscaler(ConstantModel(0.2)), iter_clips(ds), PROTOCOLS["reds4"])
    pred = 51  # 0.2 * 255 = 51.0
    assert result.scores["rgb"].clips == ["000", "011", "015", "020"]
    expected = np.mean([np.mean([psnr_const(pred, v) for v in vals]) for vals in values.values()])
    assert result.scores["rgb"].average()["psnr"] == pytest.approx(expected, abs=1e-9)
    assert "y" not in result.scores


def vimeo_fixture(root: Path) -> list[int]:
    values = [10, 20, 30, 40, 50, 60, 70]  # im1..im7; the centre frame im4 is 40
    for seq in ("00001/0001", "00002/0005"):
        write_frames(root / "sequences" / seq, values, (16, 16), name=lambda i: f"im{i + 1}.png")
        write_frames(root / "sequences_BIx4" / seq, values, (4, 4), name=lambda i: f"im{i + 1}.png")
    (root / "sep_testlist.txt").write_text("00001/0001\n00002/0005\n")
    return values


def test_vimeo_protocol_scores_centre_frame_with_flip(tmp_path):
    values = vimeo_fixture(tmp_path)
    ds = build_dataset(DatasetConfig(kind="vimeo", root=str(tmp_path), split="test"))
    protocol = PROTOCOLS["vimeo-t"]
    assert protocol.center_frame and protocol.flip_seq and protocol.channels == ("y",)
    result = score_clips(model_upscaler(ConstantModel(by_position=True), flip_seq=True), iter_clips(ds), protocol)
    # 14-frame input [clip, reversed clip]: frame 3 is at positions 3 and 10 -> mean 0.65 -> 165.75 -> 166.
    means = result.scores["y"].clip_means()
    assert set(means) == {"00001/0001", "00002/0005"}
    for row in means.values():
        assert row["frames"] == 1
        assert row["psnr"] == pytest.approx(psnr_const(166, values[3], y=True), abs=1e-9)
    # Without flip the centre frame's output is 0.3 -> 76.5 -> 76 (half to even).
    plain = score_clips(model_upscaler(ConstantModel(by_position=True)), iter_clips(ds), protocol)
    assert plain.scores["y"].average()["psnr"] == pytest.approx(psnr_const(76, 40, y=True), abs=1e-9)


def test_generic_protocol_reports_rgb_and_y_and_saves_frames(tmp_path):
    write_frames(tmp_path / "data" / "hr" / "clipA", [100, 100], (16, 16))
    write_frames(tmp_path / "data" / "lr" / "clipA", [100, 100], (4, 4))
    ds = build_dataset(DatasetConfig(kind="frames", root=str(tmp_path / "data")))
    out = tmp_path / "frames"
    result = score_clips(model_upscaler(ConstantModel(0.6)), iter_clips(ds), PROTOCOLS["generic"], save_dir=out)
    assert list(result.scores) == ["rgb", "y"]
    assert result.scores["rgb"].average()["psnr"] == pytest.approx(psnr_const(153, 100), abs=1e-9)
    assert result.scores["y"].average()["psnr"] == pytest.approx(psnr_const(153, 100, y=True), abs=1e-9)
    saved = sorted((out / "clipA").iterdir())
    assert [p.name for p in saved] == ["00000000.png", "00000001.png"]
    assert np.asarray(Image.open(saved[0])).shape == (16, 16, 3)
    assert (np.asarray(Image.open(saved[0])) == 153).all()


def test_bicubic_baseline_on_constant_frames(tmp_path):
    vid4_fixture(tmp_path)
    ds = build_dataset(DatasetConfig(kind="vid4", root=str(tmp_path)))
    result = score_clips(bicubic_upscaler(4), iter_clips(ds), PROTOCOLS["vid4"], method="bicubic")
    # Bicubic weights sum to one, so constant LR frames up-sample to the same constant: exact match.
    assert result.scores["y"].average()["psnr"] == float("inf")
    assert result.scores["y"].average()["ssim"] == pytest.approx(1.0)


def test_bicubic_upscaler_matches_pil_in_the_interior():
    # PIL's BICUBIC is the same Keys kernel (a = -0.5); only border handling differs.
    rng = np.random.default_rng(0)
    lr = rng.integers(0, 256, (1, 8, 10, 3), dtype=np.uint8)
    ours = bicubic_upscaler(4)(lr)[0].numpy().astype(np.float64)
    pil = np.stack(
        [np.asarray(Image.fromarray(lr[0, :, :, c].astype(np.float32), "F").resize((40, 32), Image.BICUBIC)) for c in range(3)],
        axis=-1,
    )
    interior = (slice(8, -8), slice(8, -8))
    assert np.abs(ours[interior] - np.clip(np.round(pil[interior]), 0, 255)).max() <= 1


def test_cli_eval_writes_json_and_csv(tmp_path, capsys):
    from mgvsr.cli import main
    from mgvsr.config import ModelConfig
    from mgvsr.export import export_weights
    from mgvsr.models import build_model
    from mgvsr.models.weights import export_basicsr

    vid4_fixture(tmp_path / "vid4")
    model = build_model(ModelConfig(num_feat=4, num_block=1))
    export_basicsr(model, tmp_path / "tiny.pth")
    export_weights(tmp_path / "tiny.pth", tmp_path / "tiny.safetensors", "safetensors")
    out = tmp_path / "res" / "results.json"
    rc = main([
        "eval", "--weights", str(tmp_path / "tiny.safetensors"), "--data", f"vid4:{tmp_path / 'vid4'}",
        "--bicubic", "--out", str(out), "--device", "cpu", "--chunk", "2", "--no-progress",
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "calendar" in printed and "Average" in printed and "PSNR-Y" in printed
    data = json.loads(out.read_text())
    assert data["protocol"] == "vid4" and data["model"]["num_feat"] == 4
    methods = [r["method"] for r in data["results"]]
    assert methods == ["tiny.safetensors", "bicubic"]
    model_avg = data["results"][0]["channels"]["y"]["average"]["psnr"]
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    avg_row = [r for r in rows if r["method"] == "tiny.safetensors" and r["clip"] == "Average"][0]
    assert float(avg_row["psnr"]) == pytest.approx(model_avg, abs=1e-5)
    assert int(avg_row["frames"]) == 5
    assert {r["clip"] for r in rows} == {"calendar", "walk", "Average"}


def test_cli_eval_errors(tmp_path, capsys):
    from mgvsr.cli import main

    assert main(["eval", "--data", f"vid4:{tmp_path}", "--bicubic", "--no-progress"]) == 2
    assert "GT" in capsys.readouterr().err  # names the missing folder
    assert main(["eval", "--data", "nonsense", "--bicubic"]) == 2
    assert "KIND:ROOT" in capsys.readouterr().err
    vid4_fixture(tmp_path)
    missing = tmp_path / "nope.safetensors"
    assert main(["eval", "--weights", str(missing), "--data", f"vid4:{tmp_path}", "--device", "cpu"]) == 2
    assert "nope.safetensors" in capsys.readouterr().err


def test_write_results_handles_identical_frames(tmp_path):
    vid4_fixture(tmp_path)
    ds = build_dataset(DatasetConfig(kind="vid4", root=str(tmp_path)))
    result = score_clips(bicubic_upscaler(4), iter_clips(ds), PROTOCOLS["vid4"], method="bicubic")
    csv_path = write_results([result], tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["results"][0]["channels"]["y"]["average"]["psnr"] == "inf"
    assert "inf" in csv_path.read_text()


def test_infer_model_config_reads_the_head_width():
    from mgvsr.config import ModelConfig
    from mgvsr.models.loading import infer_model_config
    from mgvsr.models import build_model

    state = build_model(ModelConfig(num_feat=8, num_block=2, head_feat=12)).state_dict()
    cfg = infer_model_config(state)
    assert (cfg.name, cfg.num_feat, cfg.num_block, cfg.head_feat) == ("basicvsr", 8, 2, 12)


class CentreFrameModel(nn.Module):
    """A sliding-window stand-in: ``forward`` gives the window's centre frame only, ``forward_clip``
    one output per input frame (frame t gets the value t / 10)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward_clip(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = x.shape
        return torch.arange(t, dtype=x.dtype).view(1, t, 1, 1, 1).expand(b, t, c, 4 * h, 4 * w) / 10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_clip(x)[:, x.shape[1] // 2]


def test_runner_calls_forward_clip_of_sliding_window_models():
    from mgvsr.evaluation import InferenceOptions, run_clip

    clip = torch.rand(5, 3, 6, 7)
    for opts in (InferenceOptions(), InferenceOptions(chunk=2, chunk_overlap=1), InferenceOptions(tile=4, tile_overlap=1)):
        out = run_clip(CentreFrameModel(), clip, opts)
        assert out.shape == (5, 3, 24, 28)
    whole = run_clip(CentreFrameModel(), clip)
    assert torch.allclose(whole[:, 0, 0, 0], torch.arange(5, dtype=torch.float32) / 10)
