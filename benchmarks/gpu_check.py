"""GPU-ready check: step times, whole-run projection and a short side-by-side run, in one timed pass.

    benchmarks/gpu_check.sh [--tiny] [--out PATH] [--budget-s SECONDS] [--force-bf16] [--bench-seconds S] [...]
    python benchmarks/gpu_check.py  (the same flags; the shell script only prepares the environment)

Four stages, each with its own time budget (``--stage-budgets``), in this order:

a. ``step_times``: one training step (forward, the config's loss in fp32 on the output, backward, Adam
   step; device synchronised before and after) of the paper-scale model (``--config``, default BasicVSR
   64/30 of ``configs/basicvsr_reds_multigrid.yaml``) at every distinct (T, patch, batch) of the
   multigrid schedule (``mgvsr.schedule.phases``) and the fixed baseline's shape, in three modes:
   ``fp32``, ``bf16`` (autocast) and ``bf16_cl`` (autocast + model and clips in channels_last).
   ``--warmup`` steps are not timed; the median of ``--repeat`` timed steps is reported (at least
   ``MIN_TIMED`` unless the stage deadline comes first), with the first step's time (``first_step_s``:
   cuDNN autotuning of a new shape lands there) and the measurement's wall clock. Priority, for when
   time runs short: fp32 and bf16_cl at every shape, then the full shape at the batches of
   ``--sweep-batches`` (per-device batch sizes that ``benchmarks/ddp_projection.py`` needs for large
   minibatches), then plain bf16 (no recipe of its own).
b. ``scaled_batch``: the same at the shapes of the schedule with Wu et al.'s batch scaling
   (``schedule.scale_batch=true``: the per-phase batch the schedule gives; shapes already timed in (a)
   are reused); fp32 and bf16_cl first, plain bf16 last.
c. ``projection``: per mode, the whole run as ``sum(iterations x step time)`` of the multigrid schedule
   against the fixed baseline (``benchmarks/projection.py``'s :func:`project_run`), with and without
   batch scaling, and every mode against BasicSR's recipe (fixed shape, fp32).
d. ``side_by_side``: ``mgvsr bench --preset basicsr,fast`` (``mgvsr.bench.PRESETS``: BasicSR's recipe
   against multigrid + zero-initialised output conv + bf16 + channels_last where native (``auto``; so
   fp32 where bf16 is skipped, see below)) on
   generated clips (``--bench-data``), each run sized to about ``--bench-seconds`` of training
   (iterations from a probe of the fp32 step time, or ``--bench-iters``); both runs' training times and
   final PSNR-Y.

bf16 is timed only where it runs in hardware (``mgvsr.runtime.bf16_is_native``: CUDA with bf16, a CPU
with AVX512-BF16/AMX); elsewhere autocast emulates it, tens of times slower than fp32, so the bf16 rows
are recorded as skipped ("bf16 not native on this device") unless ``--force-bf16`` is given.

``--budget-s`` (default 420 s) limits the whole check. Every stage checks the clock: a measurement
that would overrun its stage's deadline is shortened (fewer timed steps) or skipped, and the JSON says
which (``budget``). A measurement is expected to cost its steps plus the median overhead of the
measurements before it (on the H200 about 4 s per new shape, against 1.2 s of steps). A stage may use
the time earlier stages left over, never the time reserved for the stages after it. ``--tiny`` runs everything at toy
sizes on any device (the test suite runs it on the CPU). The JSON goes to ``--json``, else
``$OUT/gpu_check_<device>_<date>.json`` when ``$OUT`` is set, else ``docs/results/``; it is rewritten
after every stage, so a killed check keeps what it measured. The exit status is 1 when a stage failed
(an exception, or the side-by-side bench failing), 0 otherwise (skips for time or bf16 are not failures).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from projection import project_run  # noqa: E402  (benchmarks/ is not a package)

from mgvsr.bench import machine_info  # noqa: E402
from mgvsr.config import Config, load_config  # noqa: E402
from mgvsr.losses import sr_loss  # noqa: E402
from mgvsr.models import build_model  # noqa: E402
from mgvsr.runtime import bf16_is_native, tune_allocator  # noqa: E402
from mgvsr.schedule import phases  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FORMAT = "mgvsr-gpu-check-v1"
# Precision modes: name -> (autocast dtype or None, channels_last). Timed in MEASURE_ORDER, so the
# reference (fp32) and the fast mode come first when time runs short.
MODES: dict[str, tuple[torch.dtype | None, bool]] = {
    "fp32": (None, False), "bf16": (torch.bfloat16, False), "bf16_cl": (torch.bfloat16, True),
}
MEASURE_ORDER = ("fp32", "bf16_cl", "bf16")
# Plain bf16 (without channels_last) is no recipe of its own, only the step between the two: its rows
# come last in each stage (after the batch sweep), so a short budget drops them first.
SECONDARY_MODES = ("bf16",)
# Timed steps a measurement keeps even past its fair share of the stage (only the deadline cuts it):
# on the H200 (2026-11-30) single-step medians varied by up to +-20%, while a step cost a fraction of
# the first-step overhead of a new shape.
MIN_TIMED = 3
STAGES = ("step_times", "scaled_batch", "projection", "side_by_side")
# Nominal stage budgets; they add up to the default total. The side-by-side stage fits two runs of
# --bench-seconds (60 s) plus about 50 s of data, probe, start-ups and validation (measured on the H200,
# 2026-11-30): about 3 minutes. The scaled-batch stage times as many shapes as the schedule stage (8 vs 9).
DEFAULT_STAGE_BUDGETS = {"step_times": 140.0, "scaled_batch": 100.0, "projection": 10.0, "side_by_side": 170.0}
# The issue's 8 minutes (480 s), less a margin for start-up, the bench's SIGTERM grace (15 s) and writing.
DEFAULT_BUDGET_S = 420.0
# --tiny: toy model and shapes (any device, seconds on a CPU); the schedule's structure (spatial stages
# x temporal fractions, batch scaling) is kept at the config's minimum sizes (patches >= 16).
TINY_OVERRIDES = ["model.num_feat=8", "model.num_block=1", "model.head_feat=8", "schedule.num_frames=4",
                  "schedule.patch_size=24", "schedule.spatial_stages=[16,24]", "schedule.temporal_fractions=[0.5,1.0]",
                  "schedule.batch_size=2", "schedule.max_batch=8"]
TINY_STAGE_BUDGETS = {"step_times": 40.0, "scaled_batch": 20.0, "projection": 10.0, "side_by_side": 60.0}
TINY_BUDGET_S = 130.0
BF16_NOT_NATIVE = "bf16 not native on this device"  # the skip reason (--force-bf16 times it anyway)

Shape = tuple[int, int, int]  # (T, LR patch, per-device batch)


def key(shape: Shape) -> str:
    return f"T{shape[0]}_p{shape[1]}_b{shape[2]}"


def parse_key(text: str) -> Shape:
    m = re.fullmatch(r"T(\d+)_p(\d+)_b(\d+)", text)
    if not m:
        raise ValueError(f"not a shape key: {text!r} (expected T<frames>_p<patch>_b<batch>)")
    return int(m[1]), int(m[2]), int(m[3])


# --------------------------------------------------------------------------------------------------
# Time budget
# --------------------------------------------------------------------------------------------------


class Budget:
    """Wall-clock deadlines: the whole check ends by ``start + total_s``, and each stage must leave the
    nominal budgets of the stages after it untouched (so it may use what earlier stages left over).
    Nominal budgets that add up to more than ``total_s`` are scaled down to fit it."""

    def __init__(self, total_s: float, stage_s: dict[str, float]):
        self.start = time.monotonic()
        nominal = sum(stage_s.values())
        scale = min(1.0, total_s / nominal) if nominal > 0 else 1.0
        self.total_s, self.stage_s = total_s, {k: v * scale for k, v in stage_s.items()}
        self.report: dict[str, dict] = {s: {"budget_s": round(self.stage_s[s], 1), "notes": []} for s in STAGES}

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def deadline(self, stage: str) -> float:
        later = sum(self.stage_s[s] for s in STAGES[STAGES.index(stage) + 1:])
        return self.start + self.total_s - later

    def left(self, stage: str) -> float:
        return self.deadline(stage) - time.monotonic()

    def note(self, stage: str, text: str) -> None:
        print(f"[{stage}] {text}", flush=True)
        self.report[stage]["notes"].append(text)


# --------------------------------------------------------------------------------------------------
# Step timing
# --------------------------------------------------------------------------------------------------


def channels_last_clip(x: torch.Tensor) -> torch.Tensor:
    """A (B, T, C, H, W) clip with the same values laid out (B, T, H, W, C) in memory."""
    return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """A fresh model and Adam per precision mode (same seed, so the same weights), timed step by step."""

    def __init__(self, cfg: Config, mode: str, device: torch.device):
        dtype, self.channels_last = MODES[mode]
        self.cfg, self.mode, self.device, self.dtype = cfg, mode, device, dtype
        torch.manual_seed(0)
        model_cfg = dataclasses.replace(cfg.model, init_weights=None, spynet_weights=None, edvr_weights=None)
        self.model = build_model(model_cfg).to(device).train()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
        self.centre = getattr(self.model, "center_frame_idx", None)

    def inputs(self, shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
        frames, patch, batch = shape
        lr = torch.rand(batch, frames, 3, patch, patch, device=self.device)
        hr = torch.rand(batch, frames, 3, 4 * patch, 4 * patch, device=self.device)
        if self.channels_last:
            lr, hr = channels_last_clip(lr), channels_last_clip(hr)
        return lr, hr

    def step(self, lr: torch.Tensor, hr: torch.Tensor) -> float:
        """Seconds of one synchronised training step; the loss is computed in fp32."""
        o = self.cfg.optim
        synchronize(self.device)
        start = time.perf_counter()
        if self.dtype is None:
            out = self.model(lr)
        else:
            with torch.autocast(self.device.type, dtype=self.dtype):
                out = self.model(lr)
        loss = sr_loss(o.loss, out.float(), hr, o.charbonnier_eps, self.centre)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        synchronize(self.device)
        return time.perf_counter() - start

    def close(self) -> None:
        del self.model, self.opt
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def is_oom(err: BaseException) -> bool:
    return "out of memory" in str(err).lower()


def measure(timer: StepTimer, shape: Shape, warmup: int, repeat: int, deadline: float, fair_share_s: float,
            min_timed: int = MIN_TIMED) -> dict:
    """Warm up, then time up to ``repeat`` steps: at least ``min_timed`` of them unless the deadline comes
    first, more while they fit in ``fair_share_s`` and before ``deadline``. Returns median/min/max
    seconds, the number of timed steps, the first step's seconds (``first_step_s``: cuDNN autotuning and
    first allocations of a new shape land there), the whole measurement's wall clock and peak memory."""
    device = timer.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.monotonic()
    oom = False
    first: float | None = None
    try:
        lr, hr = timer.inputs(shape)
        last = 0.0
        for _ in range(warmup):
            last = timer.step(lr, hr)
            first = last if first is None else first
        times: list[float] = []
        for i in range(repeat):
            estimate = times[-1] if times else last
            now = time.monotonic()
            if i == 0 and now + estimate > deadline:
                return {"skipped": "no time left for a timed step after the warm-up"}
            if i > 0 and (now + estimate > deadline or (i >= min_timed and now - start + estimate > fair_share_s)):
                break
            times.append(timer.step(lr, hr))
            first = times[0] if first is None else first
    except RuntimeError as err:  # torch's OutOfMemoryError is a RuntimeError (in every version)
        if not is_oom(err):
            raise
        oom = True
    if oom:  # outside the handler, so the traceback's tensors are gone before the cache is emptied
        lr = hr = None
        timer.opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {"error": "out of memory"}
    result = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times),
              "first_step_s": first, "wall_s": time.monotonic() - start}
    if len(times) < repeat:
        result["shortened"] = f"{len(times)} of {repeat} timed steps (time budget)"
    if device.type == "cuda":
        result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return result


def overhead_s(result: dict, warmup: int) -> float:
    """Seconds a measurement spent beyond its steps at their median (first-step autotuning, inputs)."""
    return max(0.0, result["wall_s"] - (warmup + result["n"]) * result["median_s"])


def pixels(shape: Shape) -> int:
    return shape[0] * shape[1] ** 2 * shape[2]


def estimate(results: dict[str, dict[str, dict]], mode: str, shape: Shape) -> float | None:
    """Expected seconds of one step: the same shape in another mode, else this mode's nearest timed
    shape scaled by pixels (T x patch^2 x batch); None before anything was timed."""
    for other in results.values():
        if "median_s" in other.get(key(shape), {}):
            return other[key(shape)]["median_s"]
    timed = [(parse_key(k), r["median_s"]) for k, r in results.get(mode, {}).items() if "median_s" in r]
    if not timed:
        return None
    near, t = min(timed, key=lambda kv: abs(pixels(kv[0]) - pixels(shape)))
    return t * pixels(shape) / pixels(near)


def time_shapes(cfg: Config, items: list[tuple[str, Shape]], results: dict[str, dict[str, dict]], stage: str,
                budget: Budget, device: torch.device, warmup: int, repeat: int,
                overheads: list[float] | None = None) -> None:
    """Time every (mode, shape) of ``items`` into ``results[mode][key]``, skipping what does not fit.
    A measurement is expected to cost its warm-up and at least ``MIN_TIMED`` timed steps plus the median
    overhead of the measurements so far (``overheads``, shared across stages and extended here): on a
    GPU the first step of each new shape takes seconds more than the rest (cuDNN autotuning)."""
    overheads = [] if overheads is None else overheads
    timers: dict[str, StepTimer] = {}
    try:
        for i, (mode, shape) in enumerate(items):
            left = budget.left(stage)
            step = estimate(results, mode, shape)
            overhead = statistics.median(overheads) if overheads else 0.0
            expected = None if step is None else step * (warmup + min(repeat, MIN_TIMED)) + overhead
            if left <= 0 or (expected is not None and expected > left):
                results[mode][key(shape)] = {"skipped": f"stage {stage}: {max(left, 0):.0f} s left, "
                                             f"about {expected or 0:.0f} s needed"}
                budget.note(stage, f"skipped {mode} {key(shape)} (time budget)")
                continue
            if mode not in timers:
                for old in list(timers):
                    timers.pop(old).close()
                timers[mode] = StepTimer(cfg, mode, device)
            fair = max(left / (len(items) - i), 0.0)
            r = measure(timers[mode], shape, warmup, repeat, budget.deadline(stage), fair)
            results[mode][key(shape)] = r
            if "median_s" in r:
                overheads.append(overhead_s(r, warmup))
                extra = f" ({r['shortened']})" if "shortened" in r else ""
                print(f"  {mode:>7} T={shape[0]:>3} patch={shape[1]:>3} batch={shape[2]:>3}  median {r['median_s']:.4f} s"
                      f"  [{r['min_s']:.4f}, {r['max_s']:.4f}] x{r['n']}  first {r['first_step_s']:.2f} s{extra}", flush=True)
            else:
                budget.note(stage, f"{mode} {key(shape)}: {r.get('error') or r.get('skipped')}")
    finally:
        for timer in timers.values():
            timer.close()


# --------------------------------------------------------------------------------------------------
# Projection
# --------------------------------------------------------------------------------------------------


def lookup(table: dict[str, dict]):
    """``step_s(T, patch, batch)`` from measured medians; KeyError naming the shape when it is missing."""
    def step_s(frames: int, patch: int, batch: int) -> float:
        entry = table.get(key((frames, patch, batch)), {})
        if "median_s" not in entry:
            raise KeyError(key((frames, patch, batch)))
        return entry["median_s"]
    return step_s


def projections(cfg: Config, scaled_cfg: Config, steps: dict, scaled: dict, with_flops: bool,
                skipped_modes: dict[str, str] | None = None) -> dict:
    """Per mode: multigrid vs fixed (same mode), with and without batch scaling, and against BasicSR's
    recipe (the fixed run in fp32). ``skipped_modes`` (mode -> reason) were not timed at all."""
    out: dict[str, dict] = {}
    for mode in MODES:
        entry: dict = {}
        if mode in (skipped_modes or {}):
            out[mode] = {name: {"skipped": skipped_modes[mode]} for name in ("multigrid", "multigrid_scaled_batch")}
            continue
        for name, schedule_cfg, table in (("multigrid", cfg, steps[mode]),
                                          ("multigrid_scaled_batch", scaled_cfg, {**steps[mode], **scaled[mode]})):
            try:
                entry[name] = project_run(schedule_cfg, lookup(table), with_flops)
            except KeyError as err:
                entry[name] = {"error": f"no step time for {err.args[0]}"}
        out[mode] = entry
    basicsr = out["fp32"]["multigrid"].get("fixed_s")
    for mode, entry in out.items():
        for name, r in entry.items():
            if basicsr and "run_s" in r:
                r["speedup_vs_basicsr"] = basicsr / r["run_s"]
                r["fixed_speedup_vs_basicsr"] = basicsr / r["fixed_s"]
                r["speedup_equal_samples_vs_basicsr"] = basicsr / r["run_equal_samples_s"]
    return out


def step_table(shapes: list[Shape], steps: dict, scaled_shapes: list, scaled: dict) -> str:
    """Median step seconds per shape (rows) and mode (columns); 'skip' / 'oom' / '-' where not timed."""
    def cell(entry: dict | None) -> str:
        if not entry:
            return "-"
        if "median_s" in entry:
            return f"{entry['median_s']:.4f}"
        return "oom" if "error" in entry else "skip"

    rows = [(tuple(x), steps) for x in shapes] + [(tuple(x), scaled) for x in scaled_shapes]
    lines = [f"  {'T':>4}{'patch':>6}{'batch':>6}" + "".join(f"{m:>10}" for m in MODES) + "  (median s per step)"]
    for shape, table in rows:
        lines.append(f"  {shape[0]:>4}{shape[1]:>6}{shape[2]:>6}" + "".join(f"{cell(table[m].get(key(shape))):>10}" for m in MODES))
    return "\n".join(lines)


def print_projection(proj: dict) -> None:
    print(f"  {'mode':<8}{'schedule':<24}{'fixed (h)':>10}{'run (h)':>9}{'speedup':>9}{'vs BasicSR':>11}{'FLOPx':>7}")
    for mode, entry in proj.items():
        for name, r in entry.items():
            if "run_s" not in r:
                print(f"  {mode:<8}{name:<24}  {r.get('error') or 'skipped: ' + str(r.get('skipped'))}")
                continue
            flop = f"{r['flop_ratio']:>6.2f}x" if "flop_ratio" in r else f"{'-':>7}"
            print(f"  {mode:<8}{name:<24}{r['fixed_s'] / 3600:>10.2f}{r['run_s'] / 3600:>9.2f}{r['speedup']:>8.2f}x"
                  f"{r.get('speedup_vs_basicsr', float('nan')):>10.2f}x{flop}")


# --------------------------------------------------------------------------------------------------
# Side-by-side run (mgvsr bench)
# --------------------------------------------------------------------------------------------------


def texture_clip(num_frames: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (T, H, W, 3): bicubic-smoothed noise summed over octaves (detail at every scale, as in
    real footage), panning by a random whole-pixel velocity (up to 2 px per frame each way)."""
    from PIL import Image

    vy, vx = (int(v) for v in rng.integers(-2, 3, size=2))
    margin = 2 * num_frames + 4
    big_h, big_w = height + 2 * margin, width + 2 * margin
    img = np.zeros((big_h, big_w, 3))
    for octave in range(1, 6):
        cell = 2 ** octave
        coarse = (rng.random((big_h // cell + 2, big_w // cell + 2, 3)) * 255).astype(np.uint8)
        up = Image.fromarray(coarse).resize(((big_w // cell + 2) * cell, (big_h // cell + 2) * cell), Image.BICUBIC)
        img += np.asarray(up, dtype=np.float64)[:big_h, :big_w] / octave
    img = (img - img.min()) / max(img.max() - img.min(), 1e-9) * 255
    return np.stack([img[margin + t * vy: margin + t * vy + height, margin + t * vx: margin + t * vx + width]
                     for t in range(num_frames)]).round().astype(np.uint8)


def write_clips(root: Path, clips: int, frames: int, hr_hw: tuple[int, int], seed: int) -> Path:
    """``clips`` folders of PNG frames (mgvsr's ``frames`` layout; LR made by the loader)."""
    from mgvsr.data.io import write_png  # PIL: only this stage needs it

    rng = np.random.default_rng(seed)
    for c in range(clips):
        for t, frame in enumerate(texture_clip(frames, *hr_hw, rng)):
            write_png(root / f"clip{c:03d}" / f"{t:04d}.png", frame)
    return root


def bench_config(args: argparse.Namespace, data: dict, iters: int, path: Path) -> Path:
    """The side-by-side run's config: BasicVSR on the generated clips, multigrid-ready shapes."""
    t, p, b = args.bench_shape
    cfg = {
        "model": {"name": "basicvsr", "num_feat": args.bench_feat, "num_block": args.bench_blocks,
                  "head_feat": args.bench_head},
        "data": {"train": data["train"], "val": data["val"], "num_workers": args.bench_workers},
        "schedule": {"kind": "fixed", "total_iters": iters, "num_frames": t, "patch_size": p, "batch_size": b,
                     "spatial_stages": sorted({max(16, p // 2), p}), "temporal_fractions": [0.5, 0.75, 1.0], "lr_policy": "cosine"},
        "optim": {"lr": args.bench_lr, "loss": "mse", "fix_flow_iters": max(1, iters // 12)},
        "train": {"name": "gpu_check", "log_every": max(1, iters // 10), "val_every": max(1, iters // 4),
                  "save_every": iters, "keep_last": 1, "progress": False, "tensorboard": False},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def bench_data(args: argparse.Namespace, root: Path) -> dict:
    if args.bench_data == "demo":
        demo = str(REPO / "demo_data")
        return {"train": {"kind": "prepared", "root": demo, "split": "train", "in_memory": True},
                "val": {"kind": "prepared", "root": demo, "split": "val", "in_memory": True}}
    t, p, _ = args.bench_shape
    hr = (4 * p, 4 * p + 32)
    n_train, n_val = (2, 1) if args.tiny else (12, 2)
    write_clips(root / "train", n_train, t + 2, hr, seed=1)
    write_clips(root / "val", n_val, t, hr, seed=2)
    return {"train": {"kind": "frames", "root": str(root / "train"), "in_memory": True},
            "val": {"kind": "frames", "root": str(root / "val"), "in_memory": True}}


def probe_iters(config: Path, device: torch.device, seconds: float) -> tuple[int, float]:
    """Iterations of the fp32 fixed run that fit ``seconds`` of training: median of a few timed steps
    at the full shape, with a 0.75 margin for the training loop's own work (data, logging)."""
    cfg = load_config(config)
    timer = StepTimer(cfg, "fp32", device)
    try:
        s = cfg.schedule
        r = measure(timer, (s.num_frames, s.patch_size, s.batch_size), warmup=2, repeat=3,
                    deadline=float("inf"), fair_share_s=float("inf"))
    finally:
        timer.close()
    if "median_s" not in r:
        raise RuntimeError(f"probe step failed: {r}")
    return max(2, int(0.75 * seconds / r["median_s"])), r["median_s"]


def run_bench(cmd: list[str], env: dict, timeout_s: float) -> tuple[int | None, str]:
    """Run the bench in its own process group; kill the group at the timeout. (exit code or None, output tail)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s

    def pump() -> None:
        for raw in proc.stdout:  # type: ignore[union-attr]
            line = raw.decode(errors="replace")
            sys.stdout.write("    | " + line)
            lines.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        code = None
    reader.join(timeout=5)
    sys.stdout.flush()
    return code, "".join(lines[-40:])


def side_by_side(args: argparse.Namespace, budget: Budget, device: torch.device, train_device: str | None,
                 result: dict) -> None:
    """``mgvsr bench --preset basicsr,fast`` on generated clips; fills ``result`` as it goes."""
    stage = "side_by_side"
    overhead = 25.0 if args.tiny else 50.0  # data, probe, two process start-ups, validation, end-of-run reports
    seconds = args.bench_seconds
    fit = (budget.left(stage) - overhead) / 2
    if fit < seconds:
        if fit < (1 if args.tiny else 10):
            result["skipped"] = f"time budget ({budget.left(stage):.0f} s left)"
            budget.note(stage, f"skipped: {result['skipped']}")
            return
        budget.note(stage, f"runs shortened to {fit:.0f} s of training each (time budget)")
        seconds = fit
    work = Path(tempfile.mkdtemp(prefix="gpu_check_bench_"))
    result.update(data=args.bench_data, work_dir=str(work), target_train_s=seconds)
    try:
        _side_by_side(args, budget, device, train_device, result, work, seconds)
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
            result["work_dir"] += " (deleted; --keep-work keeps it)"


def _side_by_side(args: argparse.Namespace, budget: Budget, device: torch.device, train_device: str | None,
                  result: dict, work: Path, seconds: float) -> None:
    stage = "side_by_side"
    data = bench_data(args, work / "data")
    if args.bench_iters:
        iters = args.bench_iters
    else:
        iters, step = probe_iters(bench_config(args, data, 2, work / "probe.yaml"), device, seconds)
        result["probe_step_s"] = step
    config = bench_config(args, data, iters, work / "bench.yaml")
    result.update(iters=iters, config=yaml.safe_load(config.read_text()))
    cmd = [sys.executable, "-m", "mgvsr.cli", "bench", "--config", str(config), "--preset", "basicsr,fast",
           "--out", str(work / "bench")]
    if args.bench_threads:
        cmd += ["--threads", str(args.bench_threads)]
    if train_device is not None:
        cmd += [f"train.device={train_device}"]
    result["command"] = shlex.join(cmd)
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    print(f"  {result['command']}", flush=True)
    start = time.monotonic()
    code, tail = run_bench(cmd, env, budget.left(stage))
    result["wall_s"] = round(time.monotonic() - start, 1)
    if code != 0:
        result["error"] = "killed at the stage deadline" if code is None else f"mgvsr bench exited with {code}"
        result["output_tail"] = tail
        budget.note(stage, result["error"])
        return
    saved = json.loads((work / "bench" / "results.json").read_text())
    fields = ("variant", "seed", "train_time_s", "val_psnr_y", "val_ssim_y", "psnr_y_diff", "speedup", "data_wait_share")
    result["runs"] = [{**{k: r[k] for k in fields}, "timing_check": r["timing_check"]["status"]} for r in saved["per_run"]]
    result["descriptions"] = saved.get("descriptions")
    result["bicubic_psnr_y"] = saved["runs"]["basicsr"][0].get("bicubic_psnr_y")
    result["table"] = (work / "bench" / "results.txt").read_text()


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def default_json_path(device: torch.device) -> Path:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    file = f"gpu_check_{slug}_{dt.date.today().isoformat()}.json"
    return Path(os.environ["OUT"]) / file if os.environ.get("OUT") else REPO / "docs" / "results" / file


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "basicvsr_reds_multigrid.yaml"),
                   help="the paper-scale multigrid config (its fixed baseline is the same with schedule.kind=fixed)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cuda, cuda:N or cpu")
    p.add_argument("--tiny", action="store_true",
                   help="toy sizes (8 features, 1 block, LR patches 16 -> 24, T 2 -> 4, batch 2) for a CPU smoke run")
    p.add_argument("--out", "--json", dest="json",
                   help="where to write the results (default: $OUT/ or docs/results/gpu_check_<device>_<date>.json)")
    p.add_argument("--budget-s", "--budget", dest="budget", type=float, default=None,
                   help=f"hard limit in seconds for the whole check (default {DEFAULT_BUDGET_S:.0f}; tiny "
                   f"{TINY_BUDGET_S:.0f}); what does not fit is skipped and recorded as skipped")
    p.add_argument("--force-bf16", action="store_true",
                   help="time the bf16 modes even where bf16 is not native (emulated bf16 on an AVX2-only CPU "
                   "is tens of times slower than fp32; by default those rows are skipped)")
    p.add_argument("--stage-budgets", type=float, nargs=4, metavar=("A", "B", "C", "D"), default=None,
                   help="nominal seconds of the stages step_times, scaled_batch, projection, side_by_side "
                   f"(default {' '.join(f'{v:.0f}' for v in DEFAULT_STAGE_BUDGETS.values())})")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages to run (default all)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per shape (default 2; tiny 1)")
    p.add_argument("--repeat", type=int, default=None, help="timed steps per shape, median reported (default 5; tiny 1)")
    p.add_argument("--sweep-batches", default=None,
                   help="extra per-device batches timed at the full shape (default 2,8,16; tiny 4; '' = none)")
    p.add_argument("--no-flops", action="store_true", help="leave the FLOP ratio out of the projection")
    p.add_argument("--cudnn-benchmark", choices=["on", "off"], default="on",
                   help="torch.backends.cudnn.benchmark for every mode (BasicSR trains with it on)")
    p.add_argument("--bench-seconds", type=float, default=None, help="training seconds per side-by-side run (default 60; tiny 2)")
    p.add_argument("--bench-iters", type=int, default=None,
                   help="iterations per side-by-side run (default: sized from a probe to --bench-seconds; tiny 2)")
    p.add_argument("--keep-work", action="store_true", help="keep the side-by-side run folders and data (temporary folder)")
    p.add_argument("--bench-data", choices=["synthetic", "demo"], default="synthetic",
                   help="generated texture clips (no video decoder needed) or the bundled demo_data (needs PyAV)")
    p.add_argument("--bench-feat", type=int, default=None, help="side-by-side model width (default 64; tiny 4)")
    p.add_argument("--bench-blocks", type=int, default=None, help="side-by-side model depth (default 30; tiny 1)")
    p.add_argument("--bench-shape", type=int, nargs=3, metavar=("T", "PATCH", "BATCH"), default=None,
                   help="side-by-side full shape (default 10 64 4; tiny 4 24 1); its multigrid stages are patch/2 (at least 16) and patch")
    p.add_argument("--bench-lr", type=float, default=4e-4)
    p.add_argument("--bench-workers", type=int, default=None, help="data-loader workers (default 4 on CUDA, else 0)")
    p.add_argument("--bench-threads", type=int, default=None, help="torch threads of the training processes")
    p.add_argument("overrides", nargs="*", help="dotted overrides of --config (e.g. model.num_block=10)")
    args = p.parse_args(argv)
    tiny = args.tiny
    defaults = {"budget": (DEFAULT_BUDGET_S, TINY_BUDGET_S), "warmup": (2, 1), "repeat": (5, 1), "sweep_batches": ("2,8,16", "4"),
                "bench_seconds": (60.0, 2.0), "bench_iters": (0, 2), "bench_feat": (64, 4), "bench_blocks": (30, 1),
                "bench_shape": ([10, 64, 4], [4, 24, 1])}
    for name, (full, small) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else full)
    args.bench_head = args.bench_feat
    args.stage_budgets = dict(zip(STAGES, args.stage_budgets or (TINY_STAGE_BUDGETS if tiny else DEFAULT_STAGE_BUDGETS).values()))
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    for s in args.stages:
        if s not in STAGES:
            p.error(f"--stages: unknown stage {s!r}; choose from {', '.join(STAGES)}")
    if args.warmup < 0 or args.repeat < 1:
        p.error("--warmup must be >= 0 and --repeat >= 1")
    args.sweep = [int(b) for b in args.sweep_batches.split(",") if b.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = [*(TINY_OVERRIDES if args.tiny else []), *args.overrides,
                 "model.spynet_weights=null", "model.edvr_weights=null", "model.init_weights=null"]
    cfg = load_config(args.config, [*overrides, "schedule.kind=multigrid"])
    scaled_cfg = load_config(args.config, [*overrides, "schedule.kind=multigrid", "schedule.scale_batch=true"])
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if args.bench_workers is None:
        args.bench_workers = 4 if device.type == "cuda" else 0
    tune_allocator()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = args.cudnn_benchmark == "on"
    bf16_native = bf16_is_native(device)
    skipped_modes = {} if bf16_native or args.force_bf16 else {
        mode: BF16_NOT_NATIVE for mode, (dtype, _) in MODES.items() if dtype == torch.bfloat16}
    budget = Budget(args.budget, args.stage_budgets)
    out_path = Path(args.json) if args.json else default_json_path(device)
    command = shlex.join(["python", "benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])])
    s, m = cfg.schedule, cfg.model
    full: Shape = (s.num_frames, s.patch_size, s.batch_size)
    settings = {
        "config": args.config, "overrides": overrides, "tiny": args.tiny, "warmup": args.warmup, "repeat": args.repeat,
        "model": {"name": m.name, "num_feat": m.num_feat, "num_block": m.num_block, "head_feat": m.head_feat},
        "params": sum(p.numel() for p in build_model(dataclasses.replace(m, spynet_weights=None)).parameters()),
        "loss": cfg.optim.loss, "optimizer": "torch.optim.Adam (defaults: foreach where supported)",
        "full_shape": list(full), "total_iters": s.total_iters,
        "modes": {"fp32": "fp32 (PyTorch defaults, see tf32)", "bf16": "torch.autocast bf16, loss in fp32",
                  "bf16_cl": "bf16 autocast + model and clips in channels_last"},
        "bf16": {"native": bf16_native, "forced": args.force_bf16,
                 "skipped_modes": sorted(skipped_modes), "reason": BF16_NOT_NATIVE if skipped_modes else None},
    }
    if device.type == "cuda":
        settings["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        settings["tf32"] = {"cudnn_conv": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}
    result: dict = {
        "format": FORMAT, "command": command, "machine": machine_info(), "device": str(device),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "settings": settings,
        "budget": {"total_s": args.budget, "stages": budget.report},
    }

    def save() -> None:
        result["budget"]["elapsed_s"] = round(budget.elapsed(), 1)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1) + "\n")

    print(f"command: {command}\nmachine: {result['machine']}\ndevice: {device}; results: {out_path}", flush=True)
    table = phases(cfg)
    shapes = sorted({(p.num_frames, p.patch_size, p.batch_size) for p in table} | {full}, key=pixels)
    sweep = [(full[0], full[1], b) for b in args.sweep if b != full[2]]
    steps: dict[str, dict[str, dict]] = {mode: {} for mode in MODES}
    scaled: dict[str, dict[str, dict]] = {mode: {} for mode in MODES}
    for mode, reason in skipped_modes.items():
        steps[mode].update({key(shape): {"skipped": reason} for shape in [*shapes, *sweep]})
    timed_modes = [mode for mode in MEASURE_ORDER if mode not in skipped_modes]
    if skipped_modes:
        print(f"modes {', '.join(sorted(skipped_modes))} skipped: {BF16_NOT_NATIVE} (--force-bf16 times them)", flush=True)
    result.update(
        schedule={name: [{"T": p.num_frames, "patch": p.patch_size, "batch": p.batch_size, "iters": p.iters}
                         for p in phases(c)] for name, c in (("multigrid", cfg), ("multigrid_scaled_batch", scaled_cfg))},
        shapes=[list(x) for x in shapes], sweep_shapes=[list(x) for x in sweep],
        step_times=steps, scaled_batch_step_times=scaled,
    )

    def run_stage(stage: str, body) -> None:
        started = time.monotonic()
        if stage not in args.stages:
            budget.report[stage]["skipped"] = "not selected (--stages)"
        else:
            print(f"\n== {stage} ({max(budget.left(stage), 0):.0f} s to its deadline)", flush=True)
            try:
                body()
            except Exception as err:  # one stage's failure must not lose the others' results
                budget.report[stage]["error"] = f"{type(err).__name__}: {err}"
                budget.note(stage, f"failed: {type(err).__name__}: {err}")
        budget.report[stage]["used_s"] = round(time.monotonic() - started, 1)
        save()

    main_modes = [mode for mode in timed_modes if mode not in SECONDARY_MODES]
    secondary_modes = [mode for mode in timed_modes if mode in SECONDARY_MODES]
    overheads: list[float] = []  # per-measurement overhead seconds, shared by the two timing stages

    def stage_a() -> None:
        # Priority: fp32 and bf16_cl at every schedule shape, then the batch sweep, then plain bf16.
        items = [(mode, shape) for mode in main_modes for shape in shapes]
        items += [(mode, shape) for mode in main_modes for shape in sweep]
        items += [(mode, shape) for mode in secondary_modes for shape in shapes]
        time_shapes(cfg, items, steps, "step_times", budget, device, args.warmup, args.repeat, overheads)

    def stage_b() -> None:
        extra = sorted({(p.num_frames, p.patch_size, p.batch_size) for p in phases(scaled_cfg)} - set(shapes), key=pixels)
        result["scaled_batch_shapes"] = [list(x) for x in extra]
        for mode, reason in skipped_modes.items():
            scaled[mode].update({key(shape): {"skipped": reason} for shape in extra})
        items = [(mode, shape) for mode in [*main_modes, *secondary_modes] for shape in extra]
        time_shapes(scaled_cfg, items, scaled, "scaled_batch", budget, device, args.warmup, args.repeat, overheads)

    def stage_c() -> None:
        proj = projections(cfg, scaled_cfg, steps, scaled, not args.no_flops, skipped_modes)
        result["projection"] = proj
        print_projection(proj)

    def stage_d() -> None:
        result["side_by_side"] = {}
        if not bf16_native:
            result["side_by_side"]["note"] = (f"the fast preset's amp=auto computes in fp32 here ({BF16_NOT_NATIVE}); "
                                              f"--force-bf16 applies to the step-time rows only")
        side_by_side(args, budget, device, None if args.device == "auto" else str(device), result["side_by_side"])
        for r in result["side_by_side"].get("runs", []):
            print(f"  {r['variant']:<8} {r['train_time_s']:8.1f} s  PSNR-Y {r['val_psnr_y']:.3f} dB  "
                  f"speedup {r['speedup']:.2f}x  dPSNR-Y {r['psnr_y_diff']:+.3f}  timing {r['timing_check']}", flush=True)

    for stage, body in zip(STAGES, (stage_a, stage_b, stage_c, stage_d)):
        run_stage(stage, body)
    failures = [f"{stage}: {budget.report[stage]['error']}" for stage in STAGES if "error" in budget.report[stage]]
    if "error" in result.get("side_by_side", {}):
        failures.append(f"side_by_side: {result['side_by_side']['error']}")
    result["failures"] = failures
    save()
    print(f"\n== summary: {command}\nmachine: {result['machine']}; device {device}")
    print(step_table(shapes + sweep, steps, result.get("scaled_batch_shapes", []), scaled))
    if "projection" in result:
        print_projection(result["projection"])
    print(f"elapsed {budget.elapsed():.0f} s (budget {args.budget:.0f} s); results: {out_path}")
    if failures:
        print("FAILED: " + "; ".join(failures))
    print("== results (JSON)")
    print(json.dumps(result, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
