"""Bad input: every case raises DataError naming the file/clip and the problem, early where possible."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mgvsr.config import ConfigError, DatasetConfig, load_config
from mgvsr.data import DataError, build_dataset, check_shape, iter_clips, make_batch
import synthetic as syn
from mgvsr.data.io import write_png


def _ds(kind, root, **kw):
    return build_dataset(DatasetConfig(kind=kind, root=str(root), **kw))


def test_missing_frame_in_numbering(tmp_path):
    syn.write_frames(tmp_path, clips=("a",), num_frames=5)
    (tmp_path / "a" / "00002.png").unlink()
    with pytest.raises(DataError, match=r"a: missing frame.*1 and 3"):
        _ds("frames", tmp_path)


def test_lr_and_hr_frame_lists_differ(tmp_path):
    syn.write_reds(tmp_path, clips=("001",), num_frames=5)
    (tmp_path / "train_sharp_bicubic" / "X4" / "001" / "00000004.png").unlink()
    with pytest.raises(DataError, match=r"clip '001': 5 HR frames .* but 4 LR frames"):
        _ds("reds", tmp_path)


def test_corrupt_image_header(tmp_path):
    syn.write_frames(tmp_path, clips=("a",), num_frames=3)
    (tmp_path / "a" / "00001.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"00001.png: not a readable image"):
        _ds("frames", tmp_path)


def test_truncated_image_fails_on_read_naming_the_file(tmp_path):
    syn.write_frames(tmp_path, clips=("a",), num_frames=3)
    path = tmp_path / "a" / "00001.png"
    path.write_bytes(path.read_bytes()[:200])  # header intact, pixel data cut
    ds = _ds("frames", tmp_path)
    with pytest.raises(DataError, match=r"00001.png: corrupt or truncated image"):
        list(iter_clips(ds))


def test_lr_hr_size_mismatch(tmp_path):
    syn.write_frames(tmp_path, clips=("a",), num_frames=2, with_lr=True)
    for f in (tmp_path / "lr" / "a").iterdir():
        write_png(f, syn.smooth_clip(1, 15, 16)[0])
    with pytest.raises(DataError, match=r"LR size \(15, 16\).*does not match HR"):
        _ds("frames", tmp_path)


def test_frame_size_differs_inside_clip(tmp_path):
    syn.write_frames(tmp_path, clips=("a",), num_frames=3)
    write_png(tmp_path / "a" / "00002.png", syn.smooth_clip(1, 32, 32)[0])
    with pytest.raises(DataError, match=r"00002.png: size"):
        _ds("frames", tmp_path)


def test_clip_shorter_than_t_and_crop_larger_than_frame(tmp_path):
    syn.write_frames(tmp_path, clips=("long", "short"), num_frames=6)
    for k in (4, 5):
        (tmp_path / "short" / f"{k:05d}.png").unlink()
    ds = _ds("frames", tmp_path)
    check_shape(ds, num_frames=4, lr_patch=16)
    with pytest.raises(DataError, match=r"clip 'short' has 4 frames, fewer than the requested T=5"):
        check_shape(ds, num_frames=5, lr_patch=8)
    with pytest.raises(DataError, match=r"clip 'long' LR frames are 16x16.*smaller than the requested crop 20x20"):
        check_shape(ds, num_frames=2, lr_patch=20)
    with pytest.raises(DataError, match=r"fewer than the requested T=7"):
        make_batch(ds, seed=0, step=0, num_frames=7, lr_patch=8, batch_size=2)


def test_empty_folders(tmp_path):
    (tmp_path / "frames").mkdir()
    with pytest.raises(DataError, match=r"frames: empty folder"):
        _ds("frames", tmp_path / "frames")
    (tmp_path / "frames" / "clip").mkdir()
    with pytest.raises(DataError, match=r"clip: no image files"):
        _ds("frames", tmp_path / "frames")
    (tmp_path / "videos").mkdir()
    with pytest.raises(DataError, match=r"videos: empty folder \(no video files"):
        _ds("video", tmp_path / "videos")
    with pytest.raises(DataError, match=r"dataset root not found"):
        _ds("vid4", tmp_path / "nowhere")


def test_unknown_kind_and_split(tmp_path):
    with pytest.raises(DataError, match=r"unknown dataset kind 'lmdb'"):
        build_dataset(SimpleNamespace(kind="lmdb", root=str(tmp_path), cache=None))
    with pytest.raises(ConfigError, match=r"data.train.kind: 'lmdb' is not allowed"):
        load_config(overrides=["data.train.kind=lmdb"])
    syn.write_reds(tmp_path, clips=("001",), num_frames=2)
    with pytest.raises(DataError, match=r"unknown REDS split 'val'"):
        _ds("reds", tmp_path, split="val")
    with pytest.raises(DataError, match=r"clips not found: \['999'\]"):
        _ds("reds", tmp_path, clips=["999"])


def test_corrupt_and_truncated_video(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(DataError, match=r"x.mp4: cannot open video"):
        _ds("video", tmp_path / "bad")
    syn.write_videos(tmp_path / "ok", names=("v",), num_frames=10, codec="libx264")
    data = (tmp_path / "ok" / "v.mp4").read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "v.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"v.mp4: (cannot open video|corrupt or truncated|video has no frames)"):
        _ds("video", tmp_path / "cut")


def test_video_shorter_than_clip_len(tmp_path):
    syn.write_videos(tmp_path, names=("v",), num_frames=4)
    with pytest.raises(DataError, match=r"v.mkv: only 4 frames, fewer than clip_len=5"):
        _ds("video", tmp_path, clip_len=5)


def test_prepared_without_manifest_and_missing_cache(tmp_path):
    with pytest.raises(DataError, match=r"manifest.json: manifest not found"):
        _ds("prepared", tmp_path)
    with pytest.raises(DataError, match=r"cache.json: cache index not found"):
        _ds("frames", tmp_path, cache=str(tmp_path / "c"))
