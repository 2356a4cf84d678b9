"""Sources: every layout loads with correct counts/sizes, and LR/HR crops are aligned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mgvsr.config import DatasetConfig
from mgvsr.data import build_dataset, iter_clips, make_batch
import synthetic as syn
from mgvsr.data.degrade import degrade
from mgvsr.data.io import DataError, read_video
from mgvsr.data.sampling import AugmentConfig, draw_picks

NO_AUG = AugmentConfig(flip=False, rot=False, reverse=False)


def _ds(kind, root, **kw):
    return build_dataset(DatasetConfig(kind=kind, root=str(root), **kw))


def _assert_stored_lr_aligned(ds, seed=0):
    """With LR on disk, the batch's LR crop is exactly the disk LR at the pick's position, same for HR."""
    lr, hr = make_batch(ds, seed=seed, step=3, num_frames=3, lr_patch=8, batch_size=2, aug=NO_AUG)
    picks = draw_picks(ds, seed, 3, 2, 3, 8, NO_AUG, (1,))
    for b, p in enumerate(picks):
        idx = range(p.start, p.start + 3)
        full_lr, full_hr = ds.read_clip(p.clip, idx)
        exp_lr = full_lr[:, p.top : p.top + 8, p.left : p.left + 8]
        exp_hr = full_hr[:, 4 * p.top : 4 * p.top + 32, 4 * p.left : 4 * p.left + 32]
        assert torch.equal((lr[b] * 255).round().byte().permute(0, 2, 3, 1), torch.from_numpy(exp_lr))
        assert torch.equal((hr[b] * 255).round().byte().permute(0, 2, 3, 1), torch.from_numpy(exp_hr))


def _assert_on_the_fly_aligned(ds, kind="BI"):
    """With LR made on the fly, degrading the HR crop reproduces the LR crop within 1 level."""
    lr, hr = make_batch(ds, seed=1, step=0, num_frames=3, lr_patch=8, batch_size=2)
    again = degrade(hr.flatten(0, 1), kind=kind, scale=4).clamp(0, 1).view_as(lr)
    assert (again - lr).abs().max().item() <= 1.0 / 255 + 1e-6


def test_reds_splits_and_stored_lr(tmp_path):
    syn.write_reds(tmp_path, clips=("000", "001", "011", "012"), num_frames=6)
    train = _ds("reds", tmp_path, split="train")
    assert [c.name for c in train.clips] == ["001", "012"]
    assert [c.name for c in _ds("reds", tmp_path, split="REDS4").clips] == ["000", "011"]
    assert len(_ds("reds", tmp_path, split="all").clips) == 4
    assert train.clips[0].num_frames == 6 and train.clips[0].lr_hw == (16, 16)
    assert train.lr_files is not None
    _assert_stored_lr_aligned(train)


def test_reds_official_partition(tmp_path):
    syn.write_reds(tmp_path, clips=("000", "239", "240", "246", "250"), num_frames=2, with_lr=False)
    names = {split: [c.name for c in _ds("reds", tmp_path, split=split, lr_source="on_the_fly").clips]
             for split in ("REDSofficial4", "REDSofficial", "train_official")}
    assert names == {"REDSofficial4": ["240", "246"], "REDSofficial": ["240", "246", "250"],
                     "train_official": ["000", "239"]}


def test_reds_without_lr_folder_is_an_error_unless_on_the_fly(tmp_path):
    syn.write_reds(tmp_path, clips=("001", "002"), num_frames=4, with_lr=False)
    with pytest.raises(DataError, match=r"train_sharp_bicubic/X4 \(REDS LR folder\): LR frames not found; "
                                        r"set lr_source: on_the_fly"):
        _ds("reds", tmp_path)
    for lr_source in ("on_the_fly", "auto"):
        ds = _ds("reds", tmp_path, lr_source=lr_source)
        assert ds.lr_files is None
    _assert_on_the_fly_aligned(ds)


def test_lr_source_choices_on_a_layout_with_lr(tmp_path):
    syn.write_reds(tmp_path, clips=("001",), num_frames=4)
    assert _ds("reds", tmp_path, lr_source="disk").lr_files is not None
    assert _ds("reds", tmp_path, lr_source="auto").lr_files is not None
    assert _ds("reds", tmp_path, lr_source="on_the_fly").lr_files is None  # stored LR ignored
    # REDS ships bicubic LR only: BD from disk is an error, BD on the fly (or auto) degrades the HR.
    with pytest.raises(DataError, match=r"REDS LR frames are bicubic \(BI\); set lr_source: on_the_fly"):
        _ds("reds", tmp_path, degradation="BD")
    assert _ds("reds", tmp_path, degradation="BD", lr_source="auto").lr_files is None


def test_lr_source_on_layouts_without_stored_lr(tmp_path):
    syn.write_vid4(tmp_path / "vid4", with_lr=False)
    with pytest.raises(DataError, match=r"vid4/BIx4 \(Vid4 LR folder\): LR frames not found"):
        _ds("vid4", tmp_path / "vid4")
    assert _ds("vid4", tmp_path / "vid4", lr_source="on_the_fly").lr_files is None
    syn.write_videos(tmp_path / "v", names=("v1",), num_frames=4)
    assert _ds("video", tmp_path / "v").lr_segments is None  # videos degrade on the fly by default
    with pytest.raises(DataError, match=r"kind 'video' stores no LR frames"):
        _ds("video", tmp_path / "v", lr_source="disk")
    syn.write_frames(tmp_path / "f")
    assert _ds("frames", tmp_path / "f").lr_files is None  # auto: no lr/ sibling
    with pytest.raises(DataError, match=r"lr \(LR frames folder\): LR frames not found"):
        _ds("frames", tmp_path / "f", lr_source="disk")


def test_vimeo_lists_and_lr_folder(tmp_path):
    syn.write_vimeo(tmp_path)
    train = _ds("vimeo", tmp_path, split="train")
    assert [c.name for c in train.clips] == ["00001/0001", "00001/0002"]
    assert all(c.num_frames == 7 for c in train.clips)
    assert [c.name for c in _ds("vimeo", tmp_path, split="test").clips] == ["00002/0001"]
    _assert_stored_lr_aligned(train)
    # No BD folder: an error naming it, unless LR is made on the fly with BD.
    with pytest.raises(DataError, match=r"sequences_BDx4 \(Vimeo-90K LR folder\): LR frames not found"):
        _ds("vimeo", tmp_path, degradation="BD")
    bd = _ds("vimeo", tmp_path, degradation="BD", lr_source="on_the_fly")
    assert bd.lr_files is None
    _assert_on_the_fly_aligned(bd, kind="BD")


def test_vid4_non_square(tmp_path):
    syn.write_vid4(tmp_path)
    ds = _ds("vid4", tmp_path)
    assert [c.name for c in ds.clips] == ["calendar", "city"]
    assert ds.clips[0].hr_hw == (48, 64) and ds.clips[0].lr_hw == (12, 16)
    _assert_stored_lr_aligned(ds)
    name, lr, hr = next(iter_clips(ds, max_frames=4))
    assert name == "calendar" and lr.shape == (4, 12, 16, 3) and hr.shape == (4, 48, 64, 3)


def test_frames_with_and_without_lr(tmp_path):
    syn.write_frames(tmp_path / "a")
    _assert_on_the_fly_aligned(_ds("frames", tmp_path / "a"))
    syn.write_frames(tmp_path / "b", with_lr=True)
    ds = _ds("frames", tmp_path / "b")
    assert ds.lr_files is not None and [c.name for c in ds.clips] == ["a", "b"]
    _assert_stored_lr_aligned(ds)
    assert _ds("frames", tmp_path / "b" / "hr").lr_files is not None  # root/../lr sibling


def test_iter_clips_crops_hr_to_multiple_of_scale(tmp_path):
    syn.write_frames(tmp_path, clips=("odd",), num_frames=3, size=(50, 66))
    ds = _ds("frames", tmp_path)
    assert ds.clips[0].lr_hw == (12, 16)
    _, lr, hr = next(iter_clips(ds))
    assert lr.shape == (3, 12, 16, 3) and hr.shape == (3, 48, 64, 3)


def test_video_folder_whole_and_split(tmp_path):
    syn.write_videos(tmp_path, names=("v1", "v2"), num_frames=12)
    whole = _ds("video", tmp_path)
    assert [(c.name, c.num_frames) for c in whole.clips] == [("v1", 12), ("v2", 12)]
    split = _ds("video", tmp_path, clip_len=5)
    assert [(c.name, c.num_frames) for c in split.clips] == [
        ("v1_0000", 5), ("v1_0001", 5), ("v2_0000", 5), ("v2_0001", 5)]
    # FFV1 is lossless: the second clip of v1 is frames 5..9 of the written clip.
    _, _, hr = list(iter_clips(split))[1]
    np.testing.assert_array_equal(hr, syn.smooth_clip(12, 64, 64, seed=40)[5:10])
    _assert_on_the_fly_aligned(split)


def test_video_single_mp4_file(tmp_path):
    syn.write_videos(tmp_path, names=("clip",), num_frames=6, codec="libx264")
    ds = _ds("video", tmp_path / "clip.mp4")
    assert ds.clips[0].num_frames == 6 and ds.clips[0].hr_hw == (64, 64)
    assert read_video(tmp_path / "clip.mp4").shape == (6, 64, 64, 3)
