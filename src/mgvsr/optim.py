"""Optimiser, per-group learning rates, flow-network freezing and EMA.

BasicVSR recipe (BasicSR ``VideoRecurrentModel``): Adam; parameters whose name contains ``spynet`` learn at
``lr * flow_lr_mult``; for the first ``fix_flow_iters`` steps the flow network (and IconVSR's ``edvr``
feature extractor) is frozen. Freezing is keyed off the global step, so it survives a resume.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mgvsr.config import OptimConfig

FLOW_LR_KEYS = ("spynet",)
FROZEN_EARLY_KEYS = ("spynet", "edvr")


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Adam:
    main, flow = [], []
    for name, param in model.named_parameters():
        (flow if any(k in name for k in FLOW_LR_KEYS) else main).append(param)
    groups = [{"params": main, "base_lr": cfg.lr, "name": "main"}]
    if flow:
        groups.append({"params": flow, "base_lr": cfg.lr * cfg.flow_lr_mult, "name": "flow"})
    return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr_mult: float) -> float:
    """Set every group's lr to base_lr * lr_mult; return the main group's lr."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * lr_mult
    return optimizer.param_groups[0]["lr"]


def flow_frozen(step: int, cfg: OptimConfig) -> bool:
    return step < cfg.fix_flow_iters


def set_flow_trainable(model: nn.Module, trainable: bool) -> int:
    """(Un)freeze the flow network / keyframe extractor; returns how many tensors were touched."""
    n = 0
    for name, param in model.named_parameters():
        if any(k in name for k in FROZEN_EARLY_KEYS):
            param.requires_grad_(trainable)
            n += 1
    return n


class EMA:
    """Exponential moving average of the model's parameters and buffers (``params_ema`` in BasicSR)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_state = self.model.state_dict()
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if value.dtype.is_floating_point:
                target.mul_(self.decay).add_(value.detach(), alpha=1 - self.decay)
            else:
                target.copy_(value)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
