"""Data-loading throughput and the share of training-step time spent waiting for data.

    python benchmarks/data_throughput.py [--kind prepared --root demo_data] [--cache DIR | --in-memory]
        [--shapes 5x16x16,10x32x32,15x64x64] [--batch 8] [--workers 1] [--steps 5]

For each ``T x h x w`` (LR clip length and patch) it reports

* data only: median seconds to build one batch in the main process (``make_batch``) and samples/s;
* training: a small BasicVSR (``--num-feat``/``--num-block``) trained for ``--steps`` steps from a
  ``DataLoader`` over :class:`~mgvsr.data.StepBatches` with ``--workers`` worker processes; the
  median time blocked in ``next(loader)`` ("wait"), the median compute time, and
  wait / (wait + compute). Goal: wait < 5 % of the step at every shape.

The crop must fit the data: 64x64 LR patches need HR frames of at least 256x256 (e.g. a set made
with ``mgvsr prepare VIDEO --out DIR --hr-size 640x360``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
from torch.utils.data import DataLoader

from mgvsr.config import DatasetConfig, ModelConfig
from mgvsr.data import AugmentConfig, StepBatches, build_dataset, check_shape, make_batch


class FixedShape:
    """Picklable ``shape_fn``: the same ``(T, lr_patch, batch)`` at every step."""

    def __init__(self, num_frames: int, patch: int, batch: int):
        self.shape = (num_frames, patch, batch)

    def __call__(self, step: int) -> tuple[int, int, int]:
        return self.shape


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for item in text.split(","):
        t, h, w = (int(v) for v in item.lower().split("x"))
        if h != w:
            raise SystemExit(f"--shapes {item}: only square patches are supported (h == w)")
        shapes.append((t, h, w))
    return shapes


def data_only(dataset, shape, batch: int, steps: int) -> float:
    """Median seconds per batch of ``make_batch`` in this process."""
    t, p, _ = shape
    times = []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        make_batch(dataset, seed=0, step=step, num_frames=t, lr_patch=p, batch_size=batch,
                   aug=AugmentConfig(True, True, False))
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def train_steps(dataset, shape, batch: int, steps: int, workers: int, model_cfg: ModelConfig,
                device: torch.device):
    """Median (wait, compute) seconds per training step with a DataLoader feeding the model."""
    from mgvsr.models import build_model

    t, p, _ = shape
    model = build_model(model_cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    ds = StepBatches(dataset, FixedShape(t, p, batch), seed=0, aug=AugmentConfig(True, True, False))
    loader = DataLoader(ds, batch_size=None, sampler=range(steps + 1), num_workers=workers,
                        prefetch_factor=2 if workers else None, pin_memory=device.type == "cuda")
    waits, computes = [], []
    it = iter(loader)
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        lr, hr = next(it)
        lr, hr = lr.to(device, non_blocking=True), hr.to(device, non_blocking=True)
        t1 = time.perf_counter()
        loss = torch.nn.functional.l1_loss(model(lr), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t2 = time.perf_counter()
        waits.append(t1 - t0)
        computes.append(t2 - t1)
    # The first step includes worker start-up: report medians over the rest.
    return statistics.median(waits[1:]), statistics.median(computes[1:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", default="prepared")
    p.add_argument("--root", default="demo_data")
    p.add_argument("--split", default="train")
    p.add_argument("--cache", default=None, help="packed uint8 cache of the dataset (mgvsr prepare --cache)")
    p.add_argument("--in-memory", action="store_true", help="decode the dataset into RAM first")
    p.add_argument("--shapes", default="5x16x16,10x32x32,15x64x64", help="T x h x w LR shapes")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--steps", type=int, default=5, help="measured steps per shape (after one warm-up)")
    p.add_argument("--num-feat", type=int, default=16)
    p.add_argument("--num-block", type=int, default=2)
    p.add_argument("--data-only", action="store_true", help="skip the model (data throughput only)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)

    print("command:", " ".join([os.path.basename(sys.executable)] + sys.argv))
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), python {platform.python_version()}")
    cfg = DatasetConfig(kind=args.kind, root=args.root, split=args.split, cache=args.cache,
                        in_memory=args.in_memory)
    t0 = time.perf_counter()
    dataset = build_dataset(cfg)
    print(f"dataset: {dataset} (built in {time.perf_counter() - t0:.1f} s)")
    model_cfg = ModelConfig(num_feat=args.num_feat, num_block=args.num_block)
    header = f"{'T x h x w':>11} {'batch s':>8} {'samples/s':>10}"
    if not args.data_only:
        header += f" {'wait s':>8} {'compute s':>9} {'wait %':>7}"
    print(f"medians over {args.steps} steps, batch {args.batch}, {args.workers} worker(s), "
          f"model on {args.device}")
    print(header)
    for shape in parse_shapes(args.shapes):
        check_shape(dataset, shape[0], shape[1])
        per_batch = data_only(dataset, shape, args.batch, args.steps)
        line = f"{'x'.join(map(str, shape)):>11} {per_batch:8.4f} {args.batch / per_batch:10.1f}"
        if not args.data_only:
            wait, compute = train_steps(dataset, shape, args.batch, args.steps, args.workers, model_cfg,
                                        torch.device(args.device))
            line += f" {wait:8.4f} {compute:9.3f} {100 * wait / (wait + compute):6.1f}%"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
