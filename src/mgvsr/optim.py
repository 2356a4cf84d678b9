"""Optimiser, per-group learning rates, flow-network freezing and EMA.

BasicVSR recipe (BasicSR ``VideoRecurrentModel``): Adam; parameters whose name contains ``spynet`` learn at
``lr * flow_lr_mult``; for the first ``fix_flow_iters`` steps the flow network (and IconVSR's ``edvr``
feature extractor) is frozen. Freezing is keyed off the global step, so it survives a resume.

Per-step cost (docs/performance.md): Adam is by default (``optim.adam_impl: auto``) the fused
implementation (one kernel over all tensors, on CPU and CUDA), which can also skip a step on the
device (:func:`optimizer_step`, given a ``found_inf`` flag tensor) without the host reading the loss; the EMA updates all tensors with
``torch._foreach_*`` ops and is skipped the same way.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from mgvsr.config import ConfigError, OptimConfig

FLOW_LR_KEYS = ("spynet",)
FROZEN_EARLY_KEYS = ("spynet", "edvr")


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Adam:
    """Adam over two groups (main, flow), implemented as ``cfg.adam_impl`` says: ``auto`` = fused
    where torch has a fused kernel for the parameters' device and dtype (CPU, CUDA, MPS, XPU), else
    foreach; ``fused`` fails where there is no such kernel; ``plain`` = the single-tensor loop."""
    main, flow = [], []
    for name, param in model.named_parameters():
        (flow if any(k in name for k in FLOW_LR_KEYS) else main).append(param)
    groups = [{"params": main, "base_lr": cfg.lr, "name": "main"}]
    if flow:
        groups.append({"params": flow, "base_lr": cfg.lr * cfg.flow_lr_mult, "name": "flow"})
    kwargs = {"lr": cfg.lr, "betas": tuple(cfg.betas), "weight_decay": cfg.weight_decay}
    impl = cfg.adam_impl
    if impl in ("auto", "fused"):
        try:
            return torch.optim.Adam(groups, fused=True, foreach=False, **kwargs)
        except RuntimeError as err:  # no fused kernel for these parameters' device or dtype
            if impl == "fused":
                raise ConfigError(f"optim.adam_impl: fused Adam is not available here ({err}); "
                                 "use auto, foreach or plain") from None
    return torch.optim.Adam(groups, fused=False, foreach=impl != "plain", **kwargs)


def supports_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step()`` honours a ``found_inf`` tensor (the fused implementations do)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and all(
        group.get("fused") for group in optimizer.param_groups)


def optimizer_step(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """``optimizer.step()`` unless ``found_inf`` (a float 0-d tensor, 1.0 = skip) is set.

    A fused optimiser decides on the device (its kernels return early and the step counts stay),
    the way ``torch.amp.GradScaler`` drives it, so the host need not wait for the loss; any other
    optimiser needs the flag on the host first (a device synchronisation).
    """
    if supports_found_inf(optimizer):
        optimizer.found_inf = found_inf  # type: ignore[attr-defined]
        optimizer.grad_scale = None  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf, optimizer.grad_scale  # type: ignore[attr-defined]
    elif not bool(found_inf):
        optimizer.step()


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
    def update(self, model: nn.Module, skip: Optional[torch.Tensor] = None) -> None:
        """``ema = decay * ema + (1 - decay) * value`` for every floating tensor of the state dict
        (parameters and buffers, as BasicSR), other tensors copied.

        ``skip``: a 0-d bool tensor; where it is true the EMA is left exactly as it was, decided on the
        device (no host synchronisation). The arithmetic is the same per element as a per-tensor
        ``mul_(decay).add_(value, alpha=1 - decay)``, so results are bit-identical to that loop.
        """
        ema_state = self.model.state_dict()
        targets, values = [], []
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if value.dtype.is_floating_point:
                targets.append(target)
                values.append(value.detach())
            else:
                target.copy_(value)
        if not targets:
            return
        if skip is None:
            torch._foreach_mul_(targets, self.decay)
            torch._foreach_add_(targets, values, alpha=1 - self.decay)
            return
        updated = torch._foreach_mul(targets, self.decay)
        torch._foreach_add_(updated, values, alpha=1 - self.decay)
        # lerp with weight exactly 1 returns ``updated`` and with weight 0 ``target``, bit for bit.
        keep = torch.logical_not(skip)
        weights = {t.dtype: keep.to(t.dtype) for t in targets}
        torch._foreach_lerp_(targets, updated, [weights[t.dtype] for t in targets])

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
