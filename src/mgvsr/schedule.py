"""The training schedule: clip length, patch size, batch and LR multiplier as a pure function of the step.

Nothing here keeps state: :func:`spec_at` answers "what does optimisation step ``step`` look like?"
from the config alone, so resuming, data-loader workers and the ``mgvsr schedule`` table all agree.

Conventions
-----------
* Steps are 0-based: a run is ``range(cfg.schedule.total_iters)``.
* The run is cut into *phases*: contiguous runs of steps with one (T, patch, batch). Each phase
  belongs to a *stage*: a spatial stage of multigrid, one repetition of the long cycle for
  ``cycles``, the whole run for ``fixed``. ``cosine_restart`` restarts at every stage.
* Iteration shares become integer boundaries by rounding the cumulative share half up
  (``boundary_k = floor(total * (s_1 + ... + s_k) / sum(s) + 1/2)``), so the phase lengths always sum
  exactly to the total, and the leftovers of rounding land deterministically. Phases that round to
  zero steps are dropped; ``Phase.index`` counts the phases that remain, ``Phase.stage`` keeps the
  nominal stage number.
* Clip length for a fraction ``f``: ``min(T, max(2, floor(f * T + 1/2)))`` (T=15 -> 8, 11, 15).
  Patch size for a spatial fraction ``f`` (cycles): ``min(P, max(16, floor(f * P + 1/2)))``.
* ``batch_size`` is per device. With ``scale_batch`` it is ``min(max_batch, floor(B * T * P^2 /
  (t * p^2)))`` for a phase of shape (t, p), so ``batch * t * p^2`` never exceeds the full shape's.
* ``lr_mult`` multiplies ``cfg.optim.lr``. It is the product of
  ``warmup(step) * policy(step) * (batch / schedule.batch_size) * large_batch``, where

  - ``warmup(step) = (step + 1) / warmup_iters`` for ``step < warmup_iters``, else 1
    (``warmup_from: zero``); with ``warmup_from: base`` (Goyal et al.: start at the unscaled LR)
    ``warmup(step) = 1/g + (1 - 1/g) * step / warmup_iters``, ``g`` the ``large_batch`` factor below,
    so the first step runs at exactly ``optim.lr``; with
    ``cosine_restart`` a stage other than the first also ramps ``(k + 1) / restart_warmup_iters`` over
    its first ``restart_warmup_iters`` steps ``k``;
  - ``policy`` is 1 for ``constant``; for the cosines it is
    ``r + (1 - r) * (1 + cos(pi * k / (n - 1))) / 2`` with ``r = optim.eta_min / optim.lr``, ``k`` the
    step inside the window (whole run, or the stage for ``cosine_restart``) and ``n`` its length, so
    the first step of the window has multiplier 1 and the last exactly ``r`` (1 if ``n == 1``);
  - the batch factor is 1 unless ``scale_batch`` changes the batch (linear LR scaling, Wu et al.);
  - ``large_batch`` is ``g(schedule.batch_size * world_size * optim.accum_steps / optim.ref_batch)``
    with ``g`` the identity (``linear``, Goyal et al.) or ``sqrt``, and 1 for ``none``.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Sequence

from mgvsr.config import Config, ConfigError, ScheduleConfig, to_dict


@dataclass(frozen=True)
class StepSpec:
    """What the trainer needs for one optimisation step (``batch_size`` is per device)."""

    step: int
    stage: int
    phase: int
    num_frames: int
    patch_size: int
    batch_size: int
    lr_mult: float


@dataclass(frozen=True)
class Phase:
    """Steps ``start <= step < end`` share one shape; ``stage`` is the LR-restart unit they belong to."""

    index: int
    stage: int
    start: int
    end: int
    num_frames: int
    patch_size: int
    batch_size: int

    @property
    def iters(self) -> int:
        return self.end - self.start


# --------------------------------------------------------------------------------------------------
# Rounding rules
# --------------------------------------------------------------------------------------------------


def _round_half_up(x: Fraction | float) -> int:
    return math.floor(Fraction(x) + Fraction(1, 2))


def split_iters(total: int, shares: Sequence[float] | None, count: int) -> list[int]:
    """Split ``total`` steps into ``count`` parts proportional to ``shares`` (None = equal).

    The k-th boundary is the cumulative share rounded half up, so the parts sum exactly to ``total``.
    """
    weights = [Fraction(1)] * count if shares is None else [Fraction(s) for s in shares]
    if len(weights) != count or any(w <= 0 for w in weights):
        raise ConfigError(f"need {count} positive shares, got {list(shares or [])}")
    norm = sum(weights)
    bounds, acc = [0], Fraction(0)
    for w in weights:
        acc += w
        bounds.append(_round_half_up(total * acc / norm))
    return [b - a for a, b in zip(bounds, bounds[1:])]


def frames_for(fraction: float, num_frames: int) -> int:
    """Clip length for a fraction of the full length: round half up, at least 2, at most the full."""
    return min(num_frames, max(2, _round_half_up(Fraction(fraction) * num_frames)))


def patch_for(fraction: float, patch_size: int) -> int:
    """LR patch size for a fraction of the full size: round half up, at least 16, at most the full."""
    return min(patch_size, max(16, _round_half_up(Fraction(fraction) * patch_size)))


def scaled_batch(s: ScheduleConfig, num_frames: int, patch_size: int) -> int:
    """Per-device batch for a shape: the full batch, or (``scale_batch``) the largest batch whose
    ``batch * T * h * w`` does not exceed the full shape's, capped at ``max_batch``."""
    if not s.scale_batch:
        return s.batch_size
    budget = s.batch_size * s.num_frames * s.patch_size**2
    return max(1, min(s.max_batch, budget // (num_frames * patch_size**2)))


# --------------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------------


def _build_phases(s: ScheduleConfig) -> tuple[Phase, ...]:
    # Per stage: its (T, patch) shapes and their relative shares (None = equal).
    stages: list[tuple[list[tuple[int, int]], Sequence[float] | None]]
    if s.kind == "fixed":
        stage_iters = [s.total_iters]
        stages = [([(s.num_frames, s.patch_size)], None)]
    elif s.kind == "multigrid":
        stage_iters = split_iters(s.total_iters, s.stage_shares, len(s.spatial_stages))
        stages = [
            ([(frames_for(f, s.num_frames), p) for f in s.temporal_fractions], s.temporal_shares)
            for p in s.spatial_stages
        ]
    elif s.kind == "cycles":
        stage_iters = split_iters(s.total_iters, None, s.long_cycles)
        shapes = [(frames_for(ft, s.num_frames), patch_for(fs, s.patch_size)) for ft, fs in s.cycle_shapes]
        stages = [(shapes, None)] * s.long_cycles
    else:  # pragma: no cover  (the config loader rejects other kinds)
        raise ConfigError(f"schedule.kind: unknown kind {s.kind!r}")

    table: list[Phase] = []
    start = 0
    for stage, (n_stage, (shapes, shares)) in enumerate(zip(stage_iters, stages)):
        for n, (t, p) in zip(split_iters(n_stage, shares, len(shapes)), shapes):
            if n == 0:
                continue
            table.append(Phase(len(table), stage, start, start + n, t, p, scaled_batch(s, t, p)))
            start += n
    assert start == s.total_iters, (start, s.total_iters)
    return tuple(table)


def _freeze(value):
    return tuple(_freeze(x) for x in value) if isinstance(value, list) else value


def _thaw(value):
    return [_thaw(x) for x in value] if isinstance(value, tuple) else value


@lru_cache(maxsize=32)
def _phases_cached(key: tuple) -> tuple[Phase, ...]:
    return _build_phases(ScheduleConfig(**{name: _thaw(value) for name, value in key}))


def phases(cfg: Config, world_size: int = 1) -> list[Phase]:
    """The run's phases in order; they tile ``range(total_iters)`` exactly.

    ``world_size`` does not change shapes (``batch_size`` is per device); it is accepted so that
    callers can pass the same arguments as to :func:`spec_at`. Results are cached per schedule.
    """
    _check_world_size(world_size)
    key = tuple((name, _freeze(value)) for name, value in to_dict(cfg.schedule).items())
    return list(_phases_cached(key))


# --------------------------------------------------------------------------------------------------
# Learning rate
# --------------------------------------------------------------------------------------------------


def large_batch_factor(cfg: Config, world_size: int = 1) -> float:
    """Goyal et al.: LR scale for the global batch ``batch_size * world_size * accum_steps``."""
    o = cfg.optim
    if o.lr_scaling == "none":
        return 1.0
    ratio = cfg.schedule.batch_size * world_size * o.accum_steps / o.ref_batch
    return ratio if o.lr_scaling == "linear" else math.sqrt(ratio)


def _cosine(k: int, n: int, floor: float) -> float:
    if n <= 1:
        return 1.0
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * k / (n - 1)))


def _lr_mult(cfg: Config, step: int, phase: Phase, stage_start: int, stage_end: int, world_size: int) -> float:
    s, o = cfg.schedule, cfg.optim
    floor = o.eta_min / o.lr
    if s.lr_policy == "constant":
        mult = 1.0
    elif s.lr_policy == "cosine":
        mult = _cosine(step, s.total_iters, floor)
    else:  # cosine_restart
        mult = _cosine(step - stage_start, stage_end - stage_start, floor)
    scale = large_batch_factor(cfg, world_size)
    if step < s.warmup_iters:
        if s.warmup_from == "base":
            mult *= 1.0 / scale + (1.0 - 1.0 / scale) * step / s.warmup_iters
        else:
            mult *= (step + 1) / s.warmup_iters
    if s.lr_policy == "cosine_restart" and phase.stage > 0 and step - stage_start < s.restart_warmup_iters:
        mult *= (step - stage_start + 1) / s.restart_warmup_iters
    mult *= phase.batch_size / s.batch_size
    return mult * scale


def _stage_bounds(all_phases: Sequence[Phase], stage: int) -> tuple[int, int]:
    members = [p for p in all_phases if p.stage == stage]
    return members[0].start, members[-1].end


def _check_world_size(world_size: int) -> None:
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")


def _find_phase(all_phases: Sequence[Phase], step: int) -> Phase:
    starts = [p.start for p in all_phases]
    return all_phases[bisect.bisect_right(starts, step) - 1]


def spec_at(cfg: Config, step: int, world_size: int = 1) -> StepSpec:
    """Shape and LR multiplier of optimisation step ``step`` (0-based, ``< schedule.total_iters``)."""
    total = cfg.schedule.total_iters
    if not isinstance(step, int) or not 0 <= step < total:
        raise ValueError(f"step {step!r} is outside the run: schedule.total_iters = {total} (steps 0..{total - 1})")
    all_phases = phases(cfg, world_size)
    phase = _find_phase(all_phases, step)
    start, end = _stage_bounds(all_phases, phase.stage)
    return StepSpec(
        step=step,
        stage=phase.stage,
        phase=phase.index,
        num_frames=phase.num_frames,
        patch_size=phase.patch_size,
        batch_size=phase.batch_size,
        lr_mult=_lr_mult(cfg, step, phase, start, end, world_size),
    )


def lr_range(cfg: Config, phase: Phase, world_size: int = 1) -> tuple[float, float]:
    """(min, max) of ``lr_mult`` over a phase.

    Outside warmups the multiplier is monotone (cosine or constant), so only the phase ends and
    the steps inside warmup windows (short) need evaluating; the result is exact.
    """
    s = cfg.schedule
    start, _ = _stage_bounds(phases(cfg, world_size), phase.stage)
    candidates = {phase.start, phase.end - 1}
    windows = [(0, s.warmup_iters + 1)]
    if s.lr_policy == "cosine_restart":
        windows.append((start, start + s.restart_warmup_iters + 1))
    for lo, hi in windows:
        candidates.update(range(max(lo, phase.start), min(hi, phase.end)))
    values = [spec_at(cfg, k, world_size).lr_mult for k in candidates]
    return min(values), max(values)


class ShapeFn:
    """Picklable ``step -> (num_frames, patch_size, batch_size)`` for data-loader workers.

    It holds only the phase table (plain tuples). Steps past the end of the run reuse the last
    phase's shape, so a loader that prefetches a few batches beyond the last step does not fail.
    """

    def __init__(self, cfg: Config, world_size: int = 1) -> None:
        table = phases(cfg, world_size)
        self._starts = [p.start for p in table]
        self._shapes = [(p.num_frames, p.patch_size, p.batch_size) for p in table]

    def __call__(self, step: int) -> tuple[int, int, int]:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return self._shapes[bisect.bisect_right(self._starts, step) - 1]

    def __repr__(self) -> str:
        return f"ShapeFn({len(self._shapes)} phases)"
