"""The training engine: shapes follow the schedule, exact resume after SIGKILL, DDP == one big batch,
non-finite steps are skipped and stop the run with the last good checkpoint intact."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from mgvsr.config import load_config
from mgvsr.schedule import spec_at

ROOT = Path(__file__).resolve().parents[1]


def _smooth_frames(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """A small moving, textured scene: smooth noise shifted by one pixel per frame."""
    base = rng.random((h // 4 + 8, w // 4 + 8, 3))
    big = np.kron(base, np.ones((4, 4, 1)))
    frames = [big[t : t + h, t : t + w] for t in range(n)]
    return (np.stack(frames) * 255).astype(np.uint8)


def make_frames_dataset(root: Path, clips: int, frames: int, size: int = 96, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(clips):
        folder = root / f"clip{c}"
        folder.mkdir(parents=True)
        for t, frame in enumerate(_smooth_frames(rng, frames, size, size)):
            Image.fromarray(frame).save(folder / f"{t:04d}.png")
    return root


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    train = make_frames_dataset(base / "train", clips=3, frames=6, seed=1)
    val = make_frames_dataset(base / "val", clips=1, frames=4, seed=2)
    return train, val


def write_config(path: Path, train_root: Path, val_root: Path | None, out_dir: Path, **sections) -> Path:
    cfg = {
        "model": {"name": "basicvsr", "num_feat": 4, "num_block": 1},
        "data": {
            "train": {"kind": "frames", "root": str(train_root)},
            "num_workers": 0,
        },
        "schedule": {
            "kind": "multigrid", "total_iters": 12, "num_frames": 4, "patch_size": 24, "batch_size": 2,
            "spatial_stages": [16, 24], "temporal_fractions": [0.5, 1.0],
        },
        "optim": {"lr": 1e-3, "fix_flow_iters": 3},
        "train": {
            "name": "t", "out_dir": str(out_dir), "log_every": 1, "val_every": 0, "save_every": 4,
            "tensorboard": False, "progress": False, "seed": 3,
        },
    }
    if val_root is not None:
        cfg["data"]["val"] = {"kind": "frames", "root": str(val_root)}
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env(threads: int = 1) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return env


def _train_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mgvsr.cli", "train", str(config), *extra]


def _read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_every_step_has_the_scheduled_shape_and_run_writes_outputs(tmp_path, data_dirs):
    from mgvsr.train import train

    train_root, val_root = data_dirs
    cfg_path = write_config(tmp_path / "c.yaml", train_root, val_root, tmp_path / "runs", train={
        "name": "t", "out_dir": str(tmp_path / "runs"), "log_every": 1, "val_every": 6, "save_every": 4,
        "tensorboard": True, "progress": True, "seed": 3,
    })
    cfg = load_config(cfg_path)
    summary = train(cfg)
    run_dir = tmp_path / "runs" / "t"
    rows = _read_rows(run_dir / "train_log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    shapes_seen = set()
    for r in rows:
        spec = spec_at(cfg, int(r["step"]) - 1)
        assert (int(r["num_frames"]), int(r["patch_size"]), int(r["batch_size"])) == (
            spec.num_frames, spec.patch_size, spec.batch_size)
        assert float(r["lr"]) == pytest.approx(cfg.optim.lr * spec.lr_mult)
        shapes_seen.add((spec.num_frames, spec.patch_size))
    assert len(shapes_seen) == 4  # 2 spatial stages x 2 temporal steps
    val_rows = _read_rows(run_dir / "val_log.csv")
    assert [int(r["step"]) for r in val_rows] == [6, 12]
    for name in ("summary.json", "psnr_vs_time.png", "side_by_side.png", "val_metrics.json", "config.yaml"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "weights" / "model.safetensors").is_file()
    assert any((run_dir / "tb").iterdir())
    assert summary["steps"] == 12 and np.isfinite(summary["val_psnr_y"])
    assert len(list((run_dir / "checkpoints").glob("*.pt"))) == 3  # steps 4, 8, 12 (keep_last=3)


def test_resume_after_sigkill_is_bit_identical(tmp_path, data_dirs):
    train_root, _ = data_dirs
    sched = {"kind": "multigrid", "total_iters": 60, "num_frames": 4, "patch_size": 24, "batch_size": 2,
             "spatial_stages": [16, 24], "temporal_fractions": [0.5, 1.0]}
    train_cfg = {"name": "t", "log_every": 1, "val_every": 0, "save_every": 5, "tensorboard": False,
                 "progress": False, "seed": 3}
    full = write_config(tmp_path / "full.yaml", train_root, None, tmp_path / "full", schedule=sched,
                        train={**train_cfg, "out_dir": str(tmp_path / "full")})
    subprocess.run(_train_cmd(full), check=True, env=_env(), capture_output=True)

    crash = write_config(tmp_path / "crash.yaml", train_root, None, tmp_path / "crash", schedule=sched,
                         train={**train_cfg, "out_dir": str(tmp_path / "crash")})
    ckpt_dir = tmp_path / "crash" / "t" / "checkpoints"
    proc = subprocess.Popen(_train_cmd(crash), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list(ckpt_dir.glob("ckpt_*.pt")):
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(p.stem.split("_")[1]) for p in ckpt_dir.glob("ckpt_*.pt"))
    assert killed_at < 60, "the run finished before it could be killed"
    assert not (tmp_path / "crash" / "t" / "weights").exists()

    subprocess.run(_train_cmd(crash, "--resume", "auto"), check=True, env=_env(), capture_output=True)
    a = load_file(tmp_path / "full" / "t" / "weights" / "model.safetensors")
    b = load_file(tmp_path / "crash" / "t" / "weights" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = _read_rows(tmp_path / "crash" / "t" / "train_log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 61))  # no duplicated rows after the resume


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_ddp_two_processes_equal_one_process_with_double_batch(tmp_path, data_dirs):
    train_root, _ = data_dirs
    base = {"kind": "fixed", "total_iters": 4, "num_frames": 3, "patch_size": 16}
    train_cfg = {"name": "t", "log_every": 1, "val_every": 0, "save_every": 100, "tensorboard": False,
                 "progress": False, "seed": 5}
    single = write_config(tmp_path / "single.yaml", train_root, None, tmp_path / "single",
                          schedule={**base, "batch_size": 4},
                          train={**train_cfg, "out_dir": str(tmp_path / "single")},
                          optim={"lr": 1e-3, "fix_flow_iters": 2})
    ddp = write_config(tmp_path / "ddp.yaml", train_root, None, tmp_path / "ddp",
                       schedule={**base, "batch_size": 2},
                       train={**train_cfg, "out_dir": str(tmp_path / "ddp")},
                       optim={"lr": 1e-3, "fix_flow_iters": 2})
    subprocess.run(_train_cmd(single), check=True, env=_env(), capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "mgvsr.cli", "train", str(ddp)]
    result = subprocess.run(torchrun, env=_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    a = load_file(tmp_path / "single" / "t" / "weights" / "model.safetensors")
    b = load_file(tmp_path / "ddp" / "t" / "weights" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)
    # and accumulation: one process, batch 2, two micro-batches, is the same run again
    acc = write_config(tmp_path / "acc.yaml", train_root, None, tmp_path / "acc",
                       schedule={**base, "batch_size": 2},
                       train={**train_cfg, "out_dir": str(tmp_path / "acc")},
                       optim={"lr": 1e-3, "fix_flow_iters": 2, "accum_steps": 2})
    subprocess.run(_train_cmd(acc), check=True, env=_env(), capture_output=True)
    c = load_file(tmp_path / "acc" / "t" / "weights" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], c[key], rtol=1e-4, atol=1e-6, msg=key)


def test_non_finite_steps_are_skipped_then_stop(tmp_path, data_dirs, monkeypatch):
    import mgvsr.train as train_mod

    train_root, _ = data_dirs
    real_loss = train_mod.sr_loss
    calls = {"n": 0}

    def flaky_loss(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        # steps 3 and 4 (1-based) are bad once, then from step 9 on every step is bad
        if calls["n"] in (3, 9, 10, 11, 12):
            return loss * float("nan")
        return loss

    monkeypatch.setattr(train_mod, "sr_loss", flaky_loss)
    cfg_path = write_config(tmp_path / "c.yaml", train_root, None, tmp_path / "runs",
                            train={"name": "t", "out_dir": str(tmp_path / "runs"), "log_every": 1,
                                   "val_every": 0, "save_every": 4, "tensorboard": False, "progress": False,
                                   "max_bad_steps": 3})
    cfg = load_config(cfg_path)
    with pytest.raises(train_mod.NonFiniteError, match="last good checkpoint is intact"):
        train_mod.train(cfg)
    rows = _read_rows(tmp_path / "runs" / "t" / "train_log.csv")
    assert int(rows[-1]["skipped"]) == 4  # step 3, then 9, 10, 11 -> stop after the third in a row
    ckpts = sorted((tmp_path / "runs" / "t" / "checkpoints").glob("ckpt_*.pt"))
    assert [int(p.stem.split("_")[1]) for p in ckpts] == [4, 8]
    state = torch.load(ckpts[-1], weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_fresh_run_refuses_to_overwrite_an_existing_run(tmp_path, data_dirs):
    from mgvsr.train import train

    train_root, _ = data_dirs
    cfg_path = write_config(tmp_path / "c.yaml", train_root, None, tmp_path / "runs",
                            schedule={"kind": "fixed", "total_iters": 2, "num_frames": 2, "patch_size": 16,
                                      "batch_size": 1},
                            train={"name": "t", "out_dir": str(tmp_path / "runs"), "save_every": 1,
                                   "val_every": 0, "tensorboard": False, "progress": False})
    train(load_config(cfg_path))
    before = sorted(p.name for p in (tmp_path / "runs" / "t" / "checkpoints").iterdir())
    with pytest.raises(RuntimeError, match="already holds checkpoints.*--resume auto"):
        train(load_config(cfg_path))
    assert sorted(p.name for p in (tmp_path / "runs" / "t" / "checkpoints").iterdir()) == before
    summary = train(load_config(cfg_path, ["train.resume=auto"]))  # nothing left to do: re-reports
    assert summary["steps"] == 2
