"""Is bf16 a speed-up on this machine? Forward + backward of the two ops that dominate a BasicVSR step.

    python benchmarks/bf16_ops.py [--device cpu] [--repeat 3]

Times a 3x3 convolution 64 -> 64 channels on 15 x 64 x 64 x 64 (one branch of a BasicVSR-64 step) in
fp32 and under bf16 autocast, each in the contiguous and the channels_last layout, and ``grid_sample``
(the flow warp) on 20 x 16 x 64 x 64 in fp32 and bf16. Prints the machine (with ``cpu_isa`` and
``cpu_bf16_native``), the median of ``--repeat`` runs after one warm-up, and each time's ratio to fp32
contiguous. On a CPU without AVX512-BF16 / AMX, bf16 convolutions are emulated and tens of times
slower (docs/performance.md).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from mgvsr.bench import machine_info
from mgvsr.runtime import resolve_device


def median_seconds(fn, repeat: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def conv_case(device: torch.device, bf16: bool, channels_last: bool):
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(device)
    x = torch.rand(15, 64, 64, 64, device=device)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = conv(x)
        out.float().sum().backward()
    return step


def grid_sample_case(device: torch.device, bf16: bool):
    dtype = torch.bfloat16 if bf16 else torch.float32
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(20, 16, 64, 64, generator=gen).to(device, dtype).requires_grad_(True)
    grid = (torch.rand(20, 64, 64, 2, generator=gen) * 2 - 1).to(device, dtype).requires_grad_(True)

    def step():
        F.grid_sample(x, grid, align_corners=True).float().sum().backward()
    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print("machine:", machine_info())
    rows = []
    for layout in ("contiguous", "channels_last"):
        for bf16 in (False, True):
            seconds = median_seconds(conv_case(device, bf16, layout == "channels_last"), args.repeat, device)
            rows.append((f"conv3x3 64->64, {layout}", "bf16" if bf16 else "fp32", seconds))
    for bf16 in (False, True):
        rows.append(("grid_sample", "bf16" if bf16 else "fp32", median_seconds(grid_sample_case(device, bf16), args.repeat, device)))
    reference = {op.split(",")[0]: s for op, dtype, s in rows if dtype == "fp32" and "channels_last" not in op}
    print(f"{'op':<32}{'dtype':>6}{'median s':>10}{'vs fp32 contiguous':>20}")
    for op, dtype, seconds in rows:
        print(f"{op:<32}{dtype:>6}{seconds:>10.3f}{seconds / reference[op.split(',')[0]]:>19.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
