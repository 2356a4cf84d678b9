"""Does the demo's BasicVSR gain from its flow or its skip? Train it with one part swapped out.

    python benchmarks/demo_alignment.py VARIANT [mgvsr train arguments ...]

e.g. ``python benchmarks/demo_alignment.py farneback configs/demo.yaml train.name=demo_farneback``.
Runs ``mgvsr train`` (same config, overrides, logs and report) with BasicVSR / IconVSR changed for
this process only:

* ``zero_flow``: no SPyNet; every flow is zero, so the recurrence propagates unaligned features
  (the "without alignment" ablation) and the step skips SPyNet's forward pass.
* ``farneback``: no SPyNet; the flows are OpenCV's Farneback optical flow between the LR frames
  (grey, per clip, both directions), computed on the CPU for every batch and validation clip. A
  stand-in for a pretrained flow network, which mgvsr cannot bundle or download; needs
  ``pip install opencv-python-headless`` (not an mgvsr dependency).
* ``bicubic_skip``: the x4 head's output is added to a bicubic (torch's, a = -0.75) instead of a
  bilinear upsampling of the LR frame.

The weights written are those of the changed model: ``mgvsr eval`` / ``upscale`` on them compute the
standard BasicVSR, not what was trained. Results: docs/benchmarks.md, section 8 ("Third round").
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F

from mgvsr.models.basicvsr import RecurrentVSRBase

VARIANTS = ("zero_flow", "farneback", "bicubic_skip")


def zero_flows(self: RecurrentVSRBase, x: torch.Tensor):
    b, t, _, h, w = x.shape
    if t == 1:
        return None, None
    zero = x.new_zeros(b, t - 1, 2, h, w)
    return zero, zero


def farneback_flows(self: RecurrentVSRBase, x: torch.Tensor):
    import cv2

    b, t, c, h, w = x.shape
    if t == 1:
        return None, None
    with torch.no_grad():
        rgb = x.detach().float().reshape(-1, c, h, w).clamp(0, 1)
        grey = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]) * 255.0 + 0.5
        grey = grey.to(torch.uint8).cpu().numpy().reshape(b, t, h, w)
    # Fewer pyramid levels for small patches (16x16 LR crops: 2 levels).
    levels = max(1, min(3, int(np.log2(min(h, w) / 8)) + 1))

    def flow(ref: np.ndarray, other: np.ndarray) -> np.ndarray:
        # ref(y, x) ~ other(y + f[..., 1], x + f[..., 0]): the flow that warps ``other`` onto ``ref``,
        # channel 0 = x, as mgvsr's flow_warp expects.
        f = cv2.calcOpticalFlowFarneback(ref, other, None, 0.5, levels, 9, 3, 5, 1.1, 0)
        return f.transpose(2, 0, 1)

    backward = np.zeros((b, t - 1, 2, h, w), np.float32)  # frame i+1 onto frame i
    forward = np.zeros((b, t - 1, 2, h, w), np.float32)  # frame i onto frame i+1
    for n in range(b):
        for i in range(t - 1):
            backward[n, i] = flow(grey[n, i], grey[n, i + 1])
            forward[n, i] = flow(grey[n, i + 1], grey[n, i])
    return torch.from_numpy(forward).to(x.device), torch.from_numpy(backward).to(x.device)


def reconstruct_bicubic(self: RecurrentVSRBase, feat: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    out = F.leaky_relu(F.pixel_shuffle(self.upconv1(feat), 2), 0.1, inplace=True)
    out = F.leaky_relu(F.pixel_shuffle(self.upconv2(out), 2), 0.1, inplace=True)
    out = F.leaky_relu(self.conv_hr(out), 0.1, inplace=True)
    out = self.conv_last(out)
    return out + F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in VARIANTS:
        print(__doc__.strip(), file=sys.stderr)
        print(f"\nVARIANT: one of {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    variant, train_args = argv[0], argv[1:]
    if variant == "zero_flow":
        RecurrentVSRBase.compute_flows = zero_flows
    elif variant == "farneback":
        try:
            import cv2
        except ImportError:
            print("farneback needs OpenCV: pip install opencv-python-headless", file=sys.stderr)
            return 2
        cv2.setNumThreads(1)  # the training's own threads use the cores
        RecurrentVSRBase.compute_flows = farneback_flows
    else:
        RecurrentVSRBase.reconstruct = reconstruct_bicubic
    print(f"demo_alignment: {variant}: mgvsr train {' '.join(train_args)}", flush=True)
    from mgvsr.cli import main as mgvsr_main

    return mgvsr_main(["train", *train_args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
