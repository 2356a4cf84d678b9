"""Step time of one training step through the training loop's own code, at several shapes and settings.

    python benchmarks/step_time.py [--model basicvsr] [--feat 16 --blocks 2 --head 16] [--batch 4]
                                   [--frames 5 10] [--patches 16 32 48 64] [--amp none bf16]
                                   [--layout contiguous channels_last] [--compile off on]
                                   [--repeat 3] [--no-tune]

Each step is ``mgvsr.train.train_step`` on a learner built by ``mgvsr.train.build_learner`` from a
config with ``train.amp`` / ``train.channels_last`` set: forward under autocast, the training loss,
backward, gradient norm, the device-side non-finite check, fused Adam (and the EMA with
``--ema``), on random clips. The flow network is trainable (as after ``optim.fix_flow_iters``).
Every (amp, layout, compile) setting gets a fresh model with the same seed. One warm-up step, then ``--repeat``
timed steps; prints the command, the machine, the first step's time (with ``--compile on`` it
includes torch.compile's compilation for that shape) and the best and median time per shape.
Used for docs/performance.md and the paper-scale projection in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import statistics
import sys

import torch

from mgvsr.bench import machine_info
from mgvsr.config import load_config
from mgvsr.distributed import DistInfo
from mgvsr.runtime import configure_backends, tune_allocator, warn_if_bf16_emulated
from mgvsr.train import StopRequest, build_learner, train_step, wrap_model


def random_batches(batch: int, frames: int, patch: int, scale: int = 4):
    """Endless (LR, HR) pairs of random clips, as the loader yields them (float32, contiguous)."""
    gen = torch.Generator().manual_seed(0)
    while True:
        yield (torch.rand(batch, frames, 3, patch, patch, generator=gen),
               torch.rand(batch, frames, 3, scale * patch, scale * patch, generator=gen))


def step_times(cfg, device: torch.device, batch: int, frames: int, patch: int, repeat: int,
               compile: bool = False) -> list[float]:
    """Seconds of one warm-up step, then of ``repeat`` timed steps (device work included). With
    ``compile`` the steps run through the module ``train.compile`` builds (``wrap_model``)."""
    learner = build_learner(cfg, device)
    learner.model.train()
    net = wrap_model(learner.model, frozen=False, dist=DistInfo(), device=device, compile=compile)
    batches = random_batches(batch, frames, patch)
    stop = StopRequest()  # never entered: no signal handlers, never asks to stop
    times = []
    for _ in range(repeat + 1):
        result = train_step(net, learner, batches, cfg, device, stop)
        result.loss.item()  # wait for the device, as a logging step does
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(result.seconds)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="basicvsr", choices=["basicvsr", "iconvsr", "edvr", "basicvsrpp"])
    p.add_argument("--feat", type=int, default=16)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--head", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, nargs="+", default=[5, 10])
    p.add_argument("--patches", type=int, nargs="+", default=[16, 32, 48, 64])
    p.add_argument("--amp", nargs="+", default=["none"], choices=["none", "bf16", "fp16"])
    p.add_argument("--layout", nargs="+", default=["contiguous"], choices=["contiguous", "channels_last"])
    p.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"],
                   help="step through torch.compile(model) (train.compile); the first step then compiles")
    p.add_argument("--ema", action="store_true", help="with an EMA of the weights (optim.ema_decay=0.999)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-tune", action="store_true", help="leave glibc's allocator settings alone")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if not args.no_tune:
        tune_allocator()
    device = torch.device(args.device)
    configure_backends(device)
    if "bf16" in args.amp:
        warn_if_bf16_emulated("bf16", device, "--amp")
    print(f"command: {shlex.join(['python', 'benchmarks/step_time.py', *(argv if argv is not None else sys.argv[1:])])}")
    print(f"machine: {machine_info()}  allocator tuned: {not args.no_tune}  threads: {torch.get_num_threads()}")
    print(f"{'amp':>5} {'layout':>14} {'compile':>7} {'T':>3} {'patch':>5} {'batch':>5} {'first (s)':>9} "
          f"{'best (s)':>9} {'median (s)':>10}")
    for amp, layout, compiled in itertools.product(args.amp, args.layout, args.compile):
        for frames in args.frames:
            for patch in args.patches:
                cfg = load_config(None, [
                    f"model.name={args.model}", f"model.num_feat={args.feat}", f"model.num_block={args.blocks}",
                    f"model.head_feat={args.head}", f"train.amp={amp}",
                    f"train.channels_last={str(layout == 'channels_last').lower()}", "optim.fix_flow_iters=0",
                    f"optim.ema_decay={0.999 if args.ema else 0}", f"schedule.num_frames={frames}",
                ])
                first, *times = step_times(cfg, device, args.batch, frames, patch, args.repeat, compiled == "on")
                print(f"{amp:>5} {layout:>14} {compiled:>7} {frames:>3} {patch:>5} {args.batch:>5} {first:>9.3f} "
                      f"{min(times):>9.3f} {statistics.median(times):>10.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
