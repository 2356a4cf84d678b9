"""Step time (forward + backward + Adam) of a model at several training shapes.

    python benchmarks/step_time.py [--feat 16 --blocks 2 --head 16] [--batch 4] [--frames 5 10]
                                   [--patches 16 32 48 64] [--no-tune] [--repeat 3]

Prints the command, the machine and the best-of-N (and median) time per shape. Used for
docs/performance.md and the paper-scale projection in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import torch

from mgvsr.bench import machine_info
from mgvsr.config import ModelConfig
from mgvsr.models import build_model
from mgvsr.runtime import tune_allocator


def step_times(model, batch: int, frames: int, patch: int, repeat: int, device: torch.device) -> list[float]:
    opt = torch.optim.Adam(model.parameters())
    x = torch.rand(batch, frames, 3, patch, patch, device=device)
    y = torch.rand(batch, frames, 3, 4 * patch, 4 * patch, device=device)
    times = []
    for _ in range(repeat + 1):  # the first run warms up
        t = time.perf_counter()
        loss = (model(x) - y).abs().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return times[1:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="basicvsr", choices=["basicvsr", "iconvsr"])
    p.add_argument("--feat", type=int, default=16)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--head", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, nargs="+", default=[5, 10])
    p.add_argument("--patches", type=int, nargs="+", default=[16, 32, 48, 64])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-tune", action="store_true", help="leave glibc's allocator settings alone")
    args = p.parse_args(argv)
    if not args.no_tune:
        tune_allocator()
    device = torch.device(args.device)
    print(f"command: {shlex.join(['python', 'benchmarks/step_time.py', *(argv or sys.argv[1:])])}")
    print(f"machine: {machine_info()}  allocator tuned: {not args.no_tune}")
    model = build_model(ModelConfig(name=args.model, num_feat=args.feat, num_block=args.blocks,
                                    head_feat=args.head)).to(device)
    print(f"{'T':>3} {'patch':>5} {'batch':>5} {'best (s)':>9} {'median (s)':>10}")
    for frames in args.frames:
        for patch in args.patches:
            times = step_times(model, args.batch, frames, patch, args.repeat, device)
            print(f"{frames:>3} {patch:>5} {args.batch:>5} {min(times):>9.3f} {statistics.median(times):>10.3f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
