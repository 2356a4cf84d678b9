"""``mgvsr bench``: train variants of one config side by side and compare them honestly.

Each variant is the base config plus dotted overrides (``--variant name:key=value,key=value``) or a
named preset from :data:`PRESETS` (``--preset basicsr,fast``); the first variant is the reference (the
fixed-shape baseline by default). Every (variant, seed) run is a fresh ``mgvsr train`` process, one
after the other, on the same data with the same iteration count, so timings are measured side by side
on the same machine in one invocation. Reported per variant (median over seeds, with the spread) and
per run: training wall-clock time (validation excluded), final validation PSNR/SSIM (RGB and Y),
estimated training FLOPs, data-wait share; and against the reference: speedup, PSNR difference, FLOP
ratio, speedup / FLOP-ratio, and the time to reach the reference's final PSNR-Y.

A timing is only worth something if nothing else used the machine meanwhile. Each training process is
therefore watched (:class:`CpuWatch`): its own CPU time against its wall time and thread count, the
CPU time the rest of the machine used meanwhile (``/proc/stat``), and the load average. A run whose
share of the CPU falls below ``--min-cpu-share`` or during which other processes used more than
``--max-other-share`` of the machine is *disturbed*; every speedup computed from it carries a warning.
The measurements are kept in the run folder (``bench_cpu.json``), so a reused run keeps them; runs
trained before they were recorded are reported as *unchecked*.
"""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import datetime as dt
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from mgvsr import __version__
from mgvsr.config import Config, ConfigError, load_config, to_dict
from mgvsr.errors import MgvsrError
from mgvsr.tracking import plot_psnr_vs_time, read_val_log, write_json

DEFAULT_CONFIG = "configs/bench.yaml"
# "Reaching" the reference's final PSNR-Y within this tolerance (dB) also counts (the goal's -0.05 dB).
REACH_TOLERANCE_DB = 0.05
DEFAULT_VARIANTS = ["baseline:schedule.kind=fixed", "multigrid:schedule.kind=multigrid"]
# A run is disturbed when its process got less than this share of the CPU time its threads could use
# over its whole life... Not 0.9: the share also counts the run's own single-threaded phases (start-up,
# numpy validation metrics, the end-of-run report; about 2 minutes of each 400-step run of
# configs/bench.yaml), which alone can take a short undisturbed run below 0.9, while one competing
# single-threaded job takes a 2-thread run on 2 cores to about 2/3.
DEFAULT_MIN_CPU_SHARE = 0.75
# ... or when other processes used more than this share of the whole machine while it ran (the direct
# signal, free of the run's own serial phases; Linux only).
DEFAULT_MAX_OTHER_SHARE = 0.1
CPU_FILE = "bench_cpu.json"  # per run folder: the CPU measurements of every process that trained it
LOG_FILE = "train_output.log"  # per run folder: everything its training processes printed


class BenchError(MgvsrError, ValueError):
    """A benchmark that cannot go on (bad variant, failed run, missing results); reported in one line."""


# --------------------------------------------------------------------------------------------------
# Variants: dotted overrides, or named presets
# --------------------------------------------------------------------------------------------------

# The recipes compared by the fast-training benchmark (docs/benchmarks.md). ``auto`` settings resolve
# per device (mgvsr.runtime): bf16 only where it is native, channels_last on CUDA; each run's table row
# shows what it actually computed in. ``model.zero_init_output`` starts the model at its bilinear base,
# which shortens the start-up plateau (docs/benchmarks.md, section 7); ``zero_init`` measures it alone.
_FP32 = ["train.amp=none", "train.channels_last=false", "optim.adam_impl=foreach"]
_AUTO = ["train.amp=auto", "train.channels_last=auto", "optim.adam_impl=auto"]
_BASICSR = ["schedule.kind=fixed", *_FP32]
PRESETS: dict[str, tuple[str, list[str]]] = {
    "basicsr": ("BasicSR's recipe: fixed shape, fp32, contiguous, torch's multi-tensor Adam", _BASICSR),
    "multigrid": ("multigrid schedule, fp32, contiguous, torch's multi-tensor Adam",
                  ["schedule.kind=multigrid", *_FP32]),
    "precision": ("fixed shape, bf16 autocast + channels_last where the device runs them natively (auto)",
                  ["schedule.kind=fixed", *_AUTO]),
    "zero_init": ("BasicSR's recipe with the last conv zero-initialised (fast's init, alone)",
                  [*_BASICSR, "model.zero_init_output=true"]),
    "fast": ("multigrid + last conv zero-initialised + bf16 autocast + channels_last where native (auto)",
             ["schedule.kind=multigrid", *_AUTO, "model.zero_init_output=true"]),
}


@dataclasses.dataclass
class Variant:
    name: str
    overrides: list[str]
    description: str = ""


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition(":")
    if not name:
        raise SystemExit(f"--variant {text!r}: expected NAME:key=value,key=value")
    overrides = [o for o in _split_overrides(rest) if o]
    return name, overrides


def _split_overrides(text: str) -> list[str]:
    """Split on commas that are not inside brackets (lists such as [32,48,64] keep their commas)."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return parts


def preset_variants(text: str) -> list[Variant]:
    """The presets named in ``text`` (comma-separated; ``all`` = every preset in table order)."""
    names = list(PRESETS) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    variants = []
    for name in names:
        if name not in PRESETS:
            raise BenchError(f"--preset: unknown preset '{name}'; choose from {', '.join(PRESETS)} or all")
        description, overrides = PRESETS[name]
        variants.append(Variant(name, list(overrides), description))
    return variants


def resolve_variants(specs: list[tuple[str, str]] | None) -> list[Variant]:
    """The variants in command-line order from (``variant`` | ``preset``, text) pairs; the defaults
    when none was given; an error for a name used twice."""
    variants: list[Variant] = []
    for kind, text in specs or [("variant", v) for v in DEFAULT_VARIANTS]:
        if kind == "preset":
            variants.extend(preset_variants(text))
        else:
            variants.append(Variant(*parse_variant(text)))
    names = [v.name for v in variants]
    for name in names:
        if names.count(name) > 1:
            raise BenchError(f"variant '{name}' is given twice; variant names must differ (they name the run folders)")
    return variants


def machine_info() -> dict:
    """What the numbers were measured on; ``cpu_isa`` and ``cpu_bf16_native`` because two machines
    sold under the same name may differ in both (bf16 is 40x slower than fp32 where it is emulated)."""
    import torch

    from mgvsr.runtime import bf16_is_native

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "python": platform.python_version(), "platform": platform.platform(), "mgvsr": __version__,
        "cpu_isa": torch.backends.cpu.get_cpu_capability(), "cpu_bf16_native": bf16_is_native(torch.device("cpu")),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_flops(cfg: Config) -> float:
    """Estimated training FLOPs of the whole run (sum over schedule phases)."""
    from mgvsr.flops import train_flops
    from mgvsr.schedule import phases

    return float(sum(p.iters * train_flops(cfg.model, p.num_frames, p.patch_size, p.batch_size) for p in phases(cfg)))


def time_to_reach(curve: list[dict], target: float, key: str = "psnr_y") -> float | None:
    """First wall-clock time at which the validation curve reaches ``target`` (linear interpolation)."""
    prev = None
    for row in curve:
        if row[key] >= target:
            if prev is None or prev[key] >= target:
                return row["wall_time"]
            frac = (target - prev[key]) / (row[key] - prev[key])
            return prev["wall_time"] + frac * (row["wall_time"] - prev["wall_time"])
        prev = row
    return None


def mean_curve(curves: list[list[dict]], key: str = "psnr_y") -> list[dict]:
    """The seeds' validation curves averaged point by point: at each step that every curve has, the mean
    wall-clock time and the mean ``key``."""
    by_step = [{row.get("step", i): row for i, row in enumerate(curve)} for curve in curves]
    steps = sorted(set.intersection(*(set(rows) for rows in by_step))) if by_step else []
    return [
        {"step": step,
         "wall_time": statistics.mean(rows[step]["wall_time"] for rows in by_step),
         key: statistics.mean(rows[step][key] for rows in by_step)}
        for step in steps
    ]


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _spread(values: list[float]) -> float:
    return float(max(values) - min(values)) if values else 0.0


# Settings that do not change what a run computes; two finished runs that differ only in these are the same.
_COSMETIC_KEYS = ("out_dir", "name", "resume", "progress", "tensorboard")


def finished_run(run_dir: Path, cfg: Config) -> dict | None:
    """The summary of a run in ``run_dir`` that finished all of ``cfg``'s iterations with the same
    config (output/progress settings aside), else None."""
    summary_path, config_path = run_dir / "summary.json", run_dir / "config.yaml"
    if not (summary_path.is_file() and config_path.is_file()):
        return None
    try:
        summary = json.loads(summary_path.read_text())
        saved = to_dict(load_config(config_path))
    except (OSError, ValueError, ConfigError):
        return None
    current = to_dict(_resolved(cfg))
    for tree in (saved, current):
        for key in _COSMETIC_KEYS:
            tree["train"].pop(key, None)
    if saved != current or summary.get("steps") != cfg.schedule.total_iters or "val_psnr_y" not in summary:
        return None
    return summary


def _resolved(cfg: Config) -> Config:
    """``cfg`` with ``train.amp`` / ``train.channels_last`` ``auto`` resolved for the device the run
    uses, as training saves them in the run's ``config.yaml`` (the same function training calls)."""
    from mgvsr.runtime import resolve_device  # torch and the training loop: only when needed
    from mgvsr.train import resolve_device_settings

    try:
        device = resolve_device(cfg.train.device)
    except MgvsrError:
        return cfg
    return resolve_device_settings(cfg, device, warn=False)


def run_precision(run_dir: Path) -> str:
    """What a finished run computed in, from its saved (resolved) config: ``fp32`` / ``bf16`` /
    ``fp16``, with ``+cl`` for channels_last; ``?`` when the config cannot be read."""
    try:
        train = to_dict(load_config(run_dir / "config.yaml"))["train"]
    except (OSError, ValueError, ConfigError):
        return "?"
    amp = train.get("amp", "none")
    return ("fp32" if amp == "none" else amp) + ("+cl" if train.get("channels_last") is True else "")


# --------------------------------------------------------------------------------------------------
# Was the machine ours? CPU time of the training process against its wall time and the rest of the machine
# --------------------------------------------------------------------------------------------------


def machine_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU time of the whole machine since boot, in clock ticks, from ``/proc/stat``
    (busy = user + nice + system + irq + softirq + steal; idle and iowait are not busy); None where
    ``/proc/stat`` cannot be read (not Linux)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def cpu_record(wall_s: float, user_s: float, sys_s: float, threads: int, machine_busy: int | None,
               machine_total: int | None, ticks_per_s: float, loads: list[float]) -> dict:
    """What one training process used. ``cpu_share`` = its CPU time / (wall time x its threads): about
    1 when it had its cores to itself, lower when something else took them. ``other_share`` = the
    machine's busy time minus the process's own, as a share of the machine's whole capacity over the
    same interval (None without ``/proc/stat``). ``loads`` are 1-minute load averages sampled meanwhile."""
    cpu_s = user_s + sys_s
    other = None
    if machine_busy is not None and machine_total:
        other = max(0.0, machine_busy - cpu_s * ticks_per_s) / machine_total
    return {
        "wall_s": round(wall_s, 3), "cpu_user_s": round(user_s, 3), "cpu_sys_s": round(sys_s, 3),
        "cpu_s": round(cpu_s, 3), "threads": threads,
        "cpu_share": round(cpu_s / (wall_s * threads), 4) if wall_s > 0 and threads > 0 else None,
        "other_share": None if other is None else round(other, 4), "machine_cores": os.cpu_count(),
        "load_start": loads[0] if loads else None, "load_end": loads[-1] if loads else None,
        "load_max": max(loads) if loads else None,
        "load_mean": round(statistics.mean(loads), 3) if loads else None,
    }


class CpuWatch:
    """Context manager around one child process: on exit, ``record`` holds :func:`cpu_record` for it.

    The child's CPU time comes from ``getrusage(RUSAGE_CHILDREN)`` before and after (so the child must
    be waited for inside the block, and no other child may end meanwhile); the load average is sampled
    every ``interval_s`` seconds by a background thread."""

    def __init__(self, threads: int, interval_s: float = 5.0):
        self.threads, self.interval_s = threads, interval_s
        self.loads: list[float] = []
        self.record: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.loads.append(os.getloadavg()[0])

    def __enter__(self) -> CpuWatch:
        self.loads.append(os.getloadavg()[0])
        self._usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._jiffies = machine_jiffies()
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.monotonic() - self._start
        usage, jiffies = resource.getrusage(resource.RUSAGE_CHILDREN), machine_jiffies()
        self._stop.set()
        self._thread.join()
        self.loads.append(os.getloadavg()[0])
        busy = total = None
        if self._jiffies is not None and jiffies is not None:
            busy, total = jiffies[0] - self._jiffies[0], jiffies[1] - self._jiffies[1]
        self.record = cpu_record(wall, usage.ru_utime - self._usage.ru_utime, usage.ru_stime - self._usage.ru_stime,
                                 self.threads, busy, total, os.sysconf("SC_CLK_TCK"), self.loads)


def timing_check(segments: list[dict] | None, min_cpu_share: float = DEFAULT_MIN_CPU_SHARE,
                 max_other_share: float = DEFAULT_MAX_OTHER_SHARE) -> dict:
    """Judge a run's timing from the CPU records of the processes that trained it (``segments``, one
    per process; several when it was interrupted and resumed). The shares are pooled over the
    processes, weighted by their time, so each counts as much as it added to the run's time.

    status: ``ok``; ``disturbed`` (CPU share below ``min_cpu_share`` or other processes above
    ``max_other_share``); ``unchecked`` (no records, or the run's first part was trained without them)."""
    if not segments:
        return {"status": "unchecked", "reasons": ["no CPU records (trained before mgvsr bench kept them)"]}
    cpu_s = sum(s["cpu_s"] for s in segments)
    capacity = sum(s["wall_s"] * s["threads"] for s in segments)
    share = cpu_s / capacity if capacity > 0 else None
    timed = [s for s in segments if s.get("other_share") is not None]
    wall = sum(s["wall_s"] for s in timed)
    other = sum(s["other_share"] * s["wall_s"] for s in timed) / wall if timed and wall > 0 else None
    loads = [s["load_max"] for s in segments if s.get("load_max") is not None]
    check = {"cpu_share": share, "other_share": other, "load_max": max(loads) if loads else None,
             "processes": len(segments), "reasons": []}
    if share is not None and share < min_cpu_share:
        check["reasons"].append(f"CPU share {share:.2f} < {min_cpu_share:.2f}")
    if other is not None and other > max_other_share:
        check["reasons"].append(f"other processes used {100 * other:.0f}% of the machine "
                                f"(> {100 * max_other_share:.0f}%)")
    if check["reasons"]:
        check["status"] = "disturbed"
    elif segments[0].get("resumed"):
        check["status"] = "unchecked"
        check["reasons"].append("its first part was trained without CPU records")
    else:
        check["status"] = "ok"
    return check


def read_cpu_records(run_dir: Path) -> list[dict]:
    try:
        return list(json.loads((run_dir / CPU_FILE).read_text())["segments"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _append_cpu_record(run_dir: Path, record: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / CPU_FILE, {"segments": [*read_cpu_records(run_dir), record]})


def threads_used(cfg: Config, threads: int | None) -> int:
    """How many CPU threads the training process can keep busy: its torch threads on the CPU; 1 (the
    host thread) on an accelerator, where ``other_share`` is the meaningful signal."""
    device = cfg.train.device
    if device.startswith(("cuda", "mps")):
        return 1
    import torch

    if device == "auto" and torch.cuda.is_available():
        return 1
    return threads or torch.get_num_threads()


# --------------------------------------------------------------------------------------------------
# Running one (variant, seed)
# --------------------------------------------------------------------------------------------------


def _copy_output(stream, log, decoder) -> None:
    """Copy a child's output to the log file and to our stdout until it closes."""
    while chunk := stream.read1(65536):
        log.write(chunk)
        log.flush()
        sys.stdout.write(decoder.decode(chunk))
        sys.stdout.flush()


def run_logged(cmd: list[str], env: dict, log_path: Path) -> int:
    """Run ``cmd`` with its stdout and stderr shown here as it goes and appended to ``log_path``;
    returns its exit code (negative: killed by that signal)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        log.write(f"=== {stamp}: {shlex.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            _copy_output(proc.stdout, log, decoder)
        except KeyboardInterrupt:
            # The child got the same SIGINT and is saving a checkpoint: keep its output until it exits.
            _copy_output(proc.stdout, log, decoder)
            proc.wait()
            raise
        finally:
            proc.stdout.close()
        return proc.wait()


def _has_checkpoints(run_dir: Path) -> bool:
    folder = run_dir / "checkpoints"
    return folder.is_dir() and any(folder.iterdir())


def _describe_check(check: dict) -> str:
    parts = []
    if check.get("cpu_share") is not None:
        parts.append(f"CPU share {check['cpu_share']:.2f}")
    if check.get("other_share") is not None:
        parts.append(f"other processes {100 * check['other_share']:.0f}% of the machine")
    if check.get("load_max") is not None:
        parts.append(f"load average up to {check['load_max']:.1f}")
    return ", ".join(parts)


def train_command(config: str, args: list[str]) -> list[str]:
    """The command that trains one run: ``mgvsr train`` in this Python."""
    return [sys.executable, "-m", "mgvsr.cli", "train", config, *args]


def train_run(config: str, cfg: Config, args: list[str], name: str, seed: int, run_dir: Path,
              threads: int | None) -> dict:
    """Train one run in a fresh ``mgvsr train`` process, watched by :class:`CpuWatch`; the CPU record
    is appended to the run folder's ``bench_cpu.json``, the output to its ``train_output.log``.
    Raises :class:`BenchError` when the process fails."""
    cmd = train_command(config, args)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log = run_dir / LOG_FILE
    resumed = _has_checkpoints(run_dir)
    print(f"\n=== {run_dir.name}: {shlex.join(cmd)}\n    (output also in {log})", flush=True)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    watch, code = CpuWatch(threads_used(cfg, threads)), None
    try:
        with watch:
            code = run_logged(cmd, env, log)
    finally:
        # Kept when the benchmark is interrupted too, so a run resumed later still has its first part.
        if watch.record:
            _append_cpu_record(run_dir, {"started": started, **watch.record, "resumed": resumed, "exit_code": code})
    if code != 0:
        how = f"was killed by signal {-code}" if code < 0 else f"failed with exit code {code}"
        raise BenchError(f"run {name} (seed {seed}) {how}; see {log}")
    check = timing_check(read_cpu_records(run_dir))
    print(f"    timing check: {check['status']} ({_describe_check(check)})", flush=True)
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError) as err:
        raise BenchError(f"run {name} (seed {seed}) ended without a readable {run_dir / 'summary.json'} "
                         f"({err}); see {log}") from None


def run_variant(config: str, name: str, overrides: list[str], seed: int, out: Path, threads: int | None,
                reuse: tuple[Path, ...] = ()) -> dict:
    """Train one (variant, seed) in a fresh process, or take the finished run of the same config from
    ``out`` or one of the ``reuse`` folders (a benchmark interrupted or extended keeps its runs, with
    their CPU records)."""
    run_name = f"{name}_seed{seed}"
    args = [*overrides, f"train.seed={seed}", f"train.name={run_name}", f"train.out_dir={out}", "train.resume=auto"]
    cfg = load_config(config, args)
    for folder in (out, *reuse):
        summary = finished_run(folder / run_name, cfg)
        if summary is not None:
            run_dir = folder / run_name
            check = timing_check(read_cpu_records(run_dir))
            print(f"\n=== {run_name}: reusing the finished run in {run_dir} (same config; timing check: "
                  f"{check['status']}{', ' + _describe_check(check) if check['status'] != 'unchecked' else ''})",
                  flush=True)
            break
    else:
        run_dir = out / run_name
        summary = train_run(config, cfg, args, name, seed, run_dir, threads)
    summary["variant"], summary["seed"] = name, seed
    summary["flops"] = run_flops(cfg)
    summary["precision"] = run_precision(run_dir)
    summary["curve"] = read_val_log(run_dir / "val_log.csv")
    summary["cpu"] = {"segments": read_cpu_records(run_dir)}
    return summary


# --------------------------------------------------------------------------------------------------
# Comparing
# --------------------------------------------------------------------------------------------------


def _label(name: str, index: int, run: dict) -> str:
    return f"{name} seed {run.get('seed', index)}"


def run_checks(results: dict[str, list[dict]], min_cpu_share: float = DEFAULT_MIN_CPU_SHARE,
               max_other_share: float = DEFAULT_MAX_OTHER_SHARE) -> dict[str, list[dict]]:
    """:func:`timing_check` of every run, by variant (old results without CPU records: unchecked)."""
    return {name: [timing_check((r.get("cpu") or {}).get("segments"), min_cpu_share, max_other_share) for r in runs]
            for name, runs in results.items()}


def compare(results: dict[str, list[dict]], reference: str, min_cpu_share: float = DEFAULT_MIN_CPU_SHARE,
            max_other_share: float = DEFAULT_MAX_OTHER_SHARE) -> dict:
    ref_runs = results[reference]
    checks = run_checks(results, min_cpu_share, max_other_share)
    table = {}
    for name, runs in results.items():
        row = {
            "seeds": len(runs),
            "train_time_s": _median([r["train_time_s"] for r in runs]),
            "train_time_spread_s": _spread([r["train_time_s"] for r in runs]),
            "flops": _median([r["flops"] for r in runs]),
            "data_wait_share": _median([r["data_wait_share"] for r in runs]),
        }
        for key in ("val_psnr", "val_ssim", "val_psnr_y", "val_ssim_y"):
            row[key] = float(statistics.mean([r[key] for r in runs]))
            row[key + "_spread"] = _spread([r[key] for r in runs])
        speedups, reach, reach_tol, diffs = [], [], [], []
        for run, ref in zip(runs, ref_runs):  # paired by seed
            speedups.append(ref["train_time_s"] / run["train_time_s"])
            diffs.append(run["val_psnr_y"] - ref["val_psnr_y"])
            t = time_to_reach(run["curve"], ref["val_psnr_y"])
            reach.append(None if t is None else ref["train_time_s"] / t)
            t = time_to_reach(run["curve"], ref["val_psnr_y"] - REACH_TOLERANCE_DB)
            reach_tol.append(None if t is None else ref["train_time_s"] / t)
        row["speedup"] = _median(speedups)
        row["psnr_y_diff"] = float(statistics.mean(diffs))
        row["flop_ratio"] = _median([ref["flops"] / r["flops"] for r, ref in zip(runs, ref_runs)])
        row["speedup_over_flop_ratio"] = row["speedup"] / row["flop_ratio"]
        reached = [x for x in reach if x is not None]
        row["time_to_reach_ref_speedup"] = _median(reached) if len(reached) == len(reach) else None
        reached = [x for x in reach_tol if x is not None]
        row["time_to_reach_ref_tol_speedup"] = _median(reached) if len(reached) == len(reach_tol) else None
        # The goal's reading of "averaged over seeds": the variant's seed-averaged curve against the
        # reference's seed-averaged final PSNR-Y (minus the tolerance) and mean training time.
        target = statistics.mean(r["val_psnr_y"] for r in ref_runs) - REACH_TOLERANCE_DB
        t = time_to_reach(mean_curve([r["curve"] for r in runs]), target)
        ref_time = statistics.mean(r["train_time_s"] for r in ref_runs)
        row["time_to_reach_ref_tol_mean_speedup"] = None if t is None else ref_time / t
        row.update(_row_timing(name, runs, checks[name], reference, ref_runs, checks[reference]))
        table[name] = row
    return table


def _group_labels(labels: list[str]) -> str:
    """``["a seed 0", "a seed 1", "b seed 0"]`` -> ``"a seed 0, 1; b seed 0"``."""
    seeds: dict[str, list[str]] = {}
    for label in labels:
        name, _, seed = label.rpartition(" seed ")
        seeds.setdefault(name, []).append(seed)
    return "; ".join(f"{name} seed {', '.join(s)}" for name, s in seeds.items())


def _row_timing(name: str, runs: list[dict], checks: list[dict], reference: str, ref_runs: list[dict],
                ref_checks: list[dict]) -> dict:
    """The timing verdict of a table row: its own runs' status, and a warning for every ratio to the
    reference (speedup, eff, reach) that rests on a disturbed or unchecked run, its own or the reference's."""
    own = list(zip((_label(name, i, r) for i, r in enumerate(runs)), checks))
    used = own + ([] if name == reference else
                  list(zip((_label(reference, i, r) for i, r in enumerate(ref_runs)), ref_checks))[:len(runs)])
    shares = [c["cpu_share"] for _, c in own if c.get("cpu_share") is not None]
    disturbed = [label for label, c in used if c["status"] == "disturbed"]
    unchecked = [label for label, c in used if c["status"] == "unchecked"]
    statuses = {c["status"] for _, c in own}
    status = "disturbed" if "disturbed" in statuses else "unchecked" if "unchecked" in statuses else "ok"
    warning = None
    if disturbed:
        warning = "disturbed: " + _group_labels(disturbed)
    elif unchecked:
        warning = "unchecked: " + _group_labels(unchecked)
    return {"timing_check": status, "cpu_share": _median(shares) if shares else None,
            "disturbed_runs": [label for label, c in own if c["status"] == "disturbed"],
            "unchecked_runs": [label for label, c in own if c["status"] == "unchecked"],
            "ratio_warning": warning}


def per_run(results: dict[str, list[dict]], reference: str, min_cpu_share: float = DEFAULT_MIN_CPU_SHARE,
            max_other_share: float = DEFAULT_MAX_OTHER_SHARE) -> list[dict]:
    """One row per (variant, seed): its own numbers, the ratios to the reference's run of the same seed,
    and its timing check."""
    checks = run_checks(results, min_cpu_share, max_other_share)
    rows = []
    for name, runs in results.items():
        for i, (run, ref, check) in enumerate(zip(runs, results[reference], checks[name])):
            rows.append({
                "variant": name, "seed": run.get("seed", i), "precision": run.get("precision", "?"),
                "train_time_s": run["train_time_s"],
                "val_psnr_y": run["val_psnr_y"], "val_ssim_y": run["val_ssim_y"],
                "psnr_y_diff": run["val_psnr_y"] - ref["val_psnr_y"],
                "speedup": ref["train_time_s"] / run["train_time_s"], "flops": run["flops"],
                "data_wait_share": run["data_wait_share"], "timing_check": check,
            })
    return rows


_MARKS = {"disturbed": "!", "unchecked": "?"}


def _ratio_or_never(value: float | None) -> str:
    return f"{value:.2f}x" if value else "never"


def _share(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.0f}%" if percent else f"{value:.2f}"


def format_table(table: dict, reference: str, runs: list[dict] | None = None,
                 min_cpu_share: float = DEFAULT_MIN_CPU_SHARE, max_other_share: float = DEFAULT_MAX_OTHER_SHARE) -> str:
    head = (f"{'variant':<16}{'time (s)':>10}{'PSNR':>8}{'PSNR-Y':>8}{'SSIM-Y':>8}{'dPSNR-Y':>9}"
            f"{'speedup':>9}{'FLOPx':>7}{'eff':>6}{'reach':>7}{'reach-tol':>10}{'tol-avg':>8}{'wait':>7}{'cpu':>6}")
    lines = [head, "-" * len(head)]
    for name, r in table.items():
        reach, reach_tol, tol_avg = (
            _ratio_or_never(r.get(key)) for key in
            ("time_to_reach_ref_speedup", "time_to_reach_ref_tol_speedup", "time_to_reach_ref_tol_mean_speedup")
        )
        warning = r.get("ratio_warning")
        mark = _MARKS.get(warning.split(":")[0], " ") if warning else " "
        lines.append(
            f"{name:<16}{r['train_time_s']:>10.1f}{r['val_psnr']:>8.2f}{r['val_psnr_y']:>8.2f}{r['val_ssim_y']:>8.4f}"
            f"{r['psnr_y_diff']:>+9.3f}{r['speedup']:>7.2f}x{mark}"
            f"{r['flop_ratio']:>6.2f}x{r['speedup_over_flop_ratio']:>6.2f}"
            f"{reach:>7}{reach_tol:>10}{tol_avg:>8}{100 * r['data_wait_share']:>6.1f}%{_share(r.get('cpu_share')):>6}"
            + (f"  ({warning})" if warning else "")
        )
    lines.append(
        f"(reference: {reference}; speedup = its time / variant time; FLOPx = its FLOPs / variant FLOPs; "
        "eff = speedup / FLOPx; reach = its time / time the variant needs to reach its final PSNR-Y; "
        f"reach-tol = the same for its final PSNR-Y - {REACH_TOLERANCE_DB} dB (median over seeds; never if a seed "
        "never reaches it); tol-avg = reach-tol of the seed-averaged curve against the seed-averaged final; "
        "wait = share of step time waiting for data; cpu = the runs' CPU time / (wall time x threads))"
    )
    if runs:
        lines += ["", *format_runs(runs)]
    lines += timing_summary(table, runs, min_cpu_share, max_other_share)
    return "\n".join(lines)


def format_runs(runs: list[dict]) -> list[str]:
    head = (f"{'variant':<16}{'seed':>5}{'prec':>9}{'time (s)':>10}{'PSNR-Y':>8}{'SSIM-Y':>8}{'dPSNR-Y':>9}{'speedup':>9}"
            f"{'FLOPs':>11}{'wait':>7}{'cpu':>6}{'other':>6}{'load':>6}  timing")
    lines = ["per run (dPSNR-Y and speedup against the reference's run of the same seed):", head, "-" * len(head)]
    for r in runs:
        check = r["timing_check"]
        load = check.get("load_max")
        lines.append(
            f"{r['variant']:<16}{r['seed']:>5}{r.get('precision', '?'):>9}{r['train_time_s']:>10.1f}{r['val_psnr_y']:>8.3f}{r['val_ssim_y']:>8.4f}"
            f"{r['psnr_y_diff']:>+9.3f}{r['speedup']:>8.2f}x{r['flops']:>11.3e}{100 * r['data_wait_share']:>6.1f}%"
            f"{_share(check.get('cpu_share')):>6}{_share(check.get('other_share'), percent=True):>6}"
            f"{'-' if load is None else f'{load:.1f}':>6}  {check['status']}"
        )
    return lines


def timing_summary(table: dict, runs: list[dict] | None, min_cpu_share: float, max_other_share: float) -> list[str]:
    """The lines under the table that say whether its timings can be trusted."""
    disturbed = [label for r in table.values() for label in r.get("disturbed_runs", [])]
    unchecked = [label for r in table.values() for label in r.get("unchecked_runs", [])]
    reasons = {f"{r['variant']} seed {r['seed']}": r["timing_check"].get("reasons", []) for r in runs or []}
    lines = []
    if disturbed:
        detail = "; ".join(f"{label}: {', '.join(reasons.get(label, []))}" if reasons.get(label) else label
                           for label in disturbed)
        lines.append(f"! DISTURBED timing ({detail}): something else used the CPU while these runs trained, so "
                     "their times, and every speedup / eff / reach computed from them (rows marked !), are not "
                     "trustworthy. Delete their run folders and run the benchmark again on an idle machine.")
    if unchecked:
        lines.append(f"? unchecked timing ({', '.join(unchecked)}): trained without CPU records, so a disturbance "
                     "cannot be ruled out (rows marked ?).")
    if not disturbed and not unchecked:
        lines.append(f"timing check: every run had >= {min_cpu_share:.2f} of its threads' CPU time and other "
                     f"processes used <= {100 * max_other_share:.0f}% of the machine.")
    return [""] + lines if lines else []


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"base config (default {DEFAULT_CONFIG})")
    parser.add_argument(
        "--variant", dest="variants", action="append", type=lambda text: ("variant", text), default=None,
        metavar="NAME:OVERRIDES",
        help="NAME:key=value,key=value (repeatable; the first variant is the reference). "
        f"Default: {' '.join(DEFAULT_VARIANTS)}",
    )
    parser.add_argument(
        "--preset", dest="variants", action="append", type=lambda text: ("preset", text), metavar="NAMES",
        help="named variants, comma-separated or 'all' (repeatable, in order with --variant): "
        + "; ".join(f"{name} = {description}" for name, (description, _) in PRESETS.items()),
    )
    parser.add_argument("--seeds", type=int, default=1, help="seeds per variant (0, 1, ...)")
    parser.add_argument("--out", default="runs/bench", help="output folder")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: all cores)")
    parser.add_argument("--reuse", action="append", default=[], metavar="DIR",
                        help="another bench folder whose finished runs of the same name and config are taken "
                        "instead of training again (repeatable); finished runs in --out are always reused")
    parser.add_argument("--min-cpu-share", type=float, default=DEFAULT_MIN_CPU_SHARE, metavar="S",
                        help="a run whose CPU time / (wall time x threads) is below S is flagged as disturbed "
                        f"(default {DEFAULT_MIN_CPU_SHARE})")
    parser.add_argument("--max-other-share", type=float, default=DEFAULT_MAX_OTHER_SHARE, metavar="S",
                        help="a run during which other processes used more than this share of the machine's CPU "
                        f"is flagged as disturbed (default {DEFAULT_MAX_OTHER_SHARE})")
    parser.add_argument("--report", action="store_true",
                        help="only recompute the table and plot from OUT/results.json (no training)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides applied to every variant")


def run(args: argparse.Namespace) -> int:
    return _run(args)  # BenchError is an MgvsrError: cli.main prints it as one line and exits 2


def _check_configs(config: str, overrides: list[str], variants: list[Variant]) -> None:
    """Load every variant's config before training anything, so a typo in the last variant does not
    surface an hour into the benchmark."""
    checks = [("", overrides)] + [(f"variant {v.name}: ", [*overrides, *v.overrides]) for v in variants]
    for where, all_overrides in checks:
        try:
            cfg = load_config(config, all_overrides)
        except ConfigError as err:
            raise BenchError(f"{where}{err}") from None
        if cfg.data.val is None:
            raise BenchError(f"{where}{config}: the benchmark compares validation scores, so data.val must be set")


def _run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    thresholds = (args.min_cpu_share, args.max_other_share)
    if args.report:
        try:
            saved = json.loads((out / "results.json").read_text())
        except (OSError, ValueError) as err:
            raise BenchError(f"--report: cannot read {out / 'results.json'} ({err})") from None
        meta = {key: saved.get(key) for key in ("command", "machine", "started", "config", "variants",
                                                "descriptions", "finished")}
        text, plot = write_results(out, saved["runs"], saved["reference"], meta, *thresholds)
        print(f"{text}\n\nresults: {out / 'results.json'}\nplot: {plot}")
        return 0
    if args.seeds < 1:
        raise BenchError(f"--seeds must be at least 1, got {args.seeds}")
    variants = resolve_variants(args.variants)
    _check_configs(args.config, args.overrides, variants)
    out.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    command = shlex.join(["mgvsr", "bench", *sys.argv[2:]]) if sys.argv[1:2] == ["bench"] else shlex.join(sys.argv)
    info = machine_info()
    meta = {"command": command, "machine": info, "started": started, "config": args.config,
            "variants": {v.name: v.overrides for v in variants},
            "descriptions": {v.name: v.description for v in variants if v.description}}
    print(f"command: {command}\nmachine: {info}\nstarted: {started}", flush=True)
    print("\n".join(_variant_lines(meta)), flush=True)

    results: dict[str, list[dict]] = {v.name: [] for v in variants}
    reference = variants[0].name
    for seed in range(args.seeds):
        for variant in variants:
            results[variant.name].append(
                run_variant(args.config, variant.name, [*args.overrides, *variant.overrides], seed, out,
                            args.threads, tuple(Path(d) for d in args.reuse))
            )
            # Results so far (pairs of complete seeds), so an interrupted benchmark still reports.
            n_ref = len(results[reference])
            done = {n: runs[:n_ref] for n, runs in results.items() if runs}
            text, plot = write_results(out, done, reference, meta, *thresholds)
    print("\n" + text)
    print(f"\nresults: {out / 'results.json'}\nplot: {plot}")
    return 0


def _variant_lines(meta: dict) -> list[str]:
    descriptions = meta.get("descriptions") or {}
    return ["variants:"] + [
        f"  {name}: {' '.join(overrides) or '(base config)'}"
        + (f"  -- {descriptions[name]}" if name in descriptions else "")
        for name, overrides in (meta.get("variants") or {}).items()
    ]


def write_results(out: Path, results: dict, reference: str, meta: dict,
                  min_cpu_share: float = DEFAULT_MIN_CPU_SHARE,
                  max_other_share: float = DEFAULT_MAX_OTHER_SHARE) -> tuple[str, Path]:
    """Write ``results.json``, ``results.txt`` and the PSNR-vs-time plot for the runs so far; returns
    the printed table and the plot's path. ``meta``: command, machine, started, config, variants
    (name -> overrides), descriptions, and finished (now if absent)."""
    table = compare(results, reference, min_cpu_share, max_other_share)
    runs = per_run(results, reference, min_cpu_share, max_other_share)
    text = format_table(table, reference, runs, min_cpu_share, max_other_share)
    labels = {(name, i): f"{name} (seed {r.get('seed', i)})" for name, rs in results.items() for i, r in enumerate(rs)}
    curves = {label: results[name][i]["curve"] for (name, i), label in labels.items()}
    bicubic = next(iter(results[reference]))["bicubic_psnr_y"]
    plot = plot_psnr_vs_time(curves, out / "psnr_vs_time.png", references={f"bicubic ({bicubic:.2f} dB)": bicubic},
                             groups={label: name for (name, _), label in labels.items()})
    finished = meta.get("finished") or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    write_json(out / "results.json", {
        **{key: meta.get(key) for key in ("command", "machine", "started")}, "finished": finished,
        "config": meta.get("config"), "variants": meta.get("variants"), "descriptions": meta.get("descriptions") or {},
        "reference": reference,
        "timing_thresholds": {"min_cpu_share": min_cpu_share, "max_other_share": max_other_share},
        "table": table, "per_run": runs, "runs": results,
    })
    header = f"command: {meta.get('command')}\nmachine: {meta.get('machine')}\nstarted: {meta.get('started')}"
    (out / "results.txt").write_text(header + "\n" + "\n".join(_variant_lines(meta)) + f"\n\n{text}\n")
    return text, plot
