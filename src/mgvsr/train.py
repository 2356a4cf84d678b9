"""``mgvsr train``: the training loop, readable top to bottom.

    config ──► model, optimiser, data ──► for step in range(start, total):
                                               spec = schedule.spec_at(cfg, step)   (T, patch, batch, lr)
                                               batch = the (seed, step, rank) batch at that shape
                                               forward / backward / (skip if non-finite) / step / EMA
                                               log · validate · checkpoint

Everything that must agree across ranks and across a resume (shape, LR, which samples) is a function of
the global step, so a resumed run continues exactly where the interrupted one stopped.
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
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from mgvsr import __version__
from mgvsr.checkpoint import Checkpointer, rng_state, set_rng_state
from mgvsr.config import Config, load_config, save_config, to_dict
from mgvsr.data import AugmentConfig, StepBatches, build_dataset, check_shape
from mgvsr.distributed import DistInfo, all_reduce_mean, barrier, cleanup, init_distributed
from mgvsr.inference import autocast_context
from mgvsr.losses import sr_loss
from mgvsr.models import build_model
from mgvsr.models.weights import save_safetensors
from mgvsr.optim import EMA, flow_frozen, make_optimizer, set_flow_trainable, set_lr
from mgvsr.report import final_report
from mgvsr.runtime import tune_allocator
from mgvsr.schedule import ShapeFn, phases, spec_at
from mgvsr.tracking import Tracker, write_json
from mgvsr.validation import validate


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


# Sections whose change would make a resumed run a different experiment (logging, validation and
# loader settings may change freely).
RESUME_KEYS = ("model", "schedule", "optim", "data.train", "data.use_flip", "data.use_rot",
               "data.use_reverse", "data.intervals", "train.seed")


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


def check_resumable(state: dict, cfg: Config, path: Path) -> None:
    """Refuse to resume a checkpoint of a different experiment, or one past the end of this run."""
    saved, current = state.get("config", {}), to_dict(cfg)
    changes = []
    for key in RESUME_KEYS:
        changes += _diff(_lookup(saved, key), _lookup(current, key), key)
    changes = [c for c in changes if not c.startswith("model.init_weights")]
    if changes:
        raise RuntimeError(
            f"{path} was written by a run with a different config ({'; '.join(changes[:6])}"
            f"{' ...' if len(changes) > 6 else ''}). Resume with the same config, or start a new run "
            "(another train.name)."
        )
    if int(state["step"]) > cfg.schedule.total_iters:
        raise RuntimeError(
            f"{path} is at step {state['step']}, past schedule.total_iters={cfg.schedule.total_iters}"
        )


class StopRequest:
    """Within ``with StopRequest() as stop``, the first Ctrl-C or SIGTERM sets ``stop.requested`` so the
    loop can finish its step and save; a second one interrupts at once. Handlers are restored on exit."""

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
        print(f"\n{self.requested}: stopping after this step (again to stop now)", flush=True)


def _gather_rng(dist: DistInfo) -> list:
    """RNG states of every rank (rank 0 receives them all)."""
    state = rng_state()
    if not dist.enabled:
        return [state]
    gathered: list = [None] * dist.world_size
    torch.distributed.all_gather_object(gathered, state)
    return gathered


def train(cfg: Config) -> dict:
    """Run (or resume) one training run; returns the summary written to ``summary.json``."""
    tune_allocator()
    dist, device = init_distributed(cfg.train.device)
    run_dir = Path(cfg.train.out_dir) / cfg.train.name
    world, accum = dist.world_size, cfg.optim.accum_steps
    total = cfg.schedule.total_iters

    # ---- model, EMA, optimiser (identical initialisation on every rank) -------------------------
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    model = build_model(cfg.model).to(device)
    ema = EMA(model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    optimizer = make_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler(device.type) if cfg.train.amp == "fp16" else None

    # ---- data: fail early if any scheduled shape does not fit the data -------------------------
    train_set = build_dataset(cfg.data.train, scale=cfg.model.scale)
    for phase in phases(cfg, world):
        check_shape(train_set, phase.num_frames, phase.patch_size, cfg.data.intervals)
    val_set = build_dataset(cfg.data.val, scale=cfg.model.scale) if cfg.data.val is not None else None

    # ---- resume --------------------------------------------------------------------------------
    ckpt = Checkpointer(run_dir / "checkpoints", keep_last=cfg.train.keep_last)
    start_step, train_time, data_time, skipped, bad_streak = 0, 0.0, 0.0, 0, 0
    resume_path = None
    if cfg.train.resume == "auto":
        resume_path = ckpt.latest()
    elif cfg.train.resume != "none":
        resume_path = Path(cfg.train.resume)
    elif ckpt.checkpoints():
        raise RuntimeError(
            f"run folder {run_dir} already holds checkpoints (newest: {ckpt.checkpoints()[-1][1].name}); "
            "continue it with --resume auto (train.resume=auto) or start a new run with another train.name"
        )
    if dist.is_main:
        ckpt.remove_temp_files()  # left by a save that was killed mid-write
    if resume_path is not None:
        state = ckpt.load(resume_path)
        check_resumable(state, cfg, resume_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group, fresh in zip(optimizer.param_groups, make_optimizer(model, cfg.optim).param_groups):
            group["base_lr"] = fresh["base_lr"]
        if ema is not None:
            # A checkpoint written without EMA starts the average from the resumed weights.
            ema.load_state_dict(state["ema"] if state.get("ema") is not None else model.state_dict())
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_step = int(state["step"])
        counters = state["counters"]
        train_time, data_time = counters["train_time"], counters["data_time"]
        skipped, bad_streak = counters["skipped"], counters["bad_streak"]
        rngs = state["rng"]
        set_rng_state(rngs[dist.rank] if dist.rank < len(rngs) else rngs[0])
        if int(state.get("world_size", world)) != world:
            print(f"warning: resuming a {state['world_size']}-process run on {world} processes: "
                  "batches after the resume differ from the original run", flush=True)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        if resume_path is not None:
            print(f"resumed from {resume_path} at step {start_step}", flush=True)

    tracker = Tracker(
        run_dir, total, start_step, enabled=dist.is_main,
        tensorboard=cfg.train.tensorboard, progress=cfg.train.progress,
    )
    batches_by_index = StepBatches(
        train_set, ShapeFn(cfg, world), seed=cfg.train.seed, rank=dist.rank, world_size=world,
        aug=AugmentConfig(flip=cfg.data.use_flip, rot=cfg.data.use_rot, reverse=cfg.data.use_reverse),
        intervals=cfg.data.intervals, accum_steps=accum,
    )
    loader = torch.utils.data.DataLoader(
        batches_by_index,
        batch_size=None,
        sampler=range(start_step * accum, total * accum),
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if cfg.data.num_workers > 0 else None,
    )
    batches = iter(loader)

    def wrap(frozen: bool):
        """(Re)build the DDP wrapper: DDP fixes its set of trainable parameters at construction."""
        set_flow_trainable(model, not frozen)
        if not dist.enabled:
            return model
        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    frozen = flow_frozen(start_step, cfg.optim)
    net = wrap(frozen)
    model.train()

    def save(step_done: int) -> None:
        rngs = _gather_rng(dist)
        if not dist.is_main:
            return
        ckpt.save(
            {
                "format": "mgvsr-checkpoint",
                "version": __version__,
                "step": step_done,
                "model": model.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rngs,
                "counters": {"train_time": train_time, "data_time": data_time, "skipped": skipped,
                             "bad_streak": bad_streak},
                # The sampler has no hidden position: batch k is a function of (seed, step, rank).
                "sampler": {"next_step": step_done, "seed": cfg.train.seed, "world_size": world,
                            "accum_steps": accum},
                "world_size": world,
                "config": to_dict(cfg),
            },
            step_done,
        )

    # ---- the loop ------------------------------------------------------------------------------
    last_loss = float("nan")
    last_val = None  # (step, metrics) of the latest validation
    with StopRequest() as stop:  # Ctrl-C / SIGTERM: finish the step, save, exit
        for step in range(start_step, total):
            spec = spec_at(cfg, step, world)
            lr = set_lr(optimizer, spec.lr_mult)
            if flow_frozen(step, cfg.optim) != frozen:
                frozen = not frozen
                net = wrap(frozen)

            t_start = time.perf_counter()
            data_wait = 0.0
            loss_sum = torch.zeros((), device=device)
            for micro in range(accum):
                t_data = time.perf_counter()
                lr_clip, hr_clip = next(batches)
                data_wait += time.perf_counter() - t_data
                lr_clip = lr_clip.to(device, non_blocking=True)
                hr_clip = hr_clip.to(device, non_blocking=True)
                sync = net.no_sync() if dist.enabled and micro < accum - 1 else contextlib.nullcontext()
                with sync:
                    with autocast_context(device, cfg.train.amp):
                        out = net(lr_clip)
                    loss = sr_loss(cfg.optim.loss, out.float(), hr_clip, cfg.optim.charbonnier_eps,
                                   getattr(model, "center_frame_idx", None)) / accum
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                loss_sum += loss.detach()

            # Gradients are already averaged over ranks here, so every rank takes the same decision.
            if scaler is not None:
                scaler.unscale_(optimizer)
            trainable = [p for p in model.parameters() if p.requires_grad]
            max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
            loss_value = float(all_reduce_mean(loss_sum))
            finite = math.isfinite(loss_value) and math.isfinite(float(grad_norm))
            if scaler is not None:
                # fp16: the scaler skips steps with inf/NaN gradients itself and lowers its scale; such
                # overflows are normal early on and count as bad steps only when the loss itself is not finite.
                scaler.step(optimizer)
                scaler.update()
                finite = math.isfinite(loss_value)
            elif finite:
                optimizer.step()
            if finite:
                if ema is not None and math.isfinite(float(grad_norm)):
                    ema.update(model)
                bad_streak = 0
                last_loss = loss_value
            else:
                skipped += 1
                bad_streak += 1
                tracker.write(f"step {step}: non-finite loss/gradient ({loss_value}, {float(grad_norm)}); skipped")
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_time = time.perf_counter() - t_start
            train_time += step_time
            data_time += data_wait
            step_done = step + 1

            row = {
                "step": step_done, "wall_time": round(train_time, 4), "loss": loss_value, "lr": lr,
                "stage": spec.stage, "num_frames": spec.num_frames, "patch_size": spec.patch_size,
                "batch_size": spec.batch_size, "data_wait": round(data_wait, 5),
                "compute": round(step_time - data_wait, 5), "skipped": skipped,
            }
            if step_done % cfg.train.log_every == 0 or step_done == total or bad_streak:
                tracker.log_train(row)
            if bad_streak >= cfg.train.max_bad_steps:
                tracker.close()
                latest = ckpt.latest() if dist.is_main else None
                cleanup()
                raise NonFiniteError(
                    f"{bad_streak} consecutive steps had a non-finite loss or gradient (last at step {step}); "
                    f"stopped. The last good checkpoint is intact: {latest or 'none written yet'}. "
                    "Lower optim.lr, set optim.grad_clip, or check the data; resume with train.resume=auto."
                )
            tracker.update_bar(1, {
                "shape": f"{spec.num_frames}x{spec.patch_size}x{spec.batch_size}",
                "loss": f"{loss_value:.4f}", "lr": f"{lr:.2e}",
            })

            # Save first: a failing validation (or a stop request) must not cost the steps since the last save.
            if step_done % cfg.train.save_every == 0 or step_done == total or stop.requested:
                save(step_done)
            if stop.requested:
                tracker.close()
                cleanup()
                print(f"\nstopped by {stop.requested} after step {step_done}; checkpoint saved. "
                      "Continue with --resume auto.", flush=True)
                raise SystemExit(130)
            if cfg.train.val_every and val_set is not None and (
                step_done % cfg.train.val_every == 0 or step_done == total
            ):
                if dist.is_main:
                    eval_model = ema.model if ema is not None else model
                    val_metrics = validate(eval_model, val_set, cfg.data.val.max_frames, cfg.train.amp)
                    last_val = (step_done, val_metrics)
                    tracker.log_val({"step": step_done, "wall_time": round(train_time, 4), **val_metrics["average"]})
                    model.train()
                barrier()

    tracker.close()
    summary = None
    if dist.is_main:
        weights_dir = run_dir / "weights"
        weights_dir.mkdir(exist_ok=True)
        meta = {"mgvsr_version": __version__, "step": str(total),
                "mgvsr_model_config": json.dumps(to_dict(cfg.model))}
        save_safetensors(model, weights_dir / "model.safetensors", metadata=meta)
        if ema is not None:
            save_safetensors(ema.model, weights_dir / "model_ema.safetensors", metadata=meta)
        summary = {
            "run_dir": str(run_dir),
            "steps": total,
            "train_time_s": round(train_time, 3),
            "data_wait_s": round(data_time, 3),
            "data_wait_share": data_time / train_time if train_time > 0 else 0.0,
            "skipped_steps": skipped,
            "final_loss": last_loss,
            "world_size": world,
            "global_batch_full_shape": cfg.schedule.batch_size * world * accum,
            "weights": str(weights_dir / ("model_ema.safetensors" if ema is not None else "model.safetensors")),
        }
        if val_set is not None:
            eval_model = ema.model if ema is not None else model
            final_val = last_val[1] if last_val is not None and last_val[0] == total else None
            summary.update(final_report(eval_model, val_set, cfg, run_dir, final_val))
        write_json(run_dir / "summary.json", summary)
    barrier()
    cleanup()
    return summary or {}


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
    if summary:
        print(f"\nrun folder: {summary['run_dir']}")
        for key in ("weights", "summary", "plot", "side_by_side"):
            if key in summary:
                print(f"  {key}: {summary[key]}")
        if "val_psnr_y" in summary:
            print(f"  validation PSNR-Y {summary['val_psnr_y']:.2f} dB vs bicubic {summary['bicubic_psnr_y']:.2f} dB "
                  f"({summary['val_psnr_y'] - summary['bicubic_psnr_y']:+.2f} dB); training time "
                  f"{summary['train_time_s']:.0f} s")
    return 0
