"""The runner: a video super-resolution model over clips of any length and frame size.

Conventions
-----------
* A clip is a float tensor ``(T, 3, h, w)`` with values in ``[0, 1]`` (RGB); the model maps
  ``(B, T, 3, h, w) -> (B, T, 3, s*h, s*w)``. The scale ``s`` is read from the model's output.
* The one point where a model is called is :func:`mgvsr.models.forward_clip`. A *sliding-window* model (EDVR),
  whose plain ``forward`` returns only the centre frame of its window, provides a method
  ``forward_clip(x)`` mapping ``(B, T, 3, h, w) -> (B, T, 3, s*h, s*w)`` (one output per input
  frame); the runner calls ``model.forward_clip(x)`` when the model has that attribute, else
  ``model(x)``. Everything below (chunks, tiles, streams) then works for both kinds.
* ``chunk=0, tile=0`` (the default) runs the whole clip in one forward pass: exact, and what the
  papers' evaluation does. It needs memory for the whole clip.
* ``chunk=N`` runs the clip in temporal chunks that each *keep* the outputs of ``N`` frames; every
  chunk also reads ``chunk_overlap`` extra frames on each side (when they exist) whose outputs are
  discarded, so recurrent propagation sees some context across chunk borders. A per-frame model
  gives exactly the whole-clip output; a recurrent one (BasicVSR) gives a close approximation.
* ``tile=N`` splits each chunk spatially into ``N x N`` LR tiles, each read with ``tile_overlap``
  extra LR pixels on every side; only the tile's own (non-overlap) region of the output is kept
  (crop, no blending). This is exact for a model whose receptive field fits into the overlap and
  approximate otherwise (optical flow and propagation see less of the frame).
* Chunks run on the model's device; their outputs are moved to ``out_device`` (CPU by default) so
  only one chunk at a time occupies accelerator memory (only one tile when tiling: tiles are
  assembled on the CPU). Tiles at the right / bottom edges are widened inwards to a full tile.

:func:`stream_frames` does the same as :func:`run_clip` over an *iterator* of frames, holding only
``chunk + 2 * chunk_overlap`` input frames at a time, for videos that do not fit in memory.
:func:`quantize` turns outputs into 8-bit frames on their own device, rounding as BasicSR does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import numpy as np
import torch
from torch import nn

from mgvsr.errors import MgvsrError
from mgvsr.metrics import tensor_to_uint8
from mgvsr.models import forward_clip
from mgvsr.runtime import (AMP_CHOICES, autocast_context, model_device, resolve_amp, to_channels_last_clip,
                           warn_if_bf16_emulated)


class InferenceError(MgvsrError, ValueError):
    """Bad runner settings or a model output of the wrong shape; the message names the setting."""


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


@dataclass
class InferenceOptions:
    """How to split a clip. ``0`` disables chunking / tiling (exact whole-clip processing)."""

    chunk: int = 0  # output frames kept per temporal chunk
    chunk_overlap: int = 2  # context frames read (and discarded) on each side of a chunk
    tile: int = 0  # LR tile size in pixels
    tile_overlap: int = 16  # LR context pixels read (and cropped away) on each side of a tile
    amp: str = "none"  # "bf16" / "fp16": autocast on devices that support it; "auto": see runtime.resolve_amp
    channels_last: bool = False  # clips in channels_last memory order (give the model the same layout)

    def check(self) -> None:
        for name in ("chunk", "chunk_overlap", "tile", "tile_overlap"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise InferenceError(f"{name}: must be an integer >= 0, got {value!r}")
        if not isinstance(self.channels_last, bool):
            raise InferenceError(f"channels_last: must be true or false, got {self.channels_last!r}")
        if self.amp not in AMP_CHOICES:
            raise InferenceError(f"amp: {self.amp!r} is not supported; choose one of {list(AMP_CHOICES)}")

    def on_device(self, device: torch.device, where: str = "--amp") -> "InferenceOptions":
        """These options with ``amp`` resolved for ``device`` (``auto`` -> bf16 or none); warns once
        when bf16 was asked for on a device that only emulates it (the CLIs call this at start)."""
        amp = resolve_amp(self.amp, device)
        warn_if_bf16_emulated(amp, device, where)
        return dataclasses.replace(self, amp=amp)


def add_model_arguments(parser) -> None:
    """CLI flags shared by ``mgvsr eval`` and ``mgvsr upscale``: device, autocast, model overrides."""
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--amp", choices=["none", "bf16", "auto"], default="none",
                        help="bf16 autocast; auto = bf16 only where the device computes bf16 natively "
                             "(bf16 on an AVX2-only CPU is emulated and much slower, see docs/performance.md)")
    parser.add_argument("--channels-last", action="store_true",
                        help="model and frames in the channels_last memory layout (the fast path on CUDA; "
                             "slower on an AVX2 CPU, see docs/performance.md)")
    parser.add_argument("--model", choices=["basicvsr", "iconvsr", "edvr", "basicvsrpp"],
                        help="override the model kind from the weights")
    parser.add_argument("--num-feat", type=int, help="override the width from the weights")
    parser.add_argument("--num-block", type=int, help="override the depth from the weights")


# --------------------------------------------------------------------------------------------------
# Splitting plans
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """Read input ``[read_start, read_end)`` and keep the outputs of ``[keep_start, keep_end)``."""

    read_start: int
    read_end: int
    keep_start: int
    keep_end: int


def plan_spans(length: int, size: int, overlap: int, min_read: int = 1) -> list[Span]:
    """Cover ``range(length)`` with kept pieces of ``size`` (0 = one piece), each read with context.

    ``min_read`` widens a read window (towards the inside) to at least that many items when the
    axis is long enough, e.g. so that a 1-frame tail chunk still gives a flow network two frames.
    """
    if length <= 0:
        raise InferenceError(f"cannot split an empty axis (length {length})")
    if size <= 0 or size >= length:
        return [Span(0, length, 0, length)]
    return [_span(start, size, overlap, min_read, length) for start in range(0, length, size)]


def _span(keep_start: int, size: int, overlap: int, min_read: int, length: int) -> Span:
    """The span keeping ``[keep_start, keep_start + size)`` of an axis of ``length`` items."""
    keep_end = min(keep_start + size, length)
    read_start = max(0, keep_start - overlap)
    read_end = min(length, keep_end + overlap)
    want = min(min_read, length)
    if read_end - read_start < want:
        read_start = max(0, read_end - want)
        read_end = min(length, read_start + want)
    return Span(read_start, read_end, keep_start, keep_end)


# --------------------------------------------------------------------------------------------------
# Running a model
# --------------------------------------------------------------------------------------------------


def _forward(model: nn.Module, clip: torch.Tensor, device: torch.device, opts: InferenceOptions) -> torch.Tensor:
    """One forward pass of ``(T, 3, h, w)``; returns float32 ``(T, 3, sh, sw)`` on ``device``."""
    x = clip.to(device=device, dtype=torch.float32).unsqueeze(0)
    if opts.channels_last:
        x = to_channels_last_clip(x)
    with torch.no_grad(), autocast_context(device, opts.amp):
        out = forward_clip(model, x)
    if out.dim() != 5 or out.shape[:3] != (1, clip.shape[0], clip.shape[1]):
        raise InferenceError(
            f"model returned shape {tuple(out.shape)} for input {(1, *clip.shape)}; "
            "expected (B, T, C, H, W) with the same B, T and C"
        )
    return out[0].float()


def _run_tiled(model: nn.Module, clip: torch.Tensor, opts: InferenceOptions, device: torch.device):
    """Super-resolve one temporal chunk, tiled in space when ``opts.tile`` is set."""
    h, w = clip.shape[-2:]
    if opts.tile <= 0 or (opts.tile >= h and opts.tile >= w):
        return _forward(model, clip, device, opts)
    # Edge tiles are widened inwards to a full tile, so every tile has the same input size.
    rows = plan_spans(h, opts.tile, opts.tile_overlap, min_read=opts.tile)
    cols = plan_spans(w, opts.tile, opts.tile_overlap, min_read=opts.tile)
    out = None  # assembled on the CPU: only one tile's output is on the accelerator at a time
    scale = 0
    for r in rows:
        for c in cols:
            piece = _forward(model, clip[..., r.read_start : r.read_end, c.read_start : c.read_end], device, opts)
            if out is None:
                scale = piece.shape[-2] // (r.read_end - r.read_start)
                out = torch.empty(clip.shape[0], piece.shape[1], h * scale, w * scale)
            y0, y1 = (r.keep_start - r.read_start) * scale, (r.keep_end - r.read_start) * scale
            x0, x1 = (c.keep_start - c.read_start) * scale, (c.keep_end - c.read_start) * scale
            out[..., r.keep_start * scale : r.keep_end * scale, c.keep_start * scale : c.keep_end * scale] = piece[
                ..., y0:y1, x0:x1
            ].cpu()
    return out


def run_clip(
    model: nn.Module,
    clip: torch.Tensor,
    opts: Optional[InferenceOptions] = None,
    out_device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Super-resolve a whole clip ``(T, 3, h, w)`` in ``[0, 1]``; returns float32 ``(T, 3, sh, sw)``.

    The model runs on its own device (``model_device``); see the module docstring for chunks/tiles.
    """
    opts = opts or InferenceOptions()
    opts.check()
    if clip.dim() != 4:
        raise InferenceError(f"clip must be (T, C, h, w), got shape {tuple(clip.shape)}")
    device = model_device(model)
    pieces = []
    for span in plan_spans(clip.shape[0], opts.chunk, opts.chunk_overlap, min_read=2):
        out = _run_tiled(model, clip[span.read_start : span.read_end], opts, device)
        keep = out[span.keep_start - span.read_start : span.keep_end - span.read_start]
        pieces.append(keep.to(out_device))
    return torch.cat(pieces, dim=0)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Float ``(T, 3, H, W)`` in [0, 1] -> uint8 ``(T, H, W, 3)`` on the same device.

    The same rounding as :func:`mgvsr.metrics.tensor_to_uint8` (float32 ``clamp(0, 1) * 255``,
    round half to even) without the trip to the CPU; the result is bit-identical.
    """
    y = (x.detach().to(torch.float32).clamp(0.0, 1.0) * 255.0).round()
    return y.movedim(-3, -1).to(torch.uint8)


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``(T, h, w, 3)`` RGB -> float32 ``(T, 3, h, w)`` in ``[0, 1]``."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise InferenceError(f"expected uint8 frames (T, h, w, 3), got {frames.dtype} {frames.shape}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)


def stream_frames(
    model: nn.Module,
    frames: Iterable[np.ndarray],
    opts: Optional[InferenceOptions] = None,
) -> Iterator[np.ndarray]:
    """Super-resolve a stream of uint8 ``(h, w, 3)`` frames, yielding uint8 ``(sh, sw, 3)`` frames.

    Same chunk/tile semantics as :func:`run_clip` (``chunk=0`` means: read the whole stream first),
    but only ``chunk + 2 * chunk_overlap`` input frames are held at a time. The output equals
    ``mgvsr.metrics.tensor_to_uint8(run_clip(...))`` of the whole clip with the same options.
    """
    opts = opts or InferenceOptions()
    opts.check()
    if opts.chunk == 0:
        clip = list(frames)
        if clip:
            yield from tensor_to_uint8(run_clip(model, frames_to_tensor(np.stack(clip)), opts))
        return
    device = model_device(model)
    size, ctx = opts.chunk, opts.chunk_overlap
    buffer: list[np.ndarray] = []  # frames [offset, offset + len(buffer)) of the stream
    offset = 0
    keep_start = 0
    source = iter(frames)
    exhausted = False
    while True:
        # Read until the chunk's right context (at least one frame) is buffered, or the stream ends.
        while not exhausted and offset + len(buffer) < keep_start + size + max(ctx, 1):
            try:
                buffer.append(next(source))
            except StopIteration:
                exhausted = True
        known = offset + len(buffer)
        if keep_start >= known:
            return
        span = _span(keep_start, size, ctx, 2, known)
        clip = frames_to_tensor(np.stack(buffer[span.read_start - offset : span.read_end - offset]))
        out = _run_tiled(model, clip, opts, device)
        yield from tensor_to_uint8(out[span.keep_start - span.read_start : span.keep_end - span.read_start])
        keep_start = span.keep_end
        # Drop frames no later chunk reads (a 1-frame chunk may be widened one frame to the left).
        drop = max(0, keep_start - max(ctx, 1) - offset)
        del buffer[:drop]
        offset += drop
