"""``mgvsr train``: the training loop, readable top to bottom.

    config ──► model, optimiser, data ──► for step in range(start, total):
                                               spec = schedule.spec_at(cfg, step)   (T, patch, batch, lr)
                                               batch = the (seed, step, rank) batch at that shape
                                               forward / backward / (skip if non-finite) / step / EMA
                                               log · checkpoint · stop if asked · validate

Everything that must agree across ranks and across a resume (shape, LR, which samples) is a function of
the global step, so a resumed run continues exactly where the interrupted one stopped. A stop request
(SIGINT / SIGTERM) travels with the loss in the step's all-reduce, so every rank stops after the same
step, saves it once and exits 0.

A step does not wait for the device: whether its loss or gradient is finite is decided on the device,
which skips the optimiser and EMA updates of a bad step itself; the host reads the loss, the gradient
norm and the count of skipped steps only on steps that log, save or stop (and on every step while a run
of bad steps is in progress). See docs/performance.md.
Launch on several devices with ``torchrun --nproc_per_node N -m mgvsr.cli train CONFIG``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, NoReturn, Optional

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from mgvsr import __version__
from mgvsr.checkpoint import Checkpointer, rng_state, set_rng_state
from mgvsr.config import Config, load_config, save_config, to_dict
from mgvsr.data import AugmentConfig, StepBatches, build_dataset, check_shape
from mgvsr.distributed import DistInfo, all_reduce_loss_and_stop, barrier, cleanup, init_distributed
from mgvsr.errors import MgvsrError
from mgvsr.evaluation import score_model
from mgvsr.losses import sr_loss
from mgvsr.models import build_model
from mgvsr.models.weights import save_safetensors
from mgvsr.optim import EMA, flow_frozen, make_optimizer, optimizer_step, set_flow_trainable, set_lr
from mgvsr.report import final_report
from mgvsr.runtime import (autocast_context, channels_last_model, configure_backends, resolve_amp,
                           resolve_channels_last, to_channels_last_clip, tune_allocator, warn_if_bf16_emulated)
from mgvsr.schedule import ShapeFn, phases, spec_at
from mgvsr.tracking import Tracker, write_json


class NonFiniteError(MgvsrError, RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""

    exit_code = 1  # the run diverged: not a usage error


class ResumeError(MgvsrError, RuntimeError):
    """A run cannot be started or resumed as asked (checkpoint of another experiment, run folder in use)."""


# --------------------------------------------------------------------------------------------------
# Which config changes make a resumed run a different experiment
# --------------------------------------------------------------------------------------------------

# Sections whose change would make a resumed run a different experiment (logging, validation and
# loader settings may change freely).
RESUME_KEYS = ("model", "schedule", "optim", "data.train", "data.use_flip", "data.use_rot",
               "data.use_reverse", "data.intervals", "train.seed")
# Where the same data or weights are read from, not what they are: a moved dataset root, a packed cache
# or BasicSR LMDB folders of the same dataset (set or unset) and in-RAM loading. ``model.init_weights``
# is only the starting point, which the checkpoint replaces.
RESUME_IGNORED = ("data.train.root", "data.train.cache", "data.train.gt_lmdb", "data.train.lq_lmdb",
                  "data.train.in_memory", "model.init_weights", "optim.adam_impl")
# optim.adam_impl only changes float rounding, and every implementation reads the others' state.
# Pretrained sub-networks: whether one was loaded is part of the recipe, the file's path is not.
RESUME_PRESENCE_ONLY = ("model.spynet_weights", "model.edvr_weights")


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part, {}) if isinstance(tree, dict) else {}
    return tree


def _diff(old, new, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key), new.get(key), f"{prefix}.{key}")
        return out
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def experiment_changes(saved: dict, current: dict) -> list[str]:
    """``"key: old -> new"`` for every difference between two config dicts that changes the experiment."""
    changes = []
    for key in RESUME_KEYS:
        changes += _diff(_lookup(saved, key), _lookup(current, key), key)
    kept = []
    for change in changes:
        key = change.split(":", 1)[0]
        if key in RESUME_IGNORED:
            continue
        if key in RESUME_PRESENCE_ONLY and (_lookup(saved, key) is None) == (_lookup(current, key) is None):
            continue  # the same kind of start, read from another path
        kept.append(change)
    return kept


def check_resumable(state: dict, cfg: Config, path: Path) -> None:
    """Refuse to resume a checkpoint of a different experiment, or one past the end of this run."""
    changes = experiment_changes(state.get("config", {}), to_dict(cfg))
    if changes:
        raise ResumeError(
            f"{path} was written by a run with a different config ({'; '.join(changes[:6])}"
            f"{' ...' if len(changes) > 6 else ''}). Resume with the same config, or start a new run "
            "(another train.name)."
        )
    if int(state["step"]) > cfg.schedule.total_iters:
        raise ResumeError(
            f"{path} is at step {state['step']}, past schedule.total_iters={cfg.schedule.total_iters}"
        )


# --------------------------------------------------------------------------------------------------
# Stop requests
# --------------------------------------------------------------------------------------------------


class StopRequest:
    """Within ``with StopRequest() as stop``, the first Ctrl-C or SIGTERM sets ``stop.requested``; the
    loop hands it to every rank with the step's loss all-reduce, finishes that step, saves and returns.
    A second one interrupts at once. Handlers are restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        print(f"\n{self.requested}: saving and stopping at the end of a step (again to stop now)", flush=True)


# --------------------------------------------------------------------------------------------------
# What a run trains and what it counts
# --------------------------------------------------------------------------------------------------


@dataclass
class Learner:
    """Everything training changes: the model, its EMA, the optimiser and the fp16 loss scaler."""

    model: nn.Module
    ema: Optional[EMA]
    optimizer: torch.optim.Optimizer
    scaler: Optional[torch.amp.GradScaler]

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated and published: the EMA's when there is one."""
        return self.ema.model if self.ema is not None else self.model


@dataclass
class StepResult:
    """One step as the device left it: tensors the host has not read (no synchronisation)."""

    loss: torch.Tensor  # 0-d: mean over ranks of this step's loss
    grad_norm: torch.Tensor  # 0-d: norm of the (averaged, unscaled) gradient before clipping
    bad: torch.Tensor  # 0-d bool: the step counts as non-finite and was skipped
    stop: bool  # some rank asked to stop: every rank gets the same answer
    seconds: float
    data_wait: float


@dataclass
class StepValues:
    """What the host reads of a step on the steps that log, save or stop."""

    loss: float
    grad_norm: float
    bad: bool
    new_bad: int  # steps skipped since the previous read (this one included)


@dataclass
class Progress:
    """Where the run stands. The first five fields travel in checkpoints; the rest are reported or
    feed the non-finite stop rule.

    ``skipped`` and ``bad_streak`` are counted on the device by :meth:`record` and brought to the host
    by :meth:`record` with ``read=True``; between reads they hold the values of the last read.
    """

    step: int = 0  # steps done
    train_time: float = 0.0  # seconds in training steps (validation and saving excluded)
    data_time: float = 0.0  # of which waiting for batches
    skipped: int = 0  # steps skipped for a non-finite loss/gradient
    bad_streak: int = 0  # consecutive skipped steps
    last_loss: float = math.nan
    last_val: Optional[tuple[int, dict]] = None  # (step, metrics) of the latest validation
    worst_streak: int = 0  # longest run of consecutive skipped steps seen up to the last read
    _new_bad: Optional[torch.Tensor] = None  # device: skipped steps not yet read
    _streak: Optional[torch.Tensor] = None  # device: consecutive skipped steps up to now
    _worst: Optional[torch.Tensor] = None  # device: longest such run since the last read

    def record(self, result: StepResult, read: bool) -> Optional[StepValues]:
        """Count one finished step; with ``read`` bring this step's values and the counters to the
        host (one synchronisation, its wait counted as training time) and return them."""
        self.step += 1
        bad = result.bad.to(torch.int64)
        if self._streak is None:
            self._streak = torch.full((), self.bad_streak, dtype=torch.int64, device=bad.device)
            self._new_bad = torch.zeros((), dtype=torch.int64, device=bad.device)
            self._worst = self._streak.clone()
        self._new_bad = self._new_bad + bad
        self._streak = (self._streak + 1) * bad  # +1 on a bad step, back to 0 on a good one
        # A run of bad steps that ended between two reads must still stop the run at the next read.
        self._worst = torch.maximum(self._worst, self._streak)
        values = None
        if read:
            start = time.perf_counter()
            loss, grad_norm, this_bad, new_bad, streak, worst = torch.stack([
                result.loss.detach().float(), result.grad_norm.float(), bad.float(),
                self._new_bad.float(), self._streak.float(), self._worst.float(),
            ]).tolist()
            result.seconds += time.perf_counter() - start
            values = StepValues(loss, grad_norm, bool(this_bad), int(new_bad))
            self.skipped += int(new_bad)
            self.bad_streak = int(streak)
            self.worst_streak = max(self.worst_streak, int(worst))
            self._new_bad = torch.zeros_like(self._new_bad)
            self._worst = self._streak.clone()
            if not values.bad:
                self.last_loss = loss
        self.train_time += result.seconds
        self.data_time += result.data_wait
        return values

    def counters(self) -> dict:
        """The checkpointed counters (as of the last read: a checkpoint is written after one)."""
        return {"train_time": self.train_time, "data_time": self.data_time, "skipped": self.skipped,
                "bad_streak": self.bad_streak}


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def train(cfg: Config) -> dict:
    """Run (or resume) one training run; returns the summary written to ``summary.json`` (``{}`` on
    ranks other than 0), or ``{"stopped": ...}`` when a SIGINT/SIGTERM stopped it after a save."""
    tune_allocator()
    dist, device = init_distributed(cfg.train.device, cfg.train.dist_timeout_min)
    configure_backends(device)
    cfg = resolve_device_settings(cfg, device, warn=dist.is_main)
    run_dir = Path(cfg.train.out_dir) / cfg.train.name
    total = cfg.schedule.total_iters

    learner = build_learner(cfg, device)
    train_set, val_set = build_datasets(cfg, dist.world_size)
    ckpt = Checkpointer(run_dir / "checkpoints", keep_last=cfg.train.keep_last)
    progress = resume(cfg, learner, ckpt, run_dir, dist)
    tracker = Tracker(run_dir, total, progress.step, enabled=dist.is_main,
                      tensorboard=cfg.train.tensorboard, progress=cfg.train.progress)
    batches = step_batches(cfg, train_set, dist, device, progress.step)
    frozen = flow_frozen(progress.step, cfg.optim)
    net = wrap_model(learner.model, frozen, dist, device, cfg.train.compile)
    learner.model.train()

    with StopRequest() as stop:  # Ctrl-C / SIGTERM: every rank finishes the same step, saves, returns
        for step in range(progress.step, total):
            spec = spec_at(cfg, step, dist.world_size)
            lr = set_lr(learner.optimizer, spec.lr_mult)
            if flow_frozen(step, cfg.optim) != frozen:
                frozen = not frozen
                net = wrap_model(learner.model, frozen, dist, device, cfg.train.compile)

            result = train_step(net, learner, batches, cfg, device, stop)
            done = step + 1
            read = (done % cfg.train.log_every == 0 or done == total or done % cfg.train.save_every == 0
                    or result.stop or progress.bad_streak > 0)
            values = progress.record(result, read)
            if values is not None and values.new_bad:
                tracker.write(f"step {done}: {values.new_bad} step(s) with a non-finite loss/gradient skipped "
                              f"since the last log (this step: loss {values.loss}, gradient norm {values.grad_norm})")
            if values is not None and (done % cfg.train.log_every == 0 or done == total or progress.bad_streak):
                tracker.log_train({
                    "step": progress.step, "wall_time": round(progress.train_time, 4), "loss": values.loss,
                    "lr": lr, "stage": spec.stage, "num_frames": spec.num_frames, "patch_size": spec.patch_size,
                    "batch_size": spec.batch_size, "data_wait": round(result.data_wait, 5),
                    "compute": round(result.seconds - result.data_wait, 5), "skipped": progress.skipped,
                })
            if max(progress.bad_streak, progress.worst_streak) >= cfg.train.max_bad_steps:
                tracker.close()
                stop_non_finite(progress, ckpt, dist, cfg.train.max_bad_steps)
            tracker.update_bar(1, {
                "shape": f"{spec.num_frames}x{spec.patch_size}x{spec.batch_size}",
                # The loss reaches the host on logging steps only; until the first one there is none to show.
                "loss": "-" if math.isnan(progress.last_loss) else f"{progress.last_loss:.4f}", "lr": f"{lr:.2e}",
            })

            # Save first: a failing validation (or a stop request) must not cost the steps since the last save.
            if progress.step % cfg.train.save_every == 0 or progress.step == total or result.stop:
                save_checkpoint(ckpt, learner, progress, cfg, dist)
            if result.stop:
                tracker.close()
                return stopped(stop.requested, progress.step, ckpt, dist)
            if val_set is not None and cfg.train.val_every and (
                progress.step % cfg.train.val_every == 0 or progress.step == total
            ):
                run_validation(learner, val_set, cfg, tracker, progress)

    tracker.close()
    summary = finish_run(cfg, learner, progress, run_dir, val_set, dist)
    barrier()
    cleanup()
    return summary


# --------------------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------------------


def resolve_device_settings(cfg: Config, device: torch.device, warn: bool = True) -> Config:
    """``cfg`` with ``train.amp`` and ``train.channels_last`` as they apply on ``device`` (``auto``
    resolved, see :func:`mgvsr.runtime.resolve_amp`); with ``warn``, one warning when bf16 was asked
    for on a device that only emulates it."""
    amp = resolve_amp(cfg.train.amp, device)
    if warn:
        warn_if_bf16_emulated(amp, device, "train.amp")
    channels_last = resolve_channels_last(cfg.train.channels_last, device)
    return replace(cfg, train=replace(cfg.train, amp=amp, channels_last=channels_last))


def build_learner(cfg: Config, device: torch.device) -> Learner:
    """Model, EMA, optimiser and loss scaler, initialised identically on every rank (same seed)."""
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    model = build_model(cfg.model).to(device)
    if cfg.train.channels_last:
        channels_last_model(model)
    ema = EMA(model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    optimizer = make_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler(device.type) if cfg.train.amp == "fp16" else None
    return Learner(model, ema, optimizer, scaler)


def build_datasets(cfg: Config, world_size: int) -> tuple:
    """(training set, validation set or None); fails early if a scheduled shape does not fit the data."""
    train_set = build_dataset(cfg.data.train, scale=cfg.model.scale)
    for phase in phases(cfg, world_size):
        check_shape(train_set, phase.num_frames, phase.patch_size, cfg.data.intervals)
    val_set = build_dataset(cfg.data.val, scale=cfg.model.scale) if cfg.data.val is not None else None
    return train_set, val_set


def step_batches(cfg: Config, train_set, dist: DistInfo, device: torch.device, start_step: int) -> Iterator:
    """This rank's batches of steps ``start_step .. total`` (micro-batches in order), prefetched by the
    loader's workers at each step's own shape."""
    accum = cfg.optim.accum_steps
    batches_by_index = StepBatches(
        train_set, ShapeFn(cfg, dist.world_size), seed=cfg.train.seed, rank=dist.rank,
        world_size=dist.world_size,
        aug=AugmentConfig(flip=cfg.data.use_flip, rot=cfg.data.use_rot, reverse=cfg.data.use_reverse),
        intervals=cfg.data.intervals, accum_steps=accum,
    )
    loader = torch.utils.data.DataLoader(
        batches_by_index,
        batch_size=None,
        sampler=range(start_step * accum, cfg.schedule.total_iters * accum),
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if cfg.data.num_workers > 0 else None,
    )
    return iter(loader)


def wrap_model(model: nn.Module, frozen: bool, dist: DistInfo, device: torch.device, compile: bool = False) -> nn.Module:
    """(Re)build the DDP wrapper with the flow network (un)frozen: DDP fixes its set of trainable
    parameters at construction. ``compile`` (``train.compile``): the module that runs the steps is
    ``torch.compile``d (the checkpointed model stays the plain one; each new shape recompiles)."""
    set_flow_trainable(model, not frozen)
    net = model if not dist.enabled else DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(net) if compile else net


# --------------------------------------------------------------------------------------------------
# Resume and checkpoints
# --------------------------------------------------------------------------------------------------


def resume(cfg: Config, learner: Learner, ckpt: Checkpointer, run_dir: Path, dist: DistInfo) -> Progress:
    """Restore the checkpoint ``train.resume`` names (``auto``: the newest valid one) into ``learner``
    and the RNGs; prepare the run folder. A fresh run starts at step 0 and refuses a folder that already
    holds checkpoints, so a run is never overwritten by accident."""
    path = None
    if cfg.train.resume == "auto":
        path = ckpt.latest()
    elif cfg.train.resume != "none":
        path = Path(cfg.train.resume)
    elif ckpt.checkpoints():
        raise ResumeError(
            f"run folder {run_dir} already holds checkpoints (newest: {ckpt.checkpoints()[-1][1].name}); "
            "continue it with --resume auto (train.resume=auto) or start a new run with another train.name"
        )
    if dist.is_main:
        ckpt.remove_temp_files()  # left by a save that was killed mid-write
    progress = Progress() if path is None else restore(ckpt.load(path), path, cfg, learner, dist)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        if path is not None:
            print(f"resumed from {path} at step {progress.step}", flush=True)
    return progress


def restore(state: dict, path: Path, cfg: Config, learner: Learner, dist: DistInfo) -> Progress:
    """Load a checkpoint's state into ``learner`` and this rank's RNGs; return its progress."""
    check_resumable(state, cfg, path)
    learner.model.load_state_dict(state["model"])
    learner.optimizer.load_state_dict(state["optimizer"])
    # base_lr comes from this config (lr scaling may differ), and so does the implementation (fused /
    # foreach: a checkpoint written before fused Adam has neither set); the moments from the checkpoint.
    fresh = make_optimizer(learner.model, cfg.optim)
    for group, fresh_group in zip(learner.optimizer.param_groups, fresh.param_groups):
        for key in ("base_lr", "fused", "foreach"):
            group[key] = fresh_group[key]
    if learner.ema is not None:
        # A checkpoint written without EMA starts the average from the resumed weights.
        learner.ema.load_state_dict(state["ema"] if state.get("ema") is not None else learner.model.state_dict())
    if learner.scaler is not None and state.get("scaler"):
        learner.scaler.load_state_dict(state["scaler"])
    rngs = state["rng"]
    set_rng_state(rngs[dist.rank] if dist.rank < len(rngs) else rngs[0])
    if int(state.get("world_size", dist.world_size)) != dist.world_size:
        print(f"warning: resuming a {state['world_size']}-process run on {dist.world_size} processes: "
              "batches after the resume differ from the original run", flush=True)
    counters = state["counters"]
    return Progress(step=int(state["step"]), train_time=counters["train_time"], data_time=counters["data_time"],
                    skipped=counters["skipped"], bad_streak=counters["bad_streak"])


def _gather_rng(dist: DistInfo) -> list:
    """RNG states of every rank (rank 0 receives them all)."""
    state = rng_state()
    if not dist.enabled:
        return [state]
    gathered: list = [None] * dist.world_size
    torch.distributed.all_gather_object(gathered, state)
    return gathered


def save_checkpoint(ckpt: Checkpointer, learner: Learner, progress: Progress, cfg: Config, dist: DistInfo) -> None:
    """Every rank sends its RNG state to rank 0, which writes the checkpoint of ``progress.step``."""
    rngs = _gather_rng(dist)
    if not dist.is_main:
        return
    step, world, accum = progress.step, dist.world_size, cfg.optim.accum_steps
    ckpt.save(
        {
            "format": "mgvsr-checkpoint",
            "version": __version__,
            "step": step,
            "model": learner.model.state_dict(),
            "ema": learner.ema.state_dict() if learner.ema is not None else None,
            "optimizer": learner.optimizer.state_dict(),
            "scaler": learner.scaler.state_dict() if learner.scaler is not None else None,
            "rng": rngs,
            "counters": progress.counters(),
            # The sampler has no hidden position: batch k is a function of (seed, step, rank).
            "sampler": {"next_step": step, "seed": cfg.train.seed, "world_size": world, "accum_steps": accum},
            "world_size": world,
            "config": to_dict(cfg),
        },
        step,
    )


# --------------------------------------------------------------------------------------------------
# One step
# --------------------------------------------------------------------------------------------------


def train_step(net: nn.Module, learner: Learner, batches: Iterator, cfg: Config, device: torch.device,
               stop: StopRequest) -> StepResult:
    """Forward and backward over the step's micro-batches, clip, then the optimiser (and EMA) step
    unless the loss or gradient is not finite, decided on the device. Under DDP the loss all-reduce
    also carries whether this rank was asked to stop (up to that moment), so the returned ``stop`` is
    the same on every rank (reading it is the one synchronisation of a DDP step)."""
    model, optimizer, scaler, accum = learner.model, learner.optimizer, learner.scaler, cfg.optim.accum_steps
    t_start = time.perf_counter()
    data_wait = 0.0
    loss_sum = torch.zeros((), device=device)
    for micro in range(accum):
        t_data = time.perf_counter()
        lr_clip, hr_clip = next(batches)
        data_wait += time.perf_counter() - t_data
        lr_clip = lr_clip.to(device, non_blocking=True)
        hr_clip = hr_clip.to(device, non_blocking=True)
        if cfg.train.channels_last:
            lr_clip, hr_clip = to_channels_last_clip(lr_clip), to_channels_last_clip(hr_clip)
        last_micro = micro == accum - 1
        sync = net.no_sync() if isinstance(net, DDP) and not last_micro else contextlib.nullcontext()
        with sync:
            with autocast_context(device, cfg.train.amp):
                out = net(lr_clip)
            loss = sr_loss(cfg.optim.loss, out.float(), hr_clip, cfg.optim.charbonnier_eps,
                           getattr(model, "center_frame_idx", None)) / accum
            (scaler.scale(loss) if scaler is not None else loss).backward()
        loss_sum += loss.detach()

    # Gradients are already averaged over ranks here, and so is the loss after the all-reduce, so
    # every rank takes the same decision.
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = gradient_norm([p for p in model.parameters() if p.requires_grad], cfg.optim.grad_clip)
    loss_mean, stop_agreed = all_reduce_loss_and_stop(loss_sum, stop.requested is not None)
    loss_ok = torch.isfinite(loss_mean)
    step_ok = loss_ok & torch.isfinite(grad_norm)
    if scaler is not None:
        # fp16: the scaler skips steps with inf/NaN gradients itself and lowers its scale; such
        # overflows are normal early on and count as bad steps only when the loss itself is not finite.
        scaler.step(optimizer)
        scaler.update()
        bad = torch.logical_not(loss_ok)
    else:
        bad = torch.logical_not(step_ok)
        optimizer_step(optimizer, bad.float())
    if learner.ema is not None:
        learner.ema.update(model, skip=torch.logical_not(step_ok))
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_mean, grad_norm, bad, stop_agreed, time.perf_counter() - t_start, data_wait)


def gradient_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Total 2-norm of the gradients (a device tensor), clipping them to ``max_norm`` when > 0."""
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    # No clipping: the norm alone (clip_grad_norm_ with an infinite max_norm would scale by exactly 1).
    return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])


def run_validation(learner: Learner, val_set, cfg: Config, tracker: Tracker, progress: Progress) -> None:
    """Score the published weights on the validation set (every rank scores its share of the clips),
    log them (rank 0's tracker writes) and keep them for the report."""
    metrics = score_model(learner.eval_model, val_set, cfg.data.val.max_frames, cfg.train.amp,
                          cfg.train.channels_last)
    progress.last_val = (progress.step, metrics)
    tracker.log_val({"step": progress.step, "wall_time": round(progress.train_time, 4), **metrics["average"]})
    learner.model.train()


# --------------------------------------------------------------------------------------------------
# How a run ends
# --------------------------------------------------------------------------------------------------


def stopped(signal_name: Optional[str], step: int, ckpt: Checkpointer, dist: DistInfo) -> dict:
    """End a run stopped on request after ``step`` was saved; every rank returns the same step."""
    barrier()  # the checkpoint is on disk before any rank reports it
    cleanup()
    by = signal_name or "a signal to another rank"
    where = f"rank {dist.rank}: " if dist.enabled else ""
    print(f"\n{where}stopped by {by} after step {step}; checkpoint saved: {ckpt.path_for(step)}. "
          "Continue with --resume auto.", flush=True)
    return {"stopped": by, "step": step, "checkpoint": str(ckpt.path_for(step))}


def stop_non_finite(progress: Progress, ckpt: Checkpointer, dist: DistInfo, max_bad_steps: int) -> NoReturn:
    latest = ckpt.latest() if dist.is_main else None
    cleanup()
    if progress.bad_streak >= max_bad_steps:
        what = f"{progress.bad_streak} consecutive steps had a non-finite loss or gradient (last at step {progress.step - 1})"
    else:  # the run of bad steps ended between two reads of the device counters
        what = (f"{progress.worst_streak} consecutive steps had a non-finite loss or gradient (a run that ended "
                f"before step {progress.step - 1}, seen at the step-{progress.step} log)")
    raise NonFiniteError(
        f"{what}; stopped. The last good checkpoint is intact: {latest or 'none written yet'}. "
        "Lower optim.lr, set optim.grad_clip, or check the data; resume with train.resume=auto."
    )


def finish_run(cfg: Config, learner: Learner, progress: Progress, run_dir: Path, val_set, dist: DistInfo) -> dict:
    """End-of-run work: rank 0 writes the final weights (+ EMA); every rank scores its share of the
    validation clips for the report against bicubic, which rank 0 writes with ``summary.json``.
    Returns the summary on rank 0, ``{}`` on the other ranks."""
    total = cfg.schedule.total_iters
    summary = {}
    if dist.is_main:
        weights_dir = run_dir / "weights"
        weights_dir.mkdir(exist_ok=True)
        meta = {"mgvsr_version": __version__, "step": str(total), "mgvsr_model_config": json.dumps(to_dict(cfg.model))}
        save_safetensors(learner.model, weights_dir / "model.safetensors", metadata=meta)
        if learner.ema is not None:
            save_safetensors(learner.ema.model, weights_dir / "model_ema.safetensors", metadata=meta)
        world = dist.world_size
        summary = {
            "run_dir": str(run_dir),
            "steps": total,
            "train_time_s": round(progress.train_time, 3),
            "data_wait_s": round(progress.data_time, 3),
            "data_wait_share": progress.data_time / progress.train_time if progress.train_time > 0 else 0.0,
            "skipped_steps": progress.skipped,
            "final_loss": progress.last_loss,
            "world_size": world,
            "global_batch_full_shape": cfg.schedule.batch_size * world * cfg.optim.accum_steps,
            "weights": str(weights_dir / ("model_ema.safetensors" if learner.ema is not None else "model.safetensors")),
        }
    report = {}
    if val_set is not None:
        final_val = progress.last_val[1] if progress.last_val is not None and progress.last_val[0] == total else None
        report = final_report(learner.eval_model, val_set, cfg, run_dir, final_val, write=dist.is_main)
    if dist.is_main:
        summary.update(report)
        write_json(run_dir / "summary.json", summary)
    return summary


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.seed=1 schedule.total_iters=500")
    parser.add_argument("--resume", default=None, help="'auto' (newest valid checkpoint) or a checkpoint path")


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.resume:
        overrides.append(f"train.resume={args.resume}")
    cfg = load_config(args.config, overrides)
    summary = train(cfg)
    if summary and not summary.get("stopped"):
        print(f"\nrun folder: {summary['run_dir']}")
        for key in ("weights", "summary", "plot", "side_by_side"):
            if key in summary:
                print(f"  {key}: {summary[key]}")
        if "val_psnr_y" in summary:
            print(f"  validation PSNR-Y {summary['val_psnr_y']:.2f} dB vs bicubic {summary['bicubic_psnr_y']:.2f} dB "
                  f"({summary['val_psnr_y'] - summary['bicubic_psnr_y']:+.2f} dB); training time "
                  f"{summary['train_time_s']:.0f} s")
        for row in summary.get("clips_below_bicubic", []):
            print(f"  warning: clip {row['clip']}: PSNR-Y {row['psnr_y']:.2f} dB, below bicubic's "
                  f"{row['reference_psnr_y']:.2f} dB; if the model is recurrent, check it over long clips with "
                  f"benchmarks/recurrence_check.py {summary['run_dir']}")
    return 0
