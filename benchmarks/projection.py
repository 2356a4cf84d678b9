"""Paper-scale projection: whole-run speedup of a multigrid schedule from measured step times.

    python benchmarks/projection.py [--config configs/basicvsr_reds_multigrid.yaml] [--batch 1]
                                    [--repeat 2] [--device cpu|cuda] [--amp none|bf16] [overrides]

For every distinct (T, patch) of the config's schedule it times training steps (forward + backward +
Adam) of the config's real model, then projects the run time as sum(iterations x step time) and
compares it with the fixed baseline (all iterations at the full shape) and with the FLOP estimate.
Times are measured at ``--batch`` (default 1, to keep a CPU run short; step time is close to linear
in the batch at these sizes, and the ratios are what matter). Prints the command, machine and medians.

:func:`project_run` is the projection itself (step time per shape in, whole-run times and ratios out);
``benchmarks/gpu_check.py`` and ``benchmarks/ddp_projection.py`` use it with their own measurements.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import statistics
import sys
import time
from typing import Callable

import torch

from mgvsr.bench import machine_info
from mgvsr.config import Config, load_config
from mgvsr.flops import train_flops
from mgvsr.models import build_model
from mgvsr.runtime import tune_allocator
from mgvsr.schedule import phases


def time_step(model, frames: int, patch: int, batch: int, repeat: int, device, amp: str) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)
    x = torch.rand(batch, frames, 3, patch, patch, device=device)
    y = torch.rand(batch, frames, 3, 4 * patch, 4 * patch, device=device)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()
    times = []
    for _ in range(repeat + 1):  # first run = warm-up
        t = time.perf_counter()
        with ctx:
            out = model(x)
        (out.float() - y).abs().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def project_run(cfg: Config, step_s: Callable[[int, int, int], float], with_flops: bool = True) -> dict:
    """Whole-run time of ``cfg``'s schedule against its fixed-shape baseline, from step times.

    ``step_s(T, patch, batch)`` gives the seconds of one training step at that shape (``batch`` per
    device). The schedule's run takes ``sum over phases of iterations x step_s(phase shape)`` (``run_s``);
    the fixed baseline ``total_iters x step_s(full shape)`` (``fixed_s``). With ``scale_batch`` a phase's
    batch exceeds the full shape's, so at equal iterations it sees more samples; ``run_equal_samples_s``
    scales each phase's iterations by ``batch_size / phase batch`` (the samples of the run without batch
    scaling, as Wu et al. count it; equal to ``run_s`` without batch scaling). ``with_flops`` adds the
    schedule's FLOP ratio at equal iterations (``mgvsr.flops``).
    """
    s = cfg.schedule
    table = phases(cfg)
    times = [step_s(ph.num_frames, ph.patch_size, ph.batch_size) for ph in table]
    run = sum(ph.iters * t for ph, t in zip(table, times))
    run_equal_samples = sum(ph.iters * s.batch_size / ph.batch_size * t for ph, t in zip(table, times))
    fixed = s.total_iters * step_s(s.num_frames, s.patch_size, s.batch_size)
    result = {
        "run_s": run, "fixed_s": fixed, "speedup": fixed / run,
        "run_equal_samples_s": run_equal_samples, "speedup_equal_samples": fixed / run_equal_samples,
    }
    if with_flops:
        run_flops = sum(ph.iters * train_flops(cfg.model, ph.num_frames, ph.patch_size, ph.batch_size) for ph in table)
        fixed_flops = s.total_iters * train_flops(cfg.model, s.num_frames, s.patch_size, s.batch_size)
        result["flop_ratio"] = fixed_flops / run_flops
        result["speedup_over_flop_ratio"] = result["speedup"] / result["flop_ratio"]
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/basicvsr_reds_multigrid.yaml")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", choices=["none", "bf16"])
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("overrides", nargs="*")
    args = p.parse_intermixed_args(argv)
    tune_allocator()
    # Pretrained sub-network paths are irrelevant for timing.
    cfg = load_config(args.config, [*args.overrides, "model.spynet_weights=null", "model.edvr_weights=null"])
    device = torch.device(args.device)
    print(f"command: {shlex.join(['python', 'benchmarks/projection.py', *argv])}")
    print(f"machine: {machine_info()}")
    model = build_model(cfg.model).to(device)
    s = cfg.schedule
    shapes = sorted({(ph.num_frames, ph.patch_size) for ph in phases(cfg)} | {(s.num_frames, s.patch_size)})
    measured = {}
    print(f"{'T':>3} {'patch':>5} {'batch':>5} {'step (s)':>9} {'rel. time':>9} {'rel. FLOPs':>10}")
    full_flops = train_flops(cfg.model, s.num_frames, s.patch_size, args.batch)
    for frames, patch in sorted(shapes, key=lambda fp: fp[0] * fp[1] ** 2):
        measured[(frames, patch)] = time_step(model, frames, patch, args.batch, args.repeat, device, args.amp)
    full_time = measured[(s.num_frames, s.patch_size)]
    for (frames, patch), t in sorted(measured.items(), key=lambda kv: kv[0][0] * kv[0][1] ** 2):
        rel_flops = train_flops(cfg.model, frames, patch, args.batch) / full_flops
        print(f"{frames:>3} {patch:>5} {args.batch:>5} {t:>9.3f} {t / full_time:>9.3f} {rel_flops:>10.3f}", flush=True)
    # Per-device batch of a phase may differ from the full shape's (batch scaling): time scales with it.
    projected = project_run(cfg, lambda frames, patch, batch: measured[(frames, patch)] * batch / s.batch_size)
    result = {
        "config": args.config, "device": str(device), "amp": args.amp, "batch_measured": args.batch,
        "projected_speedup": projected["speedup"], "flop_ratio": projected["flop_ratio"],
        "speedup_over_flop_ratio": projected["speedup_over_flop_ratio"],
        "step_times": {f"T{f}_p{p}": t for (f, p), t in measured.items()},
    }
    print(f"\nprojected whole-run speedup vs fixed baseline (same iterations): {result['projected_speedup']:.2f}x; "
          f"FLOP ratio {result['flop_ratio']:.2f}x; speedup / FLOP ratio {result['speedup_over_flop_ratio']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
