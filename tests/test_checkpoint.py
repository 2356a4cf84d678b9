"""Checkpointer: atomic saves, keep-last-K, corrupt files skipped, RNG round trip, SIGKILL mid-write."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mgvsr.checkpoint import CheckpointError, Checkpointer, rng_state, set_rng_state


def state_for(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((3, 3), float(step))}, "name": "run", "lrs": [0.1, 0.2]}


def test_save_and_load_round_trip(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpts")
    path = ckpt.save(state_for(1000), 1000)
    assert path == tmp_path / "ckpts" / "ckpt_00001000.pt"
    loaded = ckpt.load(path)
    assert loaded["step"] == 1000 and loaded["name"] == "run" and loaded["lrs"] == [0.1, 0.2]
    assert torch.equal(loaded["model"]["w"], torch.full((3, 3), 1000.0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt_00001000.pt"]  # no temp file left
    assert ckpt.latest() == path


def test_keep_last_k(tmp_path):
    ckpt = Checkpointer(tmp_path, keep_last=2)
    for step in (10, 20, 30, 40):
        ckpt.save(state_for(step), step)
    assert [s for s, _ in ckpt.checkpoints()] == [30, 40]
    assert ckpt.load(ckpt.latest())["step"] == 40


def test_latest_is_none_without_checkpoints(tmp_path):
    assert Checkpointer(tmp_path / "missing").latest() is None


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_newest_is_skipped_not_deleted(tmp_path, damage):
    ckpt = Checkpointer(tmp_path)
    good = ckpt.save(state_for(1), 1)
    bad = ckpt.save(state_for(2), 2)
    data = bad.read_bytes()
    bad.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(500), "empty": b""}[damage])
    with pytest.warns(RuntimeWarning, match="ckpt_00000002.pt"):
        assert ckpt.latest() == good
    assert bad.exists()
    with pytest.raises(CheckpointError, match="ckpt_00000002.pt"):
        ckpt.load(bad)


def test_load_rejects_non_dict_and_missing(tmp_path):
    path = tmp_path / "ckpt_00000005.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="expected a dict"):
        Checkpointer(tmp_path).load(path)
    with pytest.raises(CheckpointError, match="not found"):
        Checkpointer(tmp_path).load(tmp_path / "nope.pt")


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "ckpt_00000001.pt"
    torch.save({"obj": Path("x")}, path)  # an arbitrary class: not weights_only-loadable
    with pytest.raises(CheckpointError, match="ckpt_00000001.pt"):
        Checkpointer(tmp_path).load(path)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="keep_last"):
        Checkpointer(tmp_path, keep_last=0)
    with pytest.raises(TypeError, match="dict"):
        Checkpointer(tmp_path).save([1], 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step"):
        Checkpointer(tmp_path).save({}, -1)


def draw() -> tuple:
    return (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.randn(),
        torch.rand(3).tolist(),
        torch.randn(2).tolist(),
    )


def test_rng_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leave a cached Gaussian in Python's state
    np.random.randn()  # ... and in NumPy's
    ckpt = Checkpointer(tmp_path)
    ckpt.save({"rng": rng_state()}, 7)
    expected = draw()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert draw() != expected
    set_rng_state(ckpt.load(ckpt.latest())["rng"])
    assert draw() == expected


def test_set_rng_state_rejects_foreign_dicts():
    with pytest.raises(KeyError, match="rng_state"):
        set_rng_state({"torch": torch.get_rng_state()})


WRITER = textwrap.dedent(
    """
    import io, sys, time
    import torch
    from mgvsr import checkpoint
    from mgvsr.checkpoint import Checkpointer

    real_save = torch.save

    def slow_save(obj, f):
        # Serialise for real, write half of the bytes, then stall: the parent kills us here.
        buf = io.BytesIO()
        real_save(obj, buf)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        print("writing", flush=True)
        time.sleep(60)
        f.write(data[len(data) // 2 :])

    checkpoint.torch.save = slow_save
    Checkpointer(sys.argv[1]).save({"step": 2, "big": torch.zeros(2_000_000)}, 2)
    print("finished", flush=True)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path):
    ckpt = Checkpointer(tmp_path)
    previous = ckpt.save(state_for(1), 1)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()  # blocks until the child is half way through writing
        assert line.strip() == "writing", proc.stderr.read()
        temps = list(tmp_path.glob(".ckpt_00000002.pt.tmp-*"))
        assert len(temps) == 1 and temps[0].stat().st_size > 1_000_000  # the write really started
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "ckpt_00000002.pt").exists()
    assert ckpt.latest() == previous
    assert ckpt.load(previous)["step"] == 1
    assert ckpt.remove_temp_files() == temps and not temps[0].exists()
    ckpt.save(state_for(3), 3)  # saving continues normally afterwards
    assert ckpt.load(ckpt.latest())["step"] == 3


def test_save_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(state_for(1), 1)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("mgvsr.checkpoint.torch.save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save(state_for(2), 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_00000001.pt"]
    assert ckpt.latest() == tmp_path / "ckpt_00000001.pt"
