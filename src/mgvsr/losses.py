"""Pixel losses (mean over all elements, as BasicSR's ``CharbonnierLoss`` / ``L1Loss`` / ``MSELoss``) and
the training loss of a model's output against an HR clip (:func:`sr_loss`)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """mean(sqrt((pred - target)^2 + eps)); BasicVSR trains with eps = 1e-12."""
    return torch.sqrt((pred - target) ** 2 + eps).mean()


def pixel_loss(name: str, pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    if name == "charbonnier":
        return charbonnier(pred, target, eps)
    if name == "l1":
        return F.l1_loss(pred, target)
    if name == "mse":
        return F.mse_loss(pred, target)
    raise ValueError(f"optim.loss: unknown loss {name!r} (choose charbonnier, l1, mse)")


def sr_loss(
    name: str,
    pred: torch.Tensor,
    hr_clip: torch.Tensor,
    eps: float = 1e-12,
    center_frame_idx: Optional[int] = None,
) -> torch.Tensor:
    """Training loss of a model's output against the HR clip (B, T, 3, H, W).

    A clip model's output (B, T, 3, H, W) is compared with the whole clip. A sliding-window model
    (EDVR) returns only the centre frame (B, 3, H, W) of its window: it is compared with frame
    ``center_frame_idx`` of the HR clip (the model's ``center_frame_idx`` attribute).
    """
    if pred.dim() == hr_clip.dim():
        return pixel_loss(name, pred, hr_clip, eps)
    if pred.dim() != 4 or hr_clip.dim() != 5:
        raise ValueError(f"loss: model output {tuple(pred.shape)} does not fit the HR clip {tuple(hr_clip.shape)}")
    if center_frame_idx is None:
        raise ValueError(
            f"loss: the model returned one frame {tuple(pred.shape)} for a clip {tuple(hr_clip.shape)} "
            "but has no center_frame_idx to pick the HR frame it predicts"
        )
    return pixel_loss(name, pred, hr_clip[:, center_frame_idx], eps)
