"""Time per 720p frame of the validation metrics: numpy reference vs torch on a device.

    python benchmarks/metrics_speed.py [--size 1280x720] [--repeats 5] [--device auto] [--out metrics_speed.json]

What is timed is what validation computes for one frame under the ``generic`` protocol: PSNR and
SSIM on RGB and on Y (BasicSR conventions, float64).

* ``numpy``: :mod:`mgvsr.metrics` (the reference) on uint8 arrays in host memory.
* ``torch``: :mod:`mgvsr.evaluation.device_metrics` as :func:`mgvsr.evaluation.scoring.score_clip`
  runs it: the SR frame already on the device (where the model left it), the ground-truth frame
  uploaded, the four numbers read back to the host (which synchronises the device).

One untimed warm-up run per method, then ``--repeats`` timed runs; the median is reported. The two
methods' numbers are checked to agree (1e-6 dB, 1e-8 SSIM). Prints the command, the machine and the
medians; writes them as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mgvsr import metrics
from mgvsr.bench import machine_info
from mgvsr.evaluation import device_metrics
from mgvsr.runtime import resolve_device


def test_frames(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random ground-truth frame and a noisy copy (an SR-like error level)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 8 + 2, width // 8 + 2, 3))
    gt = np.kron(coarse, np.ones((8, 8, 1)))[:height, :width] * 255
    pred = np.clip(gt + rng.normal(0, 6, gt.shape), 0, 255)
    return pred.round().astype(np.uint8), gt.round().astype(np.uint8)


def numpy_scores(pred: np.ndarray, gt: np.ndarray) -> list[float]:
    return [v for y in (False, True) for v in metrics.frame_metrics(pred, gt, 0, y)]


def torch_scores(pred: torch.Tensor, gt: np.ndarray) -> list[float]:
    gt_t = torch.from_numpy(gt).to(pred.device)
    both = torch.stack([device_metrics.frame_scores(pred, gt_t, 0, y) for y in (False, True)])
    return both.flatten().cpu().tolist()


def timed(fn, repeats: int) -> tuple[list[float], list[float]]:
    """``(seconds per run, last result)`` over ``repeats`` runs after one warm-up run."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1280x720", help="frame WIDTHxHEIGHT (default 1280x720)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto", help="device of the torch metrics: auto | cpu | cuda | cuda:N")
    p.add_argument("--out", default="metrics_speed.json", help="JSON results")
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    device = resolve_device(args.device)
    command = shlex.join(["python", "benchmarks/metrics_speed.py", *(sys.argv[1:] if argv is None else argv)])
    machine = machine_info()
    print(f"command: {command}")
    print(f"machine: {machine}")
    print(f"frame {width}x{height}, PSNR + SSIM on RGB and Y, median of {args.repeats} runs; torch on {device}")

    pred, gt = test_frames(height, width)
    pred_on_device = torch.from_numpy(pred).to(device)
    np_times, np_values = timed(lambda: numpy_scores(pred, gt), args.repeats)
    t_times, t_values = timed(lambda: torch_scores(pred_on_device, gt), args.repeats)
    diffs = np.abs(np.array(np_values) - np.array(t_values))
    agree = bool(diffs[0::2].max() < 1e-6 and diffs[1::2].max() < 1e-8)

    medians = {"numpy": statistics.median(np_times), "torch": statistics.median(t_times)}
    print(f"numpy (host):      {medians['numpy']:.4f} s/frame")
    print(f"torch ({device}): {medians['torch']:.4f} s/frame  (x{medians['numpy'] / medians['torch']:.1f})")
    print(f"values agree: {agree} (max |diff| PSNR {diffs[0::2].max():.2e} dB, SSIM {diffs[1::2].max():.2e})")
    result = {
        "command": command, "machine": machine, "device": str(device), "frame": [height, width],
        "repeats": args.repeats, "median_s_per_frame": medians, "speedup": medians["numpy"] / medians["torch"],
        "times_s": {"numpy": np_times, "torch": t_times},
        "values": {"numpy": np_values, "torch": t_values}, "agree": agree,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
