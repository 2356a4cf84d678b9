"""The training engine: shapes follow the schedule, exact resume after SIGKILL, DDP == one big batch,
non-finite steps are skipped and stop the run with the last good checkpoint intact."""

from __future__ import annotations

import csv
import json
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


@pytest.fixture(autouse=True)
def _one_thread():
    """In-process runs use one thread, like the subprocess runs (OMP_NUM_THREADS=1): on a small shared
    CPU, extra threads of a tiny model only wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    scores = json.loads((run_dir / "val_metrics.json").read_text())
    below = {clip for clip, s in scores["mgvsr"]["clips"].items() if s["psnr_y"] < scores["bicubic"]["clips"][clip]["psnr_y"]}
    assert {row["clip"] for row in summary["clips_below_bicubic"]} == below


def test_clips_below_bicubic_are_listed_worst_first():
    from mgvsr.report import clips_below

    def scores(**clips):
        return {"clips": {name: {"psnr_y": v} for name, v in clips.items()}, "average": {}}

    ours, bicubic = scores(a=27.0, b=22.0, c=25.9, d=30.0), scores(a=26.0, b=26.5, c=26.0, d=30.5)
    assert [(r["clip"], r["psnr_y"], r["reference_psnr_y"]) for r in clips_below(ours, bicubic)] == [
        ("b", 22.0, 26.5), ("d", 30.0, 30.5), ("c", 25.9, 26.0)]
    assert clips_below(scores(a=27.0), bicubic) == []


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


# ---- stop requests ---------------------------------------------------------------------------------

# The cheapest run (SPyNet's cost dominates a step of the tiny model): 8 steps of 2 frames, 16x16, batch 1.
SMALL_FIXED = {"kind": "fixed", "total_iters": 8, "num_frames": 2, "patch_size": 16, "batch_size": 1}
SMALL_MODEL = {"name": "basicvsr", "num_feat": 4, "num_block": 1, "head_feat": 4}


def _assert_same_weights(a_path: Path, b_path: Path) -> None:
    a, b = load_file(a_path), load_file(b_path)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _ckpt_steps(run_dir: Path) -> list[int]:
    return [int(p.stem.split("_")[1]) for p in sorted((run_dir / "checkpoints").glob("ckpt_*.pt"))]


def test_sigint_saves_the_step_exits_0_and_resume_from_a_moved_root_is_bit_identical(
        tmp_path, data_dirs, monkeypatch, capsys):
    import shutil

    import mgvsr.train as train_mod
    from mgvsr.cli import main

    train_root, _ = data_dirs
    sections = {"model": SMALL_MODEL, "schedule": SMALL_FIXED, "optim": {"lr": 1e-3, "fix_flow_iters": 2}}
    train_cfg = {"name": "t", "log_every": 1, "val_every": 0, "save_every": 100, "tensorboard": False,
                 "progress": False, "seed": 3}
    full = write_config(tmp_path / "full.yaml", train_root, None, tmp_path / "full",
                        train={**train_cfg, "out_dir": str(tmp_path / "full")}, **sections)
    train_mod.train(load_config(full))

    # The first SIGINT arrives during the 3rd step: that step finishes and is saved, and the command
    # returns 0 with a message instead of a traceback.
    real_loss, calls = train_mod.sr_loss, {"n": 0}

    def loss_then_sigint(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_mod, "sr_loss", loss_then_sigint)
    stopped = write_config(tmp_path / "stopped.yaml", train_root, None, tmp_path / "stopped",
                           train={**train_cfg, "out_dir": str(tmp_path / "stopped")}, **sections)
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest itself runs in the background
    assert main(["train", str(stopped)]) == 0
    out = capsys.readouterr().out
    assert "stopped by SIGINT after step 3" in out and "--resume auto" in out
    run_dir = tmp_path / "stopped" / "t"
    assert _ckpt_steps(run_dir) == [3]
    assert not (run_dir / "weights").exists()
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored

    # Moving the dataset does not block the resume, and the result is the uninterrupted run's.
    monkeypatch.setattr(train_mod, "sr_loss", real_loss)
    moved = shutil.copytree(train_root, tmp_path / "moved_train")
    train_mod.train(load_config(stopped, ["train.resume=auto", f"data.train.root={moved}"]))
    _assert_same_weights(tmp_path / "full" / "t" / "weights" / "model.safetensors",
                         run_dir / "weights" / "model.safetensors")
    assert [int(r["step"]) for r in _read_rows(run_dir / "train_log.csv")] == list(range(1, 9))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_ddp(config: Path, *extra: str, world: int = 2) -> list[subprocess.Popen]:
    """``world`` processes of ``mgvsr train`` joined by env:// rendezvous (what torchrun would set),
    started directly so that the test can signal one of them."""
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = _env()
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen(_train_cmd(config, *extra), env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float = 180) -> list[tuple[int, str, str]]:
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        results.append((proc.returncode, out, err))
    return results


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or not torch.distributed.is_available(),
                    reason="needs POSIX signals and torch.distributed")
def test_ddp_sigterm_to_one_rank_stops_both_at_the_same_step_and_resume_is_bit_identical(tmp_path, data_dirs):
    train_root, _ = data_dirs
    sched = {**SMALL_FIXED, "total_iters": 10}
    train_cfg = {"name": "t", "log_every": 1, "val_every": 0, "save_every": 1000, "tensorboard": False,
                 "progress": False, "seed": 4}
    configs = {name: write_config(tmp_path / f"{name}.yaml", train_root, None, tmp_path / name, schedule=sched,
                                  train={**train_cfg, "out_dir": str(tmp_path / name)},
                                  model=SMALL_MODEL, optim={"lr": 1e-3, "fix_flow_iters": 2})
               for name in ("full", "stopped")}
    full_procs = _launch_ddp(configs["full"])  # runs while the other run starts: both fit on 2 cores
    procs = _launch_ddp(configs["stopped"])
    log = tmp_path / "stopped" / "t" / "train_log.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(_read_rows(log)) >= 2):
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.005)
    procs[1].send_signal(signal.SIGTERM)  # one rank only: rank 0 learns of it through the all-reduce
    results = _finish(procs)
    for rank, (code, out, err) in enumerate(results):
        assert code == 0, (rank, err[-3000:])
    run_dir = tmp_path / "stopped" / "t"
    (stop_step,) = _ckpt_steps(run_dir)  # exactly one checkpoint: the stop's, written once
    assert stop_step < 10, "the run finished before the signal arrived"
    assert f"rank 1: stopped by SIGTERM after step {stop_step};" in results[1][1]
    assert f"rank 0: stopped by a signal to another rank after step {stop_step};" in results[0][1]
    assert not (run_dir / "weights").exists()
    assert all(code == 0 for code, _, _ in _finish(full_procs))

    results = _finish(_launch_ddp(configs["stopped"], "--resume", "auto"))
    assert all(code == 0 for code, _, _ in results), [err[-2000:] for _, _, err in results]
    _assert_same_weights(tmp_path / "full" / "t" / "weights" / "model.safetensors",
                         run_dir / "weights" / "model.safetensors")


# ---- resume: EMA, inside the flow-freeze window, from a cache ----------------------------------------


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory, data_dirs):
    """A finished 8-step run with EMA on, the flow network frozen for the first 5 steps, and its
    checkpoints of steps 2, 4, 6, 8 kept. Its data has LR frames on disk (``hr/`` + ``lr/``), so that a
    cache of it holds exactly the same LR (LR made on the fly degrades training crops, a cache whole frames)."""
    from mgvsr.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("ema")
    train_root = make_frames_dataset(base / "data" / "hr", clips=3, frames=6, seed=1)
    for png in train_root.glob("*/*.png"):
        (base / "data" / "lr" / png.parent.name).mkdir(parents=True, exist_ok=True)
        Image.open(png).resize((24, 24), Image.BICUBIC).save(base / "data" / "lr" / png.parent.name / png.name)
    train_root = base / "data"
    path = write_config(base / "c.yaml", train_root, None, base / "runs", model=SMALL_MODEL, schedule=SMALL_FIXED,
                        optim={"lr": 1e-3, "fix_flow_iters": 5, "ema_decay": 0.9},
                        train={"name": "t", "out_dir": str(base / "runs"), "log_every": 1, "val_every": 0,
                               "save_every": 2, "keep_last": 10, "tensorboard": False, "progress": False,
                               "seed": 7})
    summary = train(load_config(path))
    torch.set_num_threads(threads)
    return path, base / "runs" / "t", summary, train_root


def _resume_into(tmp_path: Path, config: Path, ckpt: Path, *overrides: str) -> Path:
    """Resume ``ckpt`` to the end in a new run folder; return that folder."""
    from mgvsr.train import train

    train(load_config(config, [f"train.out_dir={tmp_path / 'resumed'}", f"train.resume={ckpt}", *overrides]))
    return tmp_path / "resumed" / "t"


def test_ema_is_trained_checkpointed_saved_and_resumed_bit_identical(tmp_path, ema_run):
    config, run_dir, summary, _ = ema_run
    weights = run_dir / "weights"
    assert summary["weights"] == str(weights / "model_ema.safetensors")
    model, ema = load_file(weights / "model.safetensors"), load_file(weights / "model_ema.safetensors")
    assert model.keys() == ema.keys() and any(not torch.equal(model[k], ema[k]) for k in model)
    state = torch.load(run_dir / "checkpoints" / "ckpt_00000006.pt", weights_only=True)
    assert state["ema"] is not None and state["ema"].keys() == state["model"].keys()

    resumed = _resume_into(tmp_path, config, run_dir / "checkpoints" / "ckpt_00000006.pt")
    for name in ("model.safetensors", "model_ema.safetensors"):
        _assert_same_weights(weights / name, resumed / "weights" / name)


def test_resume_inside_the_flow_freeze_window_from_a_cache_is_bit_identical(tmp_path, ema_run):
    from mgvsr.cli import main
    from mgvsr.train import build_learner

    config, run_dir, _, train_root = ema_run
    ckpts = run_dir / "checkpoints"
    initial = build_learner(load_config(config), torch.device("cpu")).model.state_dict()
    at_2 = torch.load(ckpts / "ckpt_00000002.pt", weights_only=True)["model"]
    at_6 = torch.load(ckpts / "ckpt_00000006.pt", weights_only=True)["model"]
    flow = [k for k in initial if k.startswith("spynet.")]
    assert flow and all(torch.equal(at_2[k], initial[k]) for k in flow)  # step 2 is inside the window
    assert any(not torch.equal(at_6[k], initial[k]) for k in flow)  # ... step 6 after it

    # Switching from the frame folders to a packed cache of them does not block the resume.
    cache = tmp_path / "cache"
    assert main(["prepare", "--cache", str(cache), "--kind", "frames", "--root", str(train_root)]) == 0
    resumed = _resume_into(tmp_path, config, ckpts / "ckpt_00000002.pt", f"data.train.cache={cache}")
    for name in ("model.safetensors", "model_ema.safetensors"):
        _assert_same_weights(run_dir / "weights" / name, resumed / "weights" / name)


@pytest.mark.parametrize("override", [
    "data.train.root=/moved/train",
    "data.train.cache=/somewhere/cache",
    "data.train.in_memory=true",
    "model.spynet_weights=/moved/spynet.pth",
    "model.edvr_weights=/moved/edvr.pth",
    "model.init_weights=/other/start.safetensors",
    "train.out_dir=/elsewhere",
    "train.val_every=7",
    "data.num_workers=2",
])
def test_resume_accepts_changes_of_where_things_are(override):
    from mgvsr.config import to_dict
    from mgvsr.train import check_resumable

    before = ["model.spynet_weights=/a/spynet.pth", "model.edvr_weights=/a/edvr.pth", "data.train.root=/a/train"]
    saved = {"step": 4, "config": to_dict(load_config(None, before))}
    check_resumable(saved, load_config(None, before + [override]), Path("ckpt_00000004.pt"))


@pytest.mark.parametrize("override, needle", [
    ("model.num_feat=8", "model.num_feat: 64 -> 8"),
    ("model.name=iconvsr", "model.name"),
    ("model.spynet_weights=null", "model.spynet_weights"),  # pretrained flow vs from scratch: another recipe
    ("schedule.kind=multigrid", "schedule.kind"),
    ("schedule.total_iters=1000", "schedule.total_iters"),
    ("optim.lr=1e-3", "optim.lr"),
    ("optim.ema_decay=0.999", "optim.ema_decay"),
    ("train.seed=1", "train.seed"),
    ("data.train.kind=reds", "data.train.kind"),
    ("data.use_flip=false", "data.use_flip"),
])
def test_resume_refuses_a_different_experiment(override, needle):
    from mgvsr.config import to_dict
    from mgvsr.train import ResumeError, check_resumable

    before = ["model.spynet_weights=/a/spynet.pth", "data.train.root=/a/train"]
    saved = {"step": 4, "config": to_dict(load_config(None, before))}
    with pytest.raises(ResumeError, match="ckpt_00000004.pt was written by a run with a different config") as info:
        check_resumable(saved, load_config(None, before + [override]), Path("ckpt_00000004.pt"))
    assert needle in str(info.value)


# ---- fp16 ----------------------------------------------------------------------------------------


def test_fp16_overflow_is_left_to_the_scaler_and_non_finite_losses_stop_the_run(tmp_path, data_dirs, monkeypatch):
    """train.amp=fp16 with the real GradScaler. CPU autocast to fp16 works but takes the slow
    convolution path (~25x), so the forward runs in fp32 here and the overflow is provoked by scale."""
    import contextlib

    import mgvsr.train as train_mod

    train_root, _ = data_dirs
    monkeypatch.setattr(train_mod, "autocast_context", lambda device, amp: contextlib.nullcontext())
    real_loss, calls = train_mod.sr_loss, {"n": 0}

    def flaky_loss(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        if calls["n"] == 2:
            return loss * 1e35  # a finite loss whose scaled (x 65536) gradients overflow
        if calls["n"] >= 3:
            return loss * float("nan")
        return loss

    monkeypatch.setattr(train_mod, "sr_loss", flaky_loss)
    cfg_path = write_config(tmp_path / "c.yaml", train_root, None, tmp_path / "runs", model=SMALL_MODEL,
                            schedule=SMALL_FIXED, optim={"lr": 1e-3, "fix_flow_iters": 0},
                            train={"name": "t", "out_dir": str(tmp_path / "runs"), "log_every": 1, "amp": "fp16",
                                   "val_every": 0, "save_every": 2, "tensorboard": False, "progress": False,
                                   "max_bad_steps": 2, "device": "cpu"})
    with pytest.raises(train_mod.NonFiniteError, match=r"2 consecutive steps .*\(last at step 3\)"):
        train_mod.train(load_config(cfg_path))
    rows = _read_rows(tmp_path / "runs" / "t" / "train_log.csv")
    assert [int(r["skipped"]) for r in rows] == [0, 0, 1, 2]  # the overflow is not a bad step
    assert float(rows[1]["loss"]) > 1e25
    state = torch.load(tmp_path / "runs" / "t" / "checkpoints" / "ckpt_00000002.pt", weights_only=True)
    assert state["scaler"]["scale"] == 2.0 ** 15  # halved once, by the overflow of step 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_process_group_gets_the_configured_timeout(monkeypatch):
    from datetime import timedelta

    import mgvsr.distributed as distributed

    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kwargs: seen.update(kwargs))
    info, device = distributed.init_distributed("cpu", timeout_min=7)
    assert (info.rank, info.world_size, device.type) == (1, 2, "cpu")
    assert seen == {"backend": "gloo", "timeout": timedelta(minutes=7)}
