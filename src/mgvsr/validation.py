"""Validation on whole clips during training (PSNR/SSIM, RGB and Y, BasicSR conventions).

Per-frame metrics are averaged per clip, then over clips (how VSR papers report datasets).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch

from mgvsr.data import iter_clips
from mgvsr.metrics import ClipAverager, frame_metrics, tensor_to_uint8

@torch.no_grad()
def super_resolve_clip(model: torch.nn.Module, lr: np.ndarray, device: torch.device, amp: str = "none") -> np.ndarray:
    """uint8 (T, h, w, 3) -> uint8 (T, 4h, 4w, 3) with one forward pass over the whole clip."""
    x = torch.from_numpy(np.ascontiguousarray(lr)).to(device).permute(0, 3, 1, 2).float().div_(255).unsqueeze(0)
    ctx = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
        if amp != "none"
        else contextlib.nullcontext()
    )
    with ctx:
        out = model(x)[0].float()
    return tensor_to_uint8(out.cpu())


def evaluate_clips(
    upscale: Callable[[np.ndarray], np.ndarray], dataset, max_frames: int = 0
) -> dict[str, dict]:
    """Run ``upscale`` (uint8 LR clip -> uint8 SR clip) over every clip; score RGB and Y (crop border 0)."""
    rgb, y = ClipAverager(), ClipAverager()
    for name, lr, hr in iter_clips(dataset, max_frames=max_frames):
        sr = upscale(lr)
        for t in range(len(hr)):
            rgb.add(name, *frame_metrics(sr[t], hr[t]))
            y.add(name, *frame_metrics(sr[t], hr[t], y_channel=True))
    per_clip = {
        name: {"psnr": c["psnr"], "ssim": c["ssim"], "psnr_y": cy["psnr"], "ssim_y": cy["ssim"]}
        for (name, c), cy in zip(rgb.clip_means().items(), y.clip_means().values())
    }
    avg, avg_y = rgb.average(), y.average()
    average = {"psnr": avg["psnr"], "ssim": avg["ssim"], "psnr_y": avg_y["psnr"], "ssim_y": avg_y["ssim"]}
    return {"clips": per_clip, "average": average}


def validate(model: torch.nn.Module, dataset, device: torch.device, max_frames: int = 0, amp: str = "none") -> dict:
    was_training = model.training
    model.eval()
    try:
        return evaluate_clips(lambda lr: super_resolve_clip(model, lr, device, amp), dataset, max_frames)
    finally:
        model.train(was_training)
