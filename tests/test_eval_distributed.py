"""Validation split across ranks: 2 gloo processes give exactly the numbers of one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import synthetic as syn
from mgvsr.config import DatasetConfig, ModelConfig
from mgvsr.data import build_dataset
from mgvsr.evaluation import PROTOCOLS, bicubic_upscaler, score_dataset, score_model
from mgvsr.models import build_model

SRC = Path(__file__).resolve().parents[1] / "src"
TESTS = Path(__file__).resolve().parent

# Run by each rank: join the gloo group, score the same model and bicubic, write what rank 0 got.
WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.distributed as dist
    from mgvsr.config import DatasetConfig, ModelConfig
    from mgvsr.data import build_dataset
    from mgvsr.evaluation import PROTOCOLS, bicubic_upscaler, score_dataset, score_model
    from mgvsr.models import build_model

    root, weights, out = sys.argv[1:4]
    dist.init_process_group("gloo")
    dataset = build_dataset(DatasetConfig(kind="frames", root=root))
    read = []  # clip indices this rank reads
    real_read_clip = dataset.read_clip
    dataset.read_clip = lambda i, frames: read.append(i) or real_read_clip(i, frames)
    model = build_model(ModelConfig(num_feat=4, num_block=1))
    model.load_state_dict(torch.load(weights, weights_only=True))
    ours = score_model(model, dataset, max_frames=0)
    bicubic = score_dataset(bicubic_upscaler(4), dataset, PROTOCOLS["generic"], 0, "bicubic")
    with open(f"{out}.{dist.get_rank()}", "w") as f:
        json.dump({"ours": ours, "bicubic": bicubic.flat_scores(), "frames_in": bicubic.frames_in, "read": read}, f)
    dist.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_gloo_ranks_score_like_one_process(tmp_path):
    # Three clips of different lengths: rank 0 scores clips 0 and 2, rank 1 clip 1.
    root = syn.write_frames(tmp_path / "val", clips=("a", "b", "c"), num_frames=4, size=(48, 64), with_lr=True)
    (root / "hr" / "c" / "00003.png").unlink()
    (root / "lr" / "c" / "00003.png").unlink()
    torch.manual_seed(1)
    model = build_model(ModelConfig(num_feat=4, num_block=1))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)

    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                   OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(SRC), str(TESTS)]))
        procs.append(subprocess.Popen([sys.executable, str(script), str(root), str(tmp_path / "w.pt"),
                                       str(tmp_path / "out.json")], env=env, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]

    dataset = build_dataset(DatasetConfig(kind="frames", root=str(root)))
    single = {
        "ours": score_model(model, dataset, max_frames=0),
        "bicubic": score_dataset(bicubic_upscaler(4), dataset, PROTOCOLS["generic"], 0, "bicubic").flat_scores(),
    }
    assert list(single["ours"]["clips"]) == ["a", "b", "c"]
    for rank in range(2):
        got = json.loads((tmp_path / f"out.json.{rank}").read_text())
        # Exactly equal: each clip is scored by one rank with the same arithmetic, averaged in clip order.
        assert got["ours"] == single["ours"]
        assert got["bicubic"] == single["bicubic"]
        assert got["frames_in"] == 4 + 4 + 3
        # ... while each rank read only its share of the clips (model pass, then bicubic pass).
        assert got["read"] == ([0, 2, 0, 2] if rank == 0 else [1, 1])


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_torchrun_training_validates_on_every_rank(tmp_path):
    """2-process training with validation and the end-of-run report: every rank takes part in the
    scoring collectives (a rank left out would hang the run), rank 0 writes the logs and report."""
    import yaml

    train_root = syn.write_frames(tmp_path / "train", clips=("a", "b"), num_frames=4, size=(80, 80))
    val_root = syn.write_frames(tmp_path / "val", clips=("v1", "v2", "v3"), num_frames=3, size=(48, 48))
    cfg = {
        "model": {"name": "basicvsr", "num_feat": 4, "num_block": 1},
        "data": {"train": {"kind": "frames", "root": str(train_root)}, "val": {"kind": "frames", "root": str(val_root)},
                 "num_workers": 0},
        "schedule": {"kind": "fixed", "total_iters": 2, "num_frames": 2, "patch_size": 16, "batch_size": 1},
        "train": {"name": "t", "out_dir": str(tmp_path / "runs"), "val_every": 1, "save_every": 100,
                  "tensorboard": False, "progress": False},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(SRC))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mgvsr.cli", "train", str(tmp_path / "c.yaml")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "t"
    rows = (run / "val_log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]  # written once per validation (rank 0)
    summary = json.loads((run / "summary.json").read_text())
    metrics = json.loads((run / "val_metrics.json").read_text())
    assert list(metrics["mgvsr"]["clips"]) == ["v1", "v2", "v3"] and list(metrics["bicubic"]["clips"]) == ["v1", "v2", "v3"]
    assert summary["val_psnr_y"] == metrics["mgvsr"]["average"]["psnr_y"]
    assert (run / "side_by_side.png").is_file()
