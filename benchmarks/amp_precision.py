"""Which parts of a model need float32 under bf16 autocast: error and step time of each fp32 island.

    python benchmarks/amp_precision.py [--model basicvsr --feat 16 --blocks 2 --head 16]
                                       [--frames 10] [--clips 2] [--repeat 3] [--skip-time] [--force-bf16]

A small smoke run: ``--feat 4 --blocks 1 --head 4 --frames 2 --clips 1 --repeat 1`` (add ``--skip-time``
with ``--force-bf16`` on a CPU without native bf16: emulated bf16 took minutes even at that size).

The bf16 rows run only where the device computes bf16 natively (``mgvsr.runtime.bf16_is_native``: CUDA
with bf16, a CPU with AVX512-BF16 / AMX); elsewhere autocast emulates bf16 (measured ~40x slower than
float32 on an AVX2 CPU) and they are skipped with a printed reason unless ``--force-bf16`` is given.

Inputs are real frames: the first ``--frames`` LR frames (80x45, BI degradation) of the first
``--clips`` demo validation clips, read through the data layer (``demo_data``, kind ``prepared``), with
their HR frames as targets. The model has random weights (seed 0; ``--weights`` loads a trained one).
Every variant runs the same model on the same clip and is compared with the float32 run:

* ``bf16``: plain autocast, as before this change: the sampling grid of every flow warp is cast to
  the features' dtype (bfloat16) and grid_sample runs under autocast;
* ``bf16+warp``: the grid built and sampled in float32 (what ``mgvsr.models.blocks.flow_warp`` does);
* ``bf16+warp+spynet``: in addition SPyNet runs entirely in float32.

Reported: PSNR of the output against the float32 output (dB; higher = closer), the mean end-point
error of SPyNet's flows against the float32 flows (pixels), the relative L2 error and cosine of the
gradient of the Charbonnier loss against the float32 gradient, and the median training-step time
(``mgvsr.train.train_step``; one warm-up). A first table gives the position error of a bfloat16 grid
alone (pixels), per image width.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import statistics
import sys
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

import mgvsr.models.basicvsr as basicvsr_mod
import mgvsr.models.spynet as spynet_mod
from mgvsr.bench import machine_info
from mgvsr.config import DatasetConfig, load_config
from mgvsr.data import build_dataset
from mgvsr.data.sampling import iter_clips
from mgvsr.evaluation.runner import frames_to_tensor
from mgvsr.losses import charbonnier
from mgvsr.models import build_model
from mgvsr.runtime import autocast_context, bf16_is_native, tune_allocator
from mgvsr.train import StopRequest, build_learner, train_step

VARIANTS = ("fp32", "bf16", "bf16+warp", "bf16+warp+spynet")


def bf16_grid_flow_warp(x, flow, interp_mode="bilinear", padding_mode="zeros", align_corners=True):
    """flow_warp as it was before the float32 island: the grid in the features' dtype, under autocast."""
    _, _, h, w = x.shape
    dtype = flow.dtype if flow.dtype.is_floating_point else torch.float32
    gy, gx = torch.meshgrid(torch.arange(h, device=x.device, dtype=dtype),
                            torch.arange(w, device=x.device, dtype=dtype), indexing="ij")
    vx = (gx + flow[..., 0]) * (2.0 / max(w - 1, 1)) - 1.0
    vy = (gy + flow[..., 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack((vx, vy), dim=-1).to(x.dtype)
    return F.grid_sample(x, grid, mode=interp_mode, padding_mode=padding_mode, align_corners=align_corners)


@contextlib.contextmanager
def variant(model: torch.nn.Module, name: str) -> Iterator[None]:
    """Patch the flow warp / SPyNet of ``model`` for one variant; restore on exit."""
    saved_warp = (basicvsr_mod.flow_warp, spynet_mod.flow_warp)
    spynet = getattr(model, "spynet", None)
    if name == "bf16":
        basicvsr_mod.flow_warp = spynet_mod.flow_warp = bf16_grid_flow_warp
    if name == "bf16+warp+spynet" and spynet is not None:
        plain = type(spynet).forward

        def fp32_forward(ref, supp):
            with torch.autocast(ref.device.type, enabled=False):
                return plain(spynet, ref.float(), supp.float())

        spynet.forward = fp32_forward
    try:
        yield
    finally:
        basicvsr_mod.flow_warp, spynet_mod.flow_warp = saved_warp
        if spynet is not None and "forward" in vars(spynet):
            del spynet.forward


def amp_of(name: str) -> str:
    return "none" if name == "fp32" else "bf16"


def grid_position_error(widths: list[int]) -> list[tuple[int, float, float]]:
    """(width, max, mean) error in pixels of sampling positions stored as bfloat16 grid coordinates."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for w in widths:
        x = torch.arange(w, dtype=torch.float32) + torch.rand(w, generator=gen) * 4 - 2  # positions + small flow
        grid = x * (2.0 / (w - 1)) - 1.0
        back = (grid.to(torch.bfloat16).float() + 1.0) * ((w - 1) / 2.0)
        err = (back - x).abs()
        rows.append((w, float(err.max()), float(err.mean())))
    return rows


def demo_clips(frames: int, clips: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(LR (B, T, 3, h, w), HR (B, T, 3, 4h, 4w)) float clips from the demo validation split."""
    ds = build_dataset(DatasetConfig(kind="prepared", root="demo_data", split="val"), scale=4)
    lrs, hrs = [], []
    for _, lr, hr in iter_clips(ds, frames, indices=range(clips)):
        lrs.append(frames_to_tensor(lr))
        hrs.append(frames_to_tensor(hr))
    return torch.stack(lrs), torch.stack(hrs)


def errors(model, lr, hr, device, variants: tuple[str, ...] = VARIANTS) -> dict[str, dict]:
    """Output, flow and gradient of every variant (``variants[0]`` is fp32), compared with the float32 run."""
    runs = {}
    for name in variants:
        model.zero_grad(set_to_none=True)
        with variant(model, name), autocast_context(device, amp_of(name)):
            out = model(lr)
            flows = model.compute_flows(lr)[0] if hasattr(model, "compute_flows") else None
        loss = charbonnier(out.float(), hr)
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        runs[name] = (out.detach().float(), None if flows is None else flows.detach().float(), grad)
    ref_out, ref_flow, ref_grad = runs["fp32"]
    table = {}
    for name in variants[1:]:
        out, flow, grad = runs[name]
        mse = float(((out.clamp(0, 1) - ref_out.clamp(0, 1)) ** 2).mean())
        table[name] = {
            "output_psnr_db": 10 * np.log10(1.0 / mse) if mse > 0 else float("inf"),
            "output_max_abs": float((out - ref_out).abs().max()),
            "flow_epe_px": None if flow is None else float((flow - ref_flow).norm(dim=2).mean()),
            "flow_mean_px": None if ref_flow is None else float(ref_flow.norm(dim=2).mean()),
            "grad_rel_l2": float((grad - ref_grad).norm() / ref_grad.norm()),
            "grad_cosine": float(F.cosine_similarity(grad, ref_grad, dim=0)),
        }
    return table


def step_time(args, name: str, device, lr, hr) -> float:
    cfg = load_config(None, [
        f"model.name={args.model}", f"model.num_feat={args.feat}", f"model.num_block={args.blocks}",
        f"model.head_feat={args.head}", f"train.amp={amp_of(name)}", "optim.fix_flow_iters=0",
    ])
    learner = build_learner(cfg, device)
    learner.model.train()
    batches = iter(lambda: (lr, hr), None)
    times = []
    with variant(learner.model, name):
        for _ in range(args.repeat + 1):
            result = train_step(learner.model, learner, batches, cfg, device, StopRequest())
            result.loss.item()
            times.append(result.seconds)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="basicvsr", choices=["basicvsr", "iconvsr"])
    p.add_argument("--feat", type=int, default=16)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--head", type=int, default=16)
    p.add_argument("--weights", help="trained weights to load (default: random, seed 0)")
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--clips", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--skip-time", action="store_true", help="errors only")
    p.add_argument("--device", default="cpu")
    p.add_argument("--force-bf16", action="store_true",
                   help="run the bf16 rows even where bf16 is emulated (slow: ~40x on an AVX2 CPU)")
    args = p.parse_args(argv)
    tune_allocator()
    device = torch.device(args.device)
    print(f"command: {shlex.join(['python', 'benchmarks/amp_precision.py', *(argv if argv is not None else sys.argv[1:])])}")
    print(f"machine: {machine_info()}  threads: {torch.get_num_threads()}")
    print("position error of a bfloat16 grid (pixels):")
    for w, worst, mean in grid_position_error([64, 80, 180, 320, 1280]):
        print(f"  width {w:>5}: max {worst:.3f}, mean {mean:.3f}")

    lr, hr = demo_clips(args.frames, args.clips)
    lr, hr = lr.to(device), hr.to(device)
    print(f"inputs: {args.clips} demo validation clips, LR {tuple(lr.shape)}")
    torch.manual_seed(0)
    cfg = load_config(None, [f"model.name={args.model}", f"model.num_feat={args.feat}",
                             f"model.num_block={args.blocks}", f"model.head_feat={args.head}"])
    model = build_model(cfg.model).to(device).train()
    if args.weights:
        from mgvsr.models import load_weights

        load_weights(model, args.weights)
    variants = VARIANTS
    if not bf16_is_native(device):
        if args.force_bf16:
            print(f"note: bf16 is emulated on {device} (no native bf16); running the bf16 rows anyway (--force-bf16)")
        else:
            print(f"skipping the bf16 rows: bf16 is emulated on {device} (no AVX512-BF16 / AMX on a CPU), measured "
                  "~40x slower than float32 on an AVX2 CPU; give --force-bf16 to run them anyway")
            variants = VARIANTS[:1]
    table = errors(model, lr, hr, device, variants)
    print(f"{'variant':>18} {'out PSNR':>9} {'out max':>8} {'flow EPE':>9} {'grad relL2':>10} {'grad cos':>9} {'step (s)':>9}")
    fp32_time = None if args.skip_time else step_time(args, "fp32", device, lr, hr)
    if fp32_time is not None:
        print(f"{'fp32':>18} {'':>9} {'':>8} {'':>9} {'':>10} {'':>9} {fp32_time:>9.3f}")
    for name, r in table.items():
        t = "" if args.skip_time else f"{step_time(args, name, device, lr, hr):>9.3f}"
        epe = "-" if r["flow_epe_px"] is None else f"{r['flow_epe_px']:.4f}"
        print(f"{name:>18} {r['output_psnr_db']:>9.2f} {r['output_max_abs']:>8.4f} {epe:>9} "
              f"{r['grad_rel_l2']:>10.4f} {r['grad_cosine']:>9.5f} {t}", flush=True)
    if "bf16" in table and table["bf16"]["flow_mean_px"] is not None:
        print(f"(mean flow magnitude of the float32 run: {table['bf16']['flow_mean_px']:.3f} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
