"""The bundled demo data and the throughput benchmark script (data-only part and one tiny model step)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_benchmark

from mgvsr.config import DatasetConfig
from mgvsr.data import build_dataset, check_shape, iter_clips
import synthetic as syn

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo_data"


@pytest.mark.skipif(not (DEMO / "manifest.json").is_file(), reason="demo_data/ not built")
def test_demo_data_loads_and_is_small():
    manifest = json.loads((DEMO / "manifest.json").read_text())
    assert "Blender Foundation" in manifest["credit"] and "CC-BY 3.0" in manifest["credit"]
    assert "Big Buck Bunny" in (DEMO / "README.md").read_text()
    assert sum(f.stat().st_size for f in DEMO.rglob("*") if f.is_file()) <= 8 * 1024 * 1024
    train = build_dataset(DatasetConfig(kind="prepared", root=str(DEMO), split="train"))
    val = build_dataset(DatasetConfig(kind="prepared", root=str(DEMO), split="val"))
    assert 4 <= len(train) <= 8 and 2 <= len(val) <= 3
    assert not {c.name for c in train.clips} & {c.name for c in val.clips}
    check_shape(train, num_frames=15, lr_patch=32)
    name, lr, hr = next(iter_clips(val, max_frames=2))
    assert lr.shape == (2, 45, 80, 3) and hr.shape == (2, 180, 320, 3)


def _bench():
    return load_benchmark("data_throughput")


def test_benchmark_data_only(tmp_path, capsys):
    syn.write_frames(tmp_path, clips=("a", "b", "c"), num_frames=6, size=(64, 64))
    rc = _bench().main(["--kind", "frames", "--root", str(tmp_path), "--shapes", "3x8x8,5x16x16",
                        "--batch", "2", "--steps", "2", "--data-only"])
    out = capsys.readouterr().out
    assert rc == 0 and "command:" in out and "machine:" in out
    assert "3x8x8" in out and "5x16x16" in out and "samples/s" in out


def test_benchmark_with_tiny_model(tmp_path, capsys):
    pytest.importorskip("mgvsr.models")
    syn.write_frames(tmp_path, clips=("a", "b"), num_frames=4, size=(64, 64))
    rc = _bench().main(["--kind", "frames", "--root", str(tmp_path), "--shapes", "2x16x16", "--batch", "1",
                        "--steps", "1", "--workers", "0", "--num-feat", "4", "--num-block", "1", "--in-memory"])
    out = capsys.readouterr().out
    assert rc == 0 and "wait %" in out and "2x16x16" in out
