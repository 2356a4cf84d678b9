"""Process- and device-level settings that are not model code: the one leaf module for them.

* :func:`resolve_device` turns a device name (``auto``, ``cpu``, ``cuda:1``, ...) into a checked
  ``torch.device``; :func:`model_device` tells where a model lives.
* :func:`autocast_context` is bf16 / fp16 autocast where the device supports it (``none`` = no-op);
  :func:`fp32_region` turns it off again for the few parts that need float32 (see docs/performance.md).
* :func:`bf16_is_native` tells whether the device computes bf16 in hardware. A CPU without AVX512-BF16
  or AMX still *accepts* bf16 autocast but emulates it: measured on an AVX2-only 2-core EPYC, a
  64-channel 3x3 convolution's forward + backward took 5.2 s in bf16 against 0.13 s in fp32
  (docs/performance.md), so bf16 there is a 40x slowdown, not a speed-up. :func:`resolve_amp` turns
  ``amp: auto`` into bf16 only where it is native; :func:`warn_if_bf16_emulated` warns when bf16 was
  asked for explicitly where it is not.
* :func:`to_channels_last_clip` / :func:`channels_last_model`: the channels_last memory layout
  (``train.channels_last``, ``--channels-last``) for clips ``(B, T, C, H, W)`` and for a model.
* :func:`configure_backends`: per-device library switches (cuDNN autotuning on CUDA).
* :func:`tune_allocator`: glibc returns freed blocks above ~32 MB to the OS at once and maps them
  again on the next step; the activations of a VSR training step are exactly such blocks. Measured
  on a 2-core CPU (see docs/performance.md) keeping them in the heap made training steps markedly
  faster. It does this with ``mallopt`` at run time; a no-op off glibc or on failure.

This module imports nothing from mgvsr, so every other module (training, evaluation, distributed
set-up, the models' loader) may import it without creating an import cycle.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
import warnings

import torch
from torch import nn

from mgvsr.errors import MgvsrError

AMP_CHOICES = ("auto", "none", "bf16", "fp16")
# Measured on this project's AVX2-only CPU (docs/performance.md); quoted in the emulation warning.
EMULATED_BF16_SLOWDOWN = "about 40x slower than float32"


class DeviceError(MgvsrError, ValueError):
    """A device or autocast setting this machine cannot honour; the message names the setting."""


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> this process's CUDA device if available, else MPS, else CPU; other names are checked.

    ``local_rank`` picks the GPU of a torchrun process for ``auto`` and for a bare ``cuda``.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise DeviceError(f"device: {name!r} is not a device name ({err})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device: {name!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Autocast to bf16 / fp16 (``amp``) where the device type supports it; ``none`` = a no-op;
    ``auto`` as :func:`resolve_amp` decides."""
    amp = resolve_amp(amp, device)
    if amp == "none":
        return contextlib.nullcontext()
    if amp not in AMP_CHOICES:
        raise DeviceError(f"amp: {amp!r} is not supported; choose one of {list(AMP_CHOICES)}")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"amp: bf16 is not supported on {device}")
    if device.type not in ("cuda", "cpu", "mps", "xpu"):
        raise DeviceError(f"amp: autocast is not available for device type {device.type!r}")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def bf16_is_native(device: torch.device) -> bool:
    """True where bf16 matmuls/convolutions run in hardware: CUDA with bf16 support, or a CPU whose
    oneDNN build reports bf16 instructions (AVX512-BF16 / AMX). False elsewhere (MPS, AVX2-only CPUs)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probe = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
        try:
            return bool(probe()) if probe is not None else False
        except RuntimeError:
            return False
    return False


def resolve_amp(amp: str, device: torch.device) -> str:
    """The autocast mode to use for ``amp`` on ``device``: ``auto`` becomes ``bf16`` where
    :func:`bf16_is_native`, else ``none`` (float32). fp16 is never chosen automatically: it needs a
    loss scaler in training and can overflow; ask for it explicitly. Other values are returned as given."""
    if amp == "auto":
        return "bf16" if bf16_is_native(device) else "none"
    return amp


def warn_if_bf16_emulated(amp: str, device: torch.device, where: str = "amp") -> bool:
    """Warn (once per call: call it once at start) when bf16 autocast was asked for on a device that
    only emulates bf16; returns whether it warned. The run goes on: it is slow, not wrong."""
    if amp != "bf16" or bf16_is_native(device):
        return False
    warnings.warn(
        f"{where}: bf16 autocast on {device}, which has no native bf16 (on a CPU: no AVX512-BF16 / AMX), "
        f"is emulated: measured {EMULATED_BF16_SLOWDOWN} on an AVX2 CPU (docs/performance.md). "
        "Use amp=none (or auto) there unless you want bf16 numerics.",
        RuntimeWarning, stacklevel=2,
    )
    return True


def fp32_region(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``tensor``'s device type: code inside runs in the dtype of its inputs
    (callers pass float32). A no-op context where autocast does not apply."""
    if tensor.device.type not in ("cuda", "cpu", "mps", "xpu"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameter-free module)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------------
# Memory layout and backend switches
# --------------------------------------------------------------------------------------------------


def to_channels_last_clip(x: torch.Tensor) -> torch.Tensor:
    """The same values in channels_last memory order.

    A clip ``(B, T, C, H, W)`` is stored in the order ``(B, T, H, W, C)``, so that every frame slice
    ``x[:, t]`` (what the models convolve) is a channels_last 4-D tensor and ``x.flatten(0, 1)`` is
    one too; the shape is unchanged. A 4-D tensor gets ``torch.channels_last``. No copy when ``x``
    already has that layout.
    """
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if x.dim() != 5:
        raise ValueError(f"to_channels_last_clip: expected (B, T, C, H, W) or (N, C, H, W), got {tuple(x.shape)}")
    return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether a 4-D tensor ``(N, C, H, W)`` with C > 1 stores channels innermost: a channels_last
    tensor, or a frame slice ``clip[:, t]`` of a channels_last clip (which convolutions also treat
    as channels_last although its batch stride is T times larger)."""
    return x.dim() == 4 and x.shape[1] > 1 and x.stride(1) == 1 and x.stride(3) == x.shape[1]


def resolve_channels_last(value, device: torch.device) -> bool:
    """``train.channels_last``: ``auto`` = on for CUDA (where cuDNN's channels_last kernels are the
    fast path), off elsewhere; a bool is returned as given."""
    if value == "auto":
        return device.type == "cuda"
    return bool(value)


def channels_last_model(model: nn.Module) -> nn.Module:
    """Put the model's 4-D parameters and buffers (convolution weights) in channels_last, in place;
    returns the model. Convolutions then run channels_last whatever the layout of their input."""
    return model.to(memory_format=torch.channels_last)


def configure_backends(device: torch.device) -> None:
    """Library switches for fast training on ``device``: cuDNN autotuning on CUDA (the best
    convolution algorithm per input shape is searched once per shape; multigrid has a handful)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


# --------------------------------------------------------------------------------------------------
# Allocator
# --------------------------------------------------------------------------------------------------

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_done = False


def tune_allocator() -> bool:
    """Disable mmap for large blocks and raise the trim threshold (glibc only). Returns success."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1 and ok
    except (OSError, AttributeError):
        return False
    _done = ok
    return ok
