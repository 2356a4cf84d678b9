"""``mgvsr schedule CONFIG [key=value ...]``: print a run's phases and its cost against the fixed baseline.

One row per phase: steps, shape (T, patch, per-device batch), the learning rate range over the phase,
the cost of one step relative to one step at the full shape (T = num_frames, patch = patch_size,
batch = batch_size), and the phase's share of the run's compute. The last line is the whole run's
cost relative to the fixed baseline (same total_iters, every step at the full shape).

Cost is FLOPs of forward + backward of the real model (``mgvsr.flops``) by default, or the pixel
count ``batch * T * patch^2`` with ``--cost pixels`` (instant, no model needed).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from mgvsr.config import Config, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides such as schedule.total_iters=1000")
    parser.add_argument("--world-size", type=int, default=1, help="number of devices (for LR scaling)")
    parser.add_argument(
        "--cost",
        choices=["flops", "pixels"],
        default="flops",
        help="cost model: FLOPs of the real model (default) or batch*T*patch^2",
    )
    parser.add_argument("--json", action="store_true", help="print the table as JSON")


def cost_function(cfg: Config, kind: str) -> Callable[[int, int, int], float]:
    """``(num_frames, patch, batch) -> cost of one step`` for the chosen cost model."""
    if kind == "pixels":
        return lambda t, p, b: float(b * t * p * p)
    from mgvsr.flops import train_flops

    return lambda t, p, b: train_flops(cfg.model, t, p, b)


def schedule_report(cfg: Config, world_size: int = 1, cost: str = "flops") -> dict[str, Any]:
    """Everything the table shows, as plain data (the ``--json`` output)."""
    from mgvsr.schedule import large_batch_factor, lr_range, phases

    s = cfg.schedule
    step_cost = cost_function(cfg, cost)
    full = step_cost(s.num_frames, s.patch_size, s.batch_size)
    rows = []
    for ph in phases(cfg, world_size):
        lo, hi = lr_range(cfg, ph, world_size)
        rel = step_cost(ph.num_frames, ph.patch_size, ph.batch_size) / full
        rows.append(
            {
                "phase": ph.index,
                "stage": ph.stage,
                "start": ph.start,
                "end": ph.end,
                "iters": ph.iters,
                "num_frames": ph.num_frames,
                "patch_size": ph.patch_size,
                "batch_size": ph.batch_size,
                "lr_min": cfg.optim.lr * lo,
                "lr_max": cfg.optim.lr * hi,
                "step_cost": rel,
            }
        )
    total = sum(r["iters"] * r["step_cost"] for r in rows)
    for r in rows:
        r["compute_share"] = r["iters"] * r["step_cost"] / total
    return {
        "kind": s.kind,
        "total_iters": s.total_iters,
        "world_size": world_size,
        "global_batch": s.batch_size * world_size * cfg.optim.accum_steps,
        "base_lr": cfg.optim.lr,
        "large_batch_lr_factor": large_batch_factor(cfg, world_size),
        "lr_scaling": cfg.optim.lr_scaling,
        "lr_policy": s.lr_policy,
        "cost_model": cost,
        "full_shape": {"num_frames": s.num_frames, "patch_size": s.patch_size, "batch_size": s.batch_size},
        "full_step_cost": full,
        "phases": rows,
        "cost_vs_fixed": total / s.total_iters,
        "note": _model_note(cfg),
    }


def _model_note(cfg: Config) -> str:
    """What the schedule can vary for this model (empty when it can vary everything)."""
    if not cfg.model.sliding_window:
        return ""
    return (
        f"note: {cfg.model.name} is a sliding-window model: every training clip is one window of "
        f"model.num_frame = {cfg.model.num_frame} frames, fixed by the architecture, so the schedule varies "
        "only the patch size (and the batch with schedule.scale_batch); the loss compares the predicted "
        "centre frame with the HR centre frame"
    )


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table."""
    full = report["full_shape"]
    unit = "FLOPs" if report["cost_model"] == "flops" else "pixels"
    lines = [
        f"schedule: {report['kind']}, {report['total_iters']} iterations, LR policy {report['lr_policy']}, "
        f"world size {report['world_size']}, global batch {report['global_batch']} at the full shape",
        f"full shape: T={full['num_frames']}, patch {full['patch_size']}, batch {full['batch_size']} "
        f"per device = {report['full_step_cost']:.4g} {unit} per step per device",
        f"base LR {report['base_lr']:.3g} x {report['large_batch_lr_factor']:.4g} "
        f"(large-minibatch scaling, optim.lr_scaling={report['lr_scaling']}); "
        f"LR range below includes warmup, policy and batch scaling",
        "",
        f"{'phase':>5} {'stage':>5} {'iterations':>17} {'T':>3} {'patch':>5} {'batch':>5} "
        f"{'LR range':>19} {'cost/step':>9} {'compute':>8}",
    ]
    for r in report["phases"]:
        steps = f"{r['start']}-{r['end'] - 1}"
        lr = f"{r['lr_max']:.2e}" if r["lr_min"] == r["lr_max"] else f"{r['lr_min']:.2e}-{r['lr_max']:.2e}"
        lines.append(
            f"{r['phase']:>5} {r['stage']:>5} {steps:>17} {r['num_frames']:>3} {r['patch_size']:>5} "
            f"{r['batch_size']:>5} {lr:>19} {r['step_cost']:>9.3f} {100 * r['compute_share']:>7.1f}%"
        )
    lines += [
        "",
        f"estimated cost vs fixed baseline (same iterations at the full shape): "
        f"{report['cost_vs_fixed']:.3f} ({1 / report['cost_vs_fixed']:.2f}x fewer {unit})",
    ]
    if report.get("note"):
        lines.append(report["note"])
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.world_size < 1:
        print(f"mgvsr schedule: --world-size must be >= 1, got {args.world_size}", file=sys.stderr)
        return 2
    cfg = load_config(args.config, args.overrides)  # a ConfigError is reported by cli.main
    if args.cost == "flops":
        print(
            f"counting FLOPs of {cfg.model.name} (num_feat {cfg.model.num_feat}, num_block "
            f"{cfg.model.num_block}) at each distinct shape on the meta device ...",
            file=sys.stderr,
            flush=True,
        )
    report = schedule_report(cfg, args.world_size, args.cost)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
