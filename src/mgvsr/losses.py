"""Pixel losses (mean over all elements, as BasicSR's ``CharbonnierLoss`` / ``L1Loss`` / ``MSELoss``)."""

from __future__ import annotations

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
