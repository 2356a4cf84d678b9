"""Per-step training time of a config's model at every shape of its schedule, fp32 and bf16 autocast.

    python benchmarks/model_step_time.py CONFIG [key=value ...] [--amp none bf16] [--channels-last]
                                         [--repeat 5] [--device cpu] [--no-flops] [--json OUT.json]

For each distinct (T, patch, batch) of the config's schedule (``mgvsr.schedule.phases``) plus the full
shape, one training step (forward, the training loss ``mgvsr.losses.sr_loss`` against a random HR clip,
backward, Adam step) is timed ``--repeat`` times after one warm-up step; the median is reported. Works for
every model (EDVR's windows and centre-frame loss included). From the medians it projects the whole
run's time, ``sum(iterations of phase x median step time of its shape)``, against the fixed baseline,
``total_iters x median at the full shape`` (``benchmarks/projection.py``'s :func:`project_run`, shared with
``gpu_check.py`` and ``ddp_projection.py``), and prints that projected speedup next to the FLOP ratio of
the schedule (``mgvsr.flops``; skip with ``--no-flops``).

Pretrained-weight paths in the config are ignored (random weights time the same). Prints the command,
the machine (``mgvsr.bench.machine_info``) and a table; ``--json`` writes everything to a file.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from projection import project_run  # noqa: E402  (benchmarks/ is not a package)

from mgvsr.bench import machine_info  # noqa: E402
from mgvsr.config import Config, load_config  # noqa: E402
from mgvsr.losses import sr_loss  # noqa: E402
from mgvsr.models import build_model  # noqa: E402
from mgvsr.runtime import autocast_context, channels_last_model, to_channels_last_clip, tune_allocator  # noqa: E402
from mgvsr.schedule import phases  # noqa: E402


def _model_without_weights(cfg: Config):
    return dataclasses.replace(cfg.model, init_weights=None, spynet_weights=None, edvr_weights=None)


def step_times(
    model: torch.nn.Module,
    cfg: Config,
    shape: tuple[int, int, int],
    repeat: int,
    device: torch.device,
    amp: str,
    channels_last: bool,
) -> list[float]:
    """Seconds per training step at (T, patch, batch): ``repeat`` timed steps after one warm-up."""
    frames, patch, batch = shape
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)
    x = torch.rand(batch, frames, 3, patch, patch, device=device)
    hr = torch.rand(batch, frames, 3, 4 * patch, 4 * patch, device=device)
    if channels_last:  # the layout train.channels_last gives the batches
        x, hr = to_channels_last_clip(x), to_channels_last_clip(hr)
    centre = getattr(model, "center_frame_idx", None)
    times = []
    for _ in range(repeat + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with autocast_context(device, amp):
            out = model(x)
        loss = sr_loss(cfg.optim.loss, out.float(), hr, cfg.optim.charbonnier_eps, centre)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times[1:]


def measure(cfg: Config, amps: list[str], repeat: int, device: torch.device, channels_last: bool,
            with_flops: bool) -> dict:
    """Medians per (amp, shape), the projected run time vs the fixed baseline, and the FLOP ratio."""
    s = cfg.schedule
    table = phases(cfg)
    full = (s.num_frames, s.patch_size, s.batch_size)
    shapes = sorted({(p.num_frames, p.patch_size, p.batch_size) for p in table} | {full})
    weightless = dataclasses.replace(cfg, model=_model_without_weights(cfg))
    torch.manual_seed(0)
    model = build_model(weightless.model).to(device).train()
    if channels_last:
        channels_last_model(model)
    result: dict = {"shapes": [list(x) for x in shapes], "amp": {}}
    for amp in amps:
        medians = {}
        for shape in shapes:
            times = step_times(model, cfg, shape, repeat, device, amp, channels_last)
            medians[shape] = statistics.median(times)
            print(f"{amp:>5} T={shape[0]:>3} patch={shape[1]:>4} batch={shape[2]:>3}  median {medians[shape]:8.3f} s"
                  f"  (min {min(times):.3f}, max {max(times):.3f}, {len(times)} steps)", flush=True)
        projected = project_run(weightless, lambda t, p, b: medians[(t, p, b)], with_flops=with_flops)
        result["amp"][amp] = {
            "median_step_s": {f"T{t}_p{p}_b{b}": v for (t, p, b), v in medians.items()},
            "projected_run_s": projected["run_s"],
            "projected_fixed_s": projected["fixed_s"],
            "projected_speedup": projected["speedup"],
        }
        if "flop_ratio" in projected:  # the same for every amp (FLOPs do not depend on the precision)
            result["flop_ratio"] = projected["flop_ratio"]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted overrides such as model.num_feat=16")
    p.add_argument("--amp", nargs="+", default=["none", "bf16"], choices=["none", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true", help="model and activations in channels_last")
    p.add_argument("--repeat", type=int, default=5, help="timed steps per shape (after one warm-up)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP ratio")
    p.add_argument("--no-tune", action="store_true", help="leave glibc's allocator settings alone")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if not args.no_tune:
        tune_allocator()
    cfg = load_config(args.config, args.overrides)
    device = torch.device(args.device)
    command = shlex.join(["python", "benchmarks/model_step_time.py", *(argv if argv is not None else sys.argv[1:])])
    machine = machine_info()
    print(f"command: {command}")
    print(f"machine: {machine}")
    m = cfg.model
    print(f"model: {m.name} num_feat {m.num_feat} num_block {m.num_block}; schedule {cfg.schedule.kind}, "
          f"{cfg.schedule.total_iters} iterations, {len(phases(cfg))} phases", flush=True)
    result = measure(cfg, args.amp, args.repeat, device, args.channels_last, not args.no_flops)
    for amp, r in result["amp"].items():
        print(f"{amp:>5}: projected run {r['projected_run_s']:.4g} s vs fixed {r['projected_fixed_s']:.4g} s "
              f"-> {r['projected_speedup']:.2f}x")
    if "flop_ratio" in result:
        print(f"FLOP ratio (fixed / schedule): {result['flop_ratio']:.2f}x")
    if args.json:
        out = {"command": command, "machine": machine, "date": dt.datetime.now(dt.timezone.utc).isoformat(),
               "config": args.config, "overrides": args.overrides, "repeat": args.repeat,
               "channels_last": args.channels_last, "device": str(device), **result}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
