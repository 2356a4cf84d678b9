"""Validation on whole clips during training: PSNR/SSIM, RGB and Y, with ``mgvsr eval``'s generic
protocol (BasicSR conventions, crop border 0, mean over frames per clip, then over clips)."""

from __future__ import annotations

import numpy as np
import torch

from mgvsr.data import iter_clips
from mgvsr.evaluate import PROTOCOLS, Upscaler, evaluate, model_upscaler
from mgvsr.inference import InferenceOptions


def evaluate_clips(upscale: Upscaler, dataset, max_frames: int = 0) -> dict[str, dict]:
    """``{"clips": {name: {psnr, ssim, psnr_y, ssim_y}}, "average": {...}}`` of ``upscale`` on ``dataset``."""
    result = evaluate(upscale, iter_clips(dataset, max_frames=max_frames), PROTOCOLS["generic"])
    rgb, y = result.scores["rgb"], result.scores["y"]
    per_clip = {
        name: {"psnr": c["psnr"], "ssim": c["ssim"], "psnr_y": cy["psnr"], "ssim_y": cy["ssim"]}
        for (name, c), cy in zip(rgb.clip_means().items(), y.clip_means().values())
    }
    avg, avg_y = rgb.average(), y.average()
    average = {"psnr": avg["psnr"], "ssim": avg["ssim"], "psnr_y": avg_y["psnr"], "ssim_y": avg_y["ssim"]}
    return {"clips": per_clip, "average": average}


def super_resolve_clip(model: torch.nn.Module, lr: np.ndarray, amp: str = "none") -> np.ndarray:
    """uint8 (T, h, w, 3) -> uint8 (T, 4h, 4w, 3), the whole clip in one pass on the model's device."""
    return model_upscaler(model, InferenceOptions(amp=amp))(lr)


def validate(model: torch.nn.Module, dataset, max_frames: int = 0, amp: str = "none") -> dict:
    """Scores of ``model`` (on its own device) on every clip of ``dataset``."""
    was_training = model.training
    model.eval()
    try:
        return evaluate_clips(model_upscaler(model, InferenceOptions(amp=amp)), dataset, max_frames)
    finally:
        model.train(was_training)
