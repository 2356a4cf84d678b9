"""Deterministic, variable-shape batch sampling for training and whole-clip iteration for validation.

A training batch is a pure function of ``(seed, step, rank, world_size, shape)``: the global picks of
a step (``world_size * batch_size`` clip/start/crop/augmentation draws) come from one RNG seeded with
``[seed, step]``, and each rank takes its own slice. So a resumed or distributed run sees exactly the
batches it would have seen, and ranks never share a pick within a step. Clips are drawn from
back-to-back random permutations, so the picks of one step use distinct clips whenever the dataset
has at least ``world_size * batch_size`` clips.

Tensors: ``lr`` is float32 ``(b, T, 3, p, p)`` and ``hr`` float32 ``(b, T, 3, s*p, s*p)`` in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from mgvsr.data.degrade import degrade_frames
from mgvsr.data.io import DataError
from mgvsr.data.sources import ClipSource


@dataclass(frozen=True)
class AugmentConfig:
    """BasicVSR augmentation: horizontal flip, vertical flip + transposition (rotation), time reversal."""

    flip: bool = True
    rot: bool = True
    reverse: bool = False


@dataclass(frozen=True)
class Pick:
    """One training sample: frames ``start + interval * arange(T)`` of clip ``clip``, LR crop at (top, left)."""

    clip: int
    start: int
    interval: int
    top: int
    left: int
    hflip: bool
    vflip: bool
    transpose: bool
    reverse: bool


def check_shape(dataset: ClipSource, num_frames: int, lr_patch: int, intervals: Sequence[int] = (1,)) -> None:
    """Fail early when some clip is shorter than ``num_frames`` or smaller than the LR crop."""
    if num_frames < 1 or lr_patch < 1:
        raise DataError(f"num_frames ({num_frames}) and lr_patch ({lr_patch}) must be >= 1")
    span = (num_frames - 1) * min(intervals) + 1
    for c in dataset.clips:
        if c.num_frames < span:
            raise DataError(
                f"{dataset.description}: clip '{c.name}' has {c.num_frames} frames, fewer than the requested "
                f"T={num_frames} (interval {min(intervals)})"
            )
        if min(c.lr_hw) < lr_patch:
            raise DataError(
                f"{dataset.description}: clip '{c.name}' LR frames are {c.lr_hw[0]}x{c.lr_hw[1]} (HxW), "
                f"smaller than the requested crop {lr_patch}x{lr_patch}"
            )


def draw_picks(dataset: ClipSource, seed: int, step: int, count: int, num_frames: int, lr_patch: int,
               aug: AugmentConfig, intervals: Sequence[int]) -> list[Pick]:
    """The ``count`` global picks of ``step`` (all ranks), from one RNG seeded with ``[seed, step]``."""
    rng = np.random.default_rng([seed, step])
    n = len(dataset.clips)
    order = np.concatenate([rng.permutation(n) for _ in range(-(-count // n))])[:count]
    picks = []
    for k in order:
        c = dataset.clips[int(k)]
        feasible = [iv for iv in intervals if (num_frames - 1) * iv + 1 <= c.num_frames]
        if not feasible or min(c.lr_hw) < lr_patch:
            check_shape(dataset, num_frames, lr_patch, intervals)  # raises with the clip's name
        iv = int(feasible[rng.integers(len(feasible))])
        start = int(rng.integers(c.num_frames - (num_frames - 1) * iv))
        top = int(rng.integers(c.lr_hw[0] - lr_patch + 1))
        left = int(rng.integers(c.lr_hw[1] - lr_patch + 1))
        flags = rng.random(4) < 0.5
        picks.append(Pick(int(k), start, iv, top, left,
                          hflip=bool(aug.flip and flags[0]), vflip=bool(aug.rot and flags[1]),
                          transpose=bool(aug.rot and flags[2]), reverse=bool(aug.reverse and flags[3])))
    return picks


def _augment(x: np.ndarray, p: Pick) -> np.ndarray:
    """Apply a pick's augmentation to ``(T, H, W, 3)``: the same for every frame, for LR and HR."""
    if p.hflip:
        x = x[:, :, ::-1]
    if p.vflip:
        x = x[:, ::-1]
    if p.transpose:
        x = x.transpose(0, 2, 1, 3)
    if p.reverse:
        x = x[::-1]
    return x


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """``uint8 (..., H, W, 3)`` -> float32 ``(..., 3, H, W)`` in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.movedim(-1, -3).float().div_(255.0)


def load_picks(dataset: ClipSource, picks: Sequence[Pick], num_frames: int,
               lr_patch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """uint8 ``(lr (T,p,p,3), hr (T,s*p,s*p,3))`` per pick, augmented.

    LR that is made on the fly is degraded for all picks in one call (same crop size), before the
    augmentation, so it is the degradation of exactly the HR crop.
    """
    raw = []
    for p in picks:
        idx = p.start + p.interval * np.arange(num_frames)
        raw.append(dataset.read_crop_raw(p.clip, idx, p.top, p.left, lr_patch))
    missing = [k for k, (lr, _) in enumerate(raw) if lr is None]
    if missing:
        made = degrade_frames(np.concatenate([raw[k][1] for k in missing]), dataset.degradation, dataset.scale)
        for j, k in enumerate(missing):
            raw[k] = (made[j * num_frames : (j + 1) * num_frames], raw[k][1])
    return [(_augment(lr, p), _augment(hr, p)) for (lr, hr), p in zip(raw, picks)]


def make_batch(dataset: ClipSource, *, seed: int, step: int, rank: int = 0, world_size: int = 1,
               num_frames: int, lr_patch: int, batch_size: int, aug: AugmentConfig = AugmentConfig(),
               intervals: Sequence[int] = (1,)) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's batch of ``step``: ``lr (b, T, 3, p, p)``, ``hr (b, T, 3, s*p, s*p)``, float32 in [0, 1]."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
    picks = draw_picks(dataset, seed, step, world_size * batch_size, num_frames, lr_patch, aug, intervals)
    mine = picks[rank * batch_size : (rank + 1) * batch_size]
    pairs = load_picks(dataset, mine, num_frames, lr_patch)
    lr = to_tensor(np.stack([a for a, _ in pairs]))
    hr = to_tensor(np.stack([b for _, b in pairs]))
    return lr, hr


class StepBatches(torch.utils.data.Dataset):
    """``ds[k]``: the batch of step ``k // accum_steps`` (micro-batch ``k % accum_steps``) for this rank,
    with the shape ``shape_fn(step) = (T, lr_patch, batch)``.

    With gradient accumulation each micro-batch acts as an extra "virtual rank" (``rank * accum + micro``
    of ``world_size * accum``), so one process accumulating ``a`` micro-batches sees exactly the samples
    that ``a`` processes would. Use with ``DataLoader(ds, batch_size=None,
    sampler=range(start * accum, total * accum))`` so workers prefetch future steps; ``shape_fn`` must be
    picklable when ``num_workers > 0``.
    """

    def __init__(self, dataset: ClipSource, shape_fn: Callable[[int], tuple[int, int, int]], seed: int,
                 rank: int = 0, world_size: int = 1, aug: AugmentConfig = AugmentConfig(),
                 intervals: Sequence[int] = (1,), accum_steps: int = 1):
        if accum_steps < 1:
            raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
        self.dataset = dataset
        self.shape_fn = shape_fn
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.aug = aug
        self.intervals = tuple(intervals)
        self.accum = accum_steps

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        step, micro = divmod(int(k), self.accum)
        num_frames, lr_patch, batch_size = self.shape_fn(step)
        return make_batch(self.dataset, seed=self.seed, step=step, rank=self.rank * self.accum + micro,
                          world_size=self.world_size * self.accum, num_frames=num_frames, lr_patch=lr_patch,
                          batch_size=batch_size, aug=self.aug, intervals=self.intervals)


def iter_clips(
    dataset: ClipSource, max_frames: int = 0, indices: Optional[Iterable[int]] = None
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield ``(name, lr uint8 (T,h,w,3), hr uint8 (T,s*h,s*w,3))`` for every clip (first ``max_frames``),
    or only for the clips at ``indices`` (e.g. one rank's share of a validation set)."""
    for i in range(len(dataset.clips)) if indices is None else indices:
        c = dataset.clips[i]
        n = c.num_frames if max_frames <= 0 else min(max_frames, c.num_frames)
        lr, hr = dataset.read_clip(i, range(n))
        yield c.name, lr, hr
