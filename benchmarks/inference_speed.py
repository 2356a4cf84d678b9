"""Inference speed (frames/s) of BasicVSR at a given LR size, in fp32 and with bf16 autocast.

    python benchmarks/inference_speed.py [--models 64x30,16x2] [--size 180x320] [--frames 2]
        [--repeats 3] [--amp none,bf16] [--device cpu] [--budget 90]

Each model (``FEATxBLOCKS``, random weights: speed does not depend on them) super-resolves a clip of
``--frames`` random LR frames in one forward pass (``mgvsr.evaluation.run_clip``, no chunks/tiles).
One untimed warm-up pass on a small 2-frame 32x32 clip comes first (threads, allocator), then up to
``--repeats`` timed passes; the median time gives frames/s. ``--budget`` seconds bound the whole run:
every (model, amp) pair is timed at least once, further repeats only while the budget lasts, so the
report says how many runs each median is over. The command line and the machine are printed first.
The default run takes about 1.5 minutes on a 2-core CPU (BasicVSR 64/30 needs ~20 s per 180x320 frame).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

from mgvsr.config import ModelConfig
from mgvsr.evaluation import InferenceOptions, run_clip
from mgvsr.runtime import DeviceError, autocast_context, resolve_device
from mgvsr.models import build_model


def parse_pairs(text: str, what: str) -> list[tuple[int, int]]:
    pairs = []
    for item in text.split(","):
        try:
            a, b = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"{what} {item!r}: expected AxB, e.g. 64x30") from None
        pairs.append((a, b))
    return pairs


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def bf16_supported(device: torch.device) -> bool:
    try:
        with autocast_context(device, "bf16"):
            torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
        return True
    except (DeviceError, RuntimeError):
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="64x30,16x2", help="FEATxBLOCKS list (BasicVSR)")
    parser.add_argument("--size", default="180x320", help="LR frame HxW")
    parser.add_argument("--frames", type=int, default=2, help="frames per timed clip")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per setting (at most)")
    parser.add_argument("--amp", default="none,bf16", help="comma list of none|bf16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--budget", type=float, default=90.0, help="seconds for the timed runs (soft)")
    args = parser.parse_args()

    device = resolve_device(args.device)
    (h, w), = parse_pairs(args.size, "--size")
    models = parse_pairs(args.models, "--models")
    amps = [a.strip() for a in args.amp.split(",") if a.strip()]
    print("command:", " ".join([os.path.basename(sys.executable)] + sys.argv))
    print("machine:", machine(), f"device {device}")
    print(f"LR {h}x{w} -> HR {4 * h}x{4 * w}, {args.frames} frames per clip, median over the runs listed")
    print(f"{'model':>10} {'amp':>5} {'runs':>4} {'s/clip':>8} {'frames/s':>9}")

    start = time.perf_counter()
    settings = [(m, a) for m in models for a in amps]
    for k, ((feat, blocks), amp) in enumerate(settings):
        if amp == "bf16" and not bf16_supported(device):
            print(f"{feat}x{blocks:<7} {amp:>5}  bf16 autocast not supported on {device}")
            continue
        model = build_model(ModelConfig(num_feat=feat, num_block=blocks)).to(device).eval()
        opts = InferenceOptions(amp=amp)
        torch.manual_seed(0)
        clip = torch.rand(args.frames, 3, h, w)
        run_clip(model, torch.rand(2, 3, 32, 32), opts)  # warm-up: threads, allocator, kernels
        times = []
        # Share the remaining budget among the remaining settings.
        share = (args.budget - (time.perf_counter() - start)) / (len(settings) - k)
        t_setting = time.perf_counter()
        while len(times) < args.repeats and (not times or time.perf_counter() - t_setting + times[-1] < share):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            run_clip(model, clip, opts)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        median = statistics.median(times)
        print(f"{feat:>5}x{blocks:<4} {amp:>5} {len(times):>4} {median:>8.2f} {args.frames / median:>9.3f}", flush=True)
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
