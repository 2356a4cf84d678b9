"""Sampling: determinism, rank disjointness, augmentation, DataLoader workers, cache and RAM copies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mgvsr.config import DatasetConfig
from mgvsr.data import AugmentConfig, StepBatches, build_dataset, make_batch, write_cache
import synthetic as syn
from mgvsr.data.build import build_source, cache_origin
from mgvsr.data.sampling import _augment, draw_picks

NO_AUG = AugmentConfig(flip=False, rot=False, reverse=False)
ALL_AUG = AugmentConfig(flip=True, rot=True, reverse=True)


@pytest.fixture(scope="module")
def reds_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("reds")
    syn.write_reds(root, clips=tuple(f"{i:03d}" for i in range(1, 9)), num_frames=8)
    return root


@pytest.fixture(scope="module")
def reds(reds_root):
    return build_dataset(DatasetConfig(kind="reds", root=str(reds_root)))


class Shapes:
    """A picklable multigrid-like schedule: the shape changes every 2 steps."""

    def __call__(self, step: int) -> tuple[int, int, int]:
        return [(3, 8, 2), (5, 12, 3), (7, 16, 2)][(step // 2) % 3]


def _batch(ds, **kw):
    args = dict(seed=7, step=5, rank=0, world_size=1, num_frames=4, lr_patch=8, batch_size=3, aug=ALL_AUG)
    args.update(kw)
    return make_batch(ds, **args)


def test_shapes_dtype_and_range(reds):
    lr, hr = _batch(reds, num_frames=5, lr_patch=12, batch_size=2)
    assert lr.shape == (2, 5, 3, 12, 12) and hr.shape == (2, 5, 3, 48, 48)
    assert lr.dtype == hr.dtype == torch.float32
    assert 0 <= lr.min() and lr.max() <= 1 and 0 <= hr.min() and hr.max() <= 1


def test_same_inputs_same_batch_and_steps_differ(reds):
    a, b = _batch(reds), _batch(reds)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = _batch(reds, step=6)
    assert not torch.equal(a[1], c[1])
    d = _batch(reds, seed=8)
    assert not torch.equal(a[1], d[1])


def test_ranks_draw_disjoint_clips_and_cover_the_global_batch(reds):
    picks = draw_picks(reds, 7, 5, 8, 4, 8, ALL_AUG, (1,))
    assert len({p.clip for p in picks}) == 8  # 8 clips, 8 picks: a permutation
    per_rank = [_batch(reds, rank=r, world_size=4, batch_size=2)[1] for r in range(4)]
    rows = [x for batch in per_rank for x in batch]
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            assert not torch.equal(rows[i], rows[j])
    # The slices are the global batch of one rank with world_size 1 and batch 8.
    full = _batch(reds, batch_size=8)[1]
    assert torch.equal(torch.cat(per_rank), full)


def test_augmentation_is_shared_by_lr_hr_and_frames(reds):
    picks = draw_picks(reds, 3, 1, 4, 4, 8, ALL_AUG, (1,))
    assert any(p.hflip or p.vflip or p.transpose or p.reverse for p in picks)
    lr, hr = make_batch(reds, seed=3, step=1, num_frames=4, lr_patch=8, batch_size=4, aug=ALL_AUG)
    for b, p in enumerate(picks):
        idx = np.arange(p.start, p.start + 4)
        raw_lr, raw_hr = reds.read_crop(p.clip, idx, p.top, p.left, 8)
        exp_lr = torch.from_numpy(np.ascontiguousarray(_augment(raw_lr, p))).permute(0, 3, 1, 2)
        exp_hr = torch.from_numpy(np.ascontiguousarray(_augment(raw_hr, p))).permute(0, 3, 1, 2)
        assert torch.equal((lr[b] * 255).round().byte(), exp_lr)
        assert torch.equal((hr[b] * 255).round().byte(), exp_hr)
    # The flip itself: a horizontally flipped sample is the mirror of the unflipped one.
    x = np.arange(2 * 2 * 3 * 3).reshape(2, 2, 3, 3)
    flipped = _augment(x, picks[0].__class__(0, 0, 1, 0, 0, True, False, False, False))
    np.testing.assert_array_equal(flipped, x[:, :, ::-1])


def test_intervals_are_respected(reds):
    picks = draw_picks(reds, 0, 0, 16, 3, 8, NO_AUG, (1, 3))
    assert {p.interval for p in picks} == {1, 3}
    assert all(p.start + 2 * p.interval < 8 for p in picks)


def test_step_batches_workers_match_single_process(reds):
    ds = StepBatches(reds, Shapes(), seed=1, rank=0, world_size=1, aug=ALL_AUG, intervals=(1,))
    ref = [ds[s] for s in range(2, 7)]
    assert ref[0][0].shape == (3, 5, 3, 12, 12) and ref[2][0].shape == (2, 7, 3, 16, 16)
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=None, sampler=range(2, 7), num_workers=workers)
        got = list(loader)
        assert len(got) == len(ref)
        for (a, b), (c, d) in zip(got, ref):
            assert torch.equal(a, c) and torch.equal(b, d)


def test_cache_and_in_memory_give_identical_batches(reds_root, reds, tmp_path):
    cfg = DatasetConfig(kind="reds", root=str(reds_root))
    write_cache(build_source(cfg), tmp_path / "cache", cache_origin(cfg, 4))
    cached = build_dataset(DatasetConfig(kind="reds", root=str(reds_root), cache=str(tmp_path / "cache")))
    in_ram = build_dataset(DatasetConfig(kind="reds", root=str(reds_root), in_memory=True))
    ref = _batch(reds, batch_size=4)
    for other in (cached, in_ram):
        got = _batch(other, batch_size=4)
        assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])
    # Memory-mapped cache works in worker processes (maps reopen lazily).
    ds = StepBatches(cached, Shapes(), seed=1)
    got = list(DataLoader(ds, batch_size=None, sampler=range(3), num_workers=2))
    want = [StepBatches(reds, Shapes(), seed=1)[s] for s in range(3)]
    assert all(torch.equal(a[1], b[1]) for a, b in zip(got, want))
