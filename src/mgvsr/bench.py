"""``mgvsr bench``: train variants of one config side by side and compare them honestly.

Each variant is the base config plus dotted overrides (``name:key=value,key=value``); the first variant
is the reference (the fixed-shape baseline by default). Every (variant, seed) run is a fresh
``mgvsr train`` process, one after the other, on the same data with the same iteration count, so timings
are measured side by side on the same machine in one invocation. Reported per variant (median over
seeds, with the spread): training wall-clock time (validation excluded), final validation PSNR/SSIM (RGB
and Y), estimated training FLOPs, data-wait share; and against the reference: speedup, PSNR difference,
FLOP ratio, speedup / FLOP-ratio, and the time to reach the reference's final PSNR-Y.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from mgvsr import __version__
from mgvsr.config import Config, ConfigError, load_config, to_dict
from mgvsr.tracking import plot_psnr_vs_time, read_val_log, write_json

DEFAULT_CONFIG = "configs/bench.yaml"
# "Reaching" the reference's final PSNR-Y within this tolerance (dB) also counts (the goal's -0.05 dB).
REACH_TOLERANCE_DB = 0.05
DEFAULT_VARIANTS = ["baseline:schedule.kind=fixed", "multigrid:schedule.kind=multigrid"]


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


def machine_info() -> dict:
    import torch

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
    current = to_dict(cfg)
    for tree in (saved, current):
        for key in _COSMETIC_KEYS:
            tree["train"].pop(key, None)
    if saved != current or summary.get("steps") != cfg.schedule.total_iters or "val_psnr_y" not in summary:
        return None
    return summary


def run_variant(config: str, name: str, overrides: list[str], seed: int, out: Path, threads: int | None,
                reuse: tuple[Path, ...] = ()) -> dict:
    """Train one (variant, seed) in a fresh process, or take the finished run of the same config from
    ``out`` or one of the ``reuse`` folders (a benchmark interrupted or extended keeps its runs)."""
    run_name = f"{name}_seed{seed}"
    args = [*overrides, f"train.seed={seed}", f"train.name={run_name}", f"train.out_dir={out}", "train.resume=auto"]
    cfg = load_config(config, args)
    for folder in (out, *reuse):
        summary = finished_run(folder / run_name, cfg)
        if summary is not None:
            run_dir = folder / run_name
            print(f"\n=== {run_name}: reusing the finished run in {run_dir} (same config)", flush=True)
            break
    else:
        cmd = [sys.executable, "-m", "mgvsr.cli", "train", config, *args]
        env = dict(os.environ)
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        print(f"\n=== {run_name}: {shlex.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True, env=env)
        run_dir = out / run_name
        summary = json.loads((run_dir / "summary.json").read_text())
    summary["flops"] = run_flops(cfg)
    summary["curve"] = read_val_log(run_dir / "val_log.csv")
    return summary


def compare(results: dict[str, list[dict]], reference: str) -> dict:
    ref_runs = results[reference]
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
        table[name] = row
    return table


def _ratio_or_never(value: float | None) -> str:
    return f"{value:.2f}x" if value else "never"


def format_table(table: dict, reference: str) -> str:
    head = (f"{'variant':<16}{'time (s)':>10}{'PSNR':>8}{'PSNR-Y':>8}{'SSIM-Y':>8}{'dPSNR-Y':>9}"
            f"{'speedup':>9}{'FLOPx':>7}{'eff':>6}{'reach':>7}{'reach-tol':>10}{'tol-avg':>8}{'wait':>7}")
    lines = [head, "-" * len(head)]
    for name, r in table.items():
        reach, reach_tol, tol_avg = (
            _ratio_or_never(r.get(key)) for key in
            ("time_to_reach_ref_speedup", "time_to_reach_ref_tol_speedup", "time_to_reach_ref_tol_mean_speedup")
        )
        lines.append(
            f"{name:<16}{r['train_time_s']:>10.1f}{r['val_psnr']:>8.2f}{r['val_psnr_y']:>8.2f}{r['val_ssim_y']:>8.4f}"
            f"{r['psnr_y_diff']:>+9.3f}{r['speedup']:>8.2f}x{r['flop_ratio']:>6.2f}x{r['speedup_over_flop_ratio']:>6.2f}"
            f"{reach:>7}{reach_tol:>10}{tol_avg:>8}{100 * r['data_wait_share']:>6.1f}%"
        )
    lines.append(
        f"(reference: {reference}; speedup = its time / variant time; FLOPx = its FLOPs / variant FLOPs; "
        "eff = speedup / FLOPx; reach = its time / time the variant needs to reach its final PSNR-Y; "
        f"reach-tol = the same for its final PSNR-Y - {REACH_TOLERANCE_DB} dB (median over seeds; never if a seed "
        "never reaches it); tol-avg = reach-tol of the seed-averaged curve against the seed-averaged final; "
        "wait = share of step time waiting for data)"
    )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"base config (default {DEFAULT_CONFIG})")
    parser.add_argument(
        "--variant", action="append", default=None,
        help="NAME:key=value,key=value (repeatable; the first is the reference). "
        f"Default: {' '.join(DEFAULT_VARIANTS)}",
    )
    parser.add_argument("--seeds", type=int, default=1, help="seeds per variant (0, 1, ...)")
    parser.add_argument("--out", default="runs/bench", help="output folder")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: all cores)")
    parser.add_argument("--reuse", action="append", default=[], metavar="DIR",
                        help="another bench folder whose finished runs of the same name and config are taken "
                        "instead of training again (repeatable); finished runs in --out are always reused")
    parser.add_argument("--report", action="store_true",
                        help="only recompute the table and plot from OUT/results.json (no training)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides applied to every variant")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.report:
        saved = json.loads((out / "results.json").read_text())
        text, plot = write_results(out, saved["runs"], saved["reference"], saved["command"], saved["machine"],
                                   saved["started"], saved["config"], list(saved["variants"].items()),
                                   saved.get("finished"))
        print(f"{text}\n\nresults: {out / 'results.json'}\nplot: {plot}")
        return 0
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    out.mkdir(parents=True, exist_ok=True)
    load_config(args.config, args.overrides)  # fail fast on a bad config or override
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    command = shlex.join(["mgvsr", "bench", *sys.argv[2:]]) if sys.argv[1:2] == ["bench"] else shlex.join(sys.argv)
    info = machine_info()
    print(f"command: {command}\nmachine: {info}\nstarted: {started}", flush=True)

    results: dict[str, list[dict]] = {name: [] for name, _ in variants}
    reference = variants[0][0]
    for seed in range(args.seeds):
        for name, overrides in variants:
            results[name].append(
                run_variant(args.config, name, [*args.overrides, *overrides], seed, out, args.threads,
                            tuple(Path(d) for d in args.reuse))
            )
            # Results so far (pairs of complete seeds), so an interrupted benchmark still reports.
            done = {n: runs for n, runs in results.items() if runs}
            n_ref = len(results[reference])
            done = {n: runs[:n_ref] for n, runs in done.items() if n_ref and len(runs) >= 1}
            text, plot = write_results(out, done, reference, command, info, started, args.config, variants)
    print("\n" + text)
    print(f"\nresults: {out / 'results.json'}\nplot: {plot}")
    return 0


def write_results(out: Path, results: dict, reference: str, command: str, info: dict, started: str,
                  config: str, variants: list, finished: str | None = None) -> tuple[str, Path]:
    table = compare(results, reference)
    text = format_table(table, reference)
    curves = {f"{name} (seed {i})": r["curve"] for name, runs in results.items() for i, r in enumerate(runs)}
    bicubic = next(iter(results[reference]))["bicubic_psnr_y"]
    plot = plot_psnr_vs_time(curves, out / "psnr_vs_time.png", references={f"bicubic ({bicubic:.2f} dB)": bicubic})
    write_json(out / "results.json", {
        "command": command, "machine": info, "started": started,
        "finished": finished or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config, "variants": {n: o for n, o in variants}, "reference": reference,
        "table": table, "runs": results,
    })
    (out / "results.txt").write_text(f"command: {command}\nmachine: {info}\nstarted: {started}\n\n{text}\n")
    return text, plot
