"""Every `mgvsr` command reports the project's errors as one line `mgvsr CMD: error: ...` on stderr with a
non-zero exit and no traceback; anything else (a bug) keeps its traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mgvsr.checkpoint import CheckpointError, Checkpointer
from mgvsr.cli import main
from mgvsr.config import load_config, to_dict
from mgvsr.errors import MgvsrError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"


def _one_line_error(capsys, command: str, needle: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mgvsr {command}: error: "), err
    assert needle in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Two clips of four 64x64 noise frames (``frames`` layout)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("data") / "train"
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"clip{c}").mkdir(parents=True)
        for t in range(4):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / f"clip{c}" / f"{t}.png")
    return root


def _tiny_train_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", str(DEMO), "data.train.kind=frames", f"data.train.root={root}", "data.train.in_memory=false",
        "data.val=null", "model.num_feat=4", "model.num_block=1", "model.head_feat=4", "schedule.kind=fixed",
        "schedule.total_iters=2", "schedule.num_frames=2", "schedule.patch_size=16", "schedule.batch_size=1",
        f"train.out_dir={out}", "train.name=t", "train.progress=false", "train.tensorboard=false",
        "train.val_every=0", "train.device=cpu", *extra,
    ]


@pytest.mark.parametrize("args, needle", [
    ([str(DEMO), "schedule.kind=multigird"], "schedule.kind: 'multigird' is not allowed"),
    (["missing.yaml"], "config file not found: missing.yaml"),
    ([str(DEMO), "data.train.root=/nonexistent/mgvsr-data"], "/nonexistent/mgvsr-data"),
    ([str(DEMO), "train.dist_timeout_min=0"], "train.dist_timeout_min"),
])
def test_train_input_errors_are_one_line(capsys, args, needle):
    assert main(["train", *args]) == 2
    _one_line_error(capsys, "train", needle)


def test_train_checkpoint_and_resume_errors_are_one_line(capsys, tmp_path, tiny_data):
    assert main(_tiny_train_args(tiny_data, tmp_path, f"train.resume={tmp_path / 'nope.pt'}")) == 2
    _one_line_error(capsys, "train", "checkpoint not found")

    # a checkpoint of another experiment (another seed)
    ckpt = Checkpointer(tmp_path / "t" / "checkpoints")
    other = load_config(DEMO, _tiny_train_args(tiny_data, tmp_path, "train.seed=99")[2:])
    ckpt.save({"step": 1, "config": to_dict(other)}, 1)
    assert main(_tiny_train_args(tiny_data, tmp_path, "train.resume=auto")) == 2
    _one_line_error(capsys, "train", "train.seed: 99 -> 0")
    # ... and a fresh run into a folder that holds checkpoints
    assert main(_tiny_train_args(tiny_data, tmp_path, "train.resume=none")) == 2
    _one_line_error(capsys, "train", "already holds checkpoints")


def test_diverged_run_is_one_line_with_exit_1(capsys, tmp_path, tiny_data, monkeypatch):
    import mgvsr.train as train_mod

    monkeypatch.setattr(train_mod, "sr_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    # log_every=1: the host reads the device's bad-step counters every step (docs/performance.md), so
    # the run stops at the first bad step, as the message says.
    assert main(_tiny_train_args(tiny_data, tmp_path, "train.max_bad_steps=1", "train.log_every=1")) == 1
    _one_line_error(capsys, "train", "1 consecutive steps had a non-finite loss")


def test_other_commands_report_errors_the_same_way(capsys, tmp_path):
    assert main(["export", "--weights", str(tmp_path / "none.pth"), "--to", "basicsr", str(tmp_path / "o.pth")]) == 2
    _one_line_error(capsys, "export", "none.pth")
    assert main(["eval", "--data", f"frames:{tmp_path / 'none'}", "--bicubic"]) == 2
    _one_line_error(capsys, "eval", "none")
    assert main(["upscale", str(tmp_path / "none.mp4"), str(tmp_path / "o.mp4"), "--weights", "w.pth"]) == 2
    _one_line_error(capsys, "upscale", "none.mp4")
    assert main(["prepare", str(tmp_path / "none.mp4"), "--out", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, "prepare", "none.mp4")
    assert main(["schedule", str(DEMO), "schedule.kind=multigird"]) == 2
    _one_line_error(capsys, "schedule", "schedule.kind: 'multigird' is not allowed")


def test_the_project_errors_share_one_base():
    from mgvsr.config import ConfigError
    from mgvsr.data.io import DataError
    from mgvsr.evaluation.runner import InferenceError
    from mgvsr.evaluation.scoring import EvalError
    from mgvsr.export import ExportError
    from mgvsr.models.weights import WeightsError
    from mgvsr.runtime import DeviceError
    from mgvsr.train import NonFiniteError, ResumeError
    from mgvsr.upscale import UpscaleError

    for cls in (ConfigError, DataError, DeviceError, EvalError, ExportError, InferenceError, WeightsError,
                CheckpointError, NonFiniteError, ResumeError, UpscaleError):
        assert issubclass(cls, MgvsrError), cls


def test_central_handler_catches_project_errors_only(capsys, monkeypatch):
    import mgvsr.schedule_cli as schedule_cli
    from mgvsr.models.weights import WeightsError

    def raise_(err):
        def run(args):
            raise err
        return run

    monkeypatch.setattr(schedule_cli, "run", raise_(WeightsError("w.pth: not a weights file")))
    assert main(["schedule", str(DEMO)]) == 2
    _one_line_error(capsys, "schedule", "w.pth: not a weights file")
    monkeypatch.setattr(schedule_cli, "run", raise_(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError):  # a bug: the traceback stays
        main(["schedule", str(DEMO)])
    monkeypatch.setattr(schedule_cli, "run", raise_(KeyboardInterrupt()))
    assert main(["schedule", str(DEMO)]) == 130
    assert "mgvsr schedule: interrupted" in capsys.readouterr().err


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))


def test_subprocess_prints_no_traceback():
    result = subprocess.run([sys.executable, "-m", "mgvsr.cli", "train", str(DEMO), "schedule.kind=multigird"],
                            env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("mgvsr train: error: schedule.kind: 'multigird' is not allowed")
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_every_rank_exits_non_zero_with_the_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = []
    for rank in range(2):
        env = _env()
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "mgvsr.cli", "train", str(DEMO), f"data.train.root={tmp_path / 'missing'}",
             "train.device=cpu"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 2, err
        assert err.startswith("mgvsr train: error: ") and "missing" in err and "Traceback" not in err, err
