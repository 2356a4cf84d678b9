"""`mgvsr prepare`: videos -> prepared dataset (manifest last), scene-cut filter, stored LR, cache packing."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from mgvsr.cli import main
from mgvsr.config import DatasetConfig
from mgvsr.data import DataError, build_dataset, iter_clips, make_batch
from mgvsr.data import prepare as prep
import synthetic as syn
from mgvsr.data.io import write_video


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    syn.write_videos(root, names=("a", "b"), num_frames=24, size=(72, 96), codec="ffv1")
    return root


def _ds(root, **kw):
    return build_dataset(DatasetConfig(kind="prepared", root=str(root), **kw))


def test_prepare_cli_writes_manifest_and_loadable_splits(videos, tmp_path):
    out = tmp_path / "prep"
    rc = main(["prepare", str(videos), "--out", str(out), "--clip-len", "4", "--val-clips", "2",
               "--hr-size", "64x48", "--codec", "ffv1"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"][0]["sha256"] == hashlib.sha256((videos / "a.mkv").read_bytes()).hexdigest()
    assert manifest["settings"]["clip_len"] == 4 and manifest["settings"]["hr_size"] == "64x48"
    train, val = _ds(out, split="train"), _ds(out, split="val")
    assert len(val) == 2
    names_t, names_v = {c.name for c in train.clips}, {c.name for c in val.clips}
    assert not names_t & names_v
    # Val clips come from distinct parts: one per half of the clip list, neighbours not in training.
    for c in manifest["clips"]:
        if c["split"] == "val":
            src, k = c["name"].rsplit("_", 1)
            assert f"{src}_{int(k) - 1:05d}" not in names_t and f"{src}_{int(k) + 1:05d}" not in names_t
    assert all(c.num_frames == 4 and c.hr_hw == (48, 64) and c.lr_hw == (12, 16) for c in train.clips)
    lr, hr = make_batch(train, seed=0, step=0, num_frames=4, lr_patch=8, batch_size=2)
    assert lr.shape == (2, 4, 3, 8, 8) and hr.shape == (2, 4, 3, 32, 32)


def test_every_and_stored_lr(videos, tmp_path):
    out = tmp_path / "prep"
    prep.prepare_videos(videos / "a.mkv", out, clip_len=4, every=2, val_clips=1, lr="BI", codec="ffv1",
                        progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    starts = sorted(c["start_frame"] for c in manifest["clips"])
    assert all(s % 8 == 0 for s in starts)  # clips 0, 2, 4 of 4 frames
    ds = _ds(out, split="all")
    assert ds.lr_segments is not None  # stored BI frames are used for a BI dataset
    assert _ds(out, split="all", degradation="BD").lr_segments is None
    assert _ds(out, split="all", lr_source="on_the_fly").lr_segments is None
    with pytest.raises(DataError, match=r"manifest.json \(stored LR: BI; `mgvsr prepare --lr BD` stores it\)"):
        _ds(out, split="all", degradation="BD", lr_source="disk")
    # Stored (lossless) LR equals the on-the-fly whole-frame degradation; HR is the source frames.
    src = syn.smooth_clip(24, 72, 96, seed=40)
    for (name, lr, hr), c in zip(iter_clips(ds), ds.clips):
        start = next(e["start_frame"] for e in manifest["clips"] if e["name"] == name)
        np.testing.assert_array_equal(hr, src[start : start + 4])
        np.testing.assert_array_equal(lr, syn.bi_lr(hr))


def test_scene_cut_clips_are_dropped(tmp_path):
    a = syn.smooth_clip(8, 32, 32, seed=1)
    b = syn.smooth_clip(8, 32, 32, seed=2)
    write_video(tmp_path / "cut.mkv", np.concatenate([a[:6], b[:6]]), codec="ffv1")  # cut at frame 6
    out = tmp_path / "prep"
    prep.prepare_videos(tmp_path / "cut.mkv", out, clip_len=4, val_clips=0, codec="ffv1", max_cut_change=20,
                        progress=False)
    starts = [c["start_frame"] for c in json.loads((out / "manifest.json").read_text())["clips"]]
    assert starts == [0, 8]  # the clip of frames 4..7 holds the cut


def test_interrupted_prepare_leaves_no_manifest(videos, tmp_path, monkeypatch):
    calls = []

    def failing(path, frames, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return write_video(path, frames, **kw)

    monkeypatch.setattr(prep, "write_video", failing)
    out = tmp_path / "prep"
    with pytest.raises(KeyboardInterrupt):
        prep.prepare_videos(videos, out, clip_len=4, val_clips=1, codec="ffv1", progress=False)
    assert not (out / "manifest.json").exists()
    with pytest.raises(DataError, match="manifest not found"):
        _ds(out)


def test_pack_cache_cli_and_mismatch(videos, tmp_path):
    cache = tmp_path / "cache"
    assert main(["prepare", "--cache", str(cache), "--kind", "video", "--root", str(videos),
                 "--clip-len", "6"]) == 0
    cfg = dict(kind="video", root=str(videos), clip_len=6)
    direct = build_dataset(DatasetConfig(**cfg))
    cached = build_dataset(DatasetConfig(**cfg, cache=str(cache)))
    assert [c.name for c in cached.clips] == [c.name for c in direct.clips]
    # HR identical; LR of the cache comes from whole frames, so compare whole clips.
    for (n1, l1, h1), (n2, l2, h2) in zip(iter_clips(direct), iter_clips(cached)):
        assert n1 == n2 and np.array_equal(h1, h2) and np.array_equal(l1, l2)
    with pytest.raises(DataError, match=r"cache was built with degradation='BI', but the dataset asks for 'BD'"):
        build_dataset(DatasetConfig(**cfg, cache=str(cache), degradation="BD"))
    assert main(["prepare", "--cache", str(cache)]) == 2  # missing --kind/--root: clear error, exit 2


def test_bad_hr_size(videos, tmp_path):
    with pytest.raises(DataError, match="would upscale"):
        prep.prepare_videos(videos, tmp_path / "p", clip_len=4, hr_size="200x100", progress=False)
    with pytest.raises(DataError, match="expected WIDTHxHEIGHT"):
        prep.prepare_videos(videos, tmp_path / "p", clip_len=4, hr_size="big", progress=False)


def test_write_prepared_from_frames_in_memory(tmp_path):
    """The path used by scripts/make_demo_data.py: chosen chunks still hold their frames."""
    src = tmp_path / "src.mkv"
    frames = syn.smooth_clip(8, 32, 32, seed=5)
    chunks = [prep.Chunk(src, k, 4 * k, frames[4 * k : 4 * k + 4], name=f"c{k}") for k in range(2)]
    prep.write_prepared(tmp_path / "out", chunks[:1], chunks[1:], [], {}, lr="none", codec="ffv1", crf=0,
                        scale=4, credit="test credit")
    assert not (tmp_path / "out" / ".staging").exists()
    val = _ds(tmp_path / "out", split="val")
    assert [c.name for c in val.clips] == ["c1"]
    np.testing.assert_array_equal(next(iter_clips(val))[2], frames[4:8])


def test_demo_script_ranks_by_mean_detail():
    """scripts/make_demo_data.py ranks clips by the mean texture score, as the bundled demo_data/ was
    chosen; Chunk.detail (the flattest frame's score) would pick other clips."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "make_demo_data.py"
    spec = importlib.util.spec_from_file_location("make_demo_data", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    frames = syn.smooth_clip(8, 32, 32, seed=5)
    fade = frames.copy()
    fade[0] = 0  # a black first frame: the flattest frame scores 0, the mean does not
    per_frame = [prep.detail(f) for f in fade[::4]]  # one frame at a time: its own score
    assert prep.detail(fade[::4]) == 0.0
    np.testing.assert_allclose(prep.frame_details(fade[::4]), per_frame, rtol=1e-6)
    assert script.mean_detail(fade) == pytest.approx(np.mean(per_frame))
    assert script.mean_detail(fade) > 0
