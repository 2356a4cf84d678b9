"""Run a video super-resolution model over clips of any length and frame size.

Conventions
-----------
* A clip is a float tensor ``(T, 3, h, w)`` with values in ``[0, 1]`` (RGB); the model maps
  ``(B, T, 3, h, w) -> (B, T, 3, s*h, s*w)``. The scale ``s`` is read from the model's output.
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
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
import torch
from torch import nn

from mgvsr.config import ConfigError, ModelConfig
from mgvsr.config import model_config_from_dict as config_model_from_dict
from mgvsr.metrics import tensor_to_uint8
from mgvsr.models.weights import (
    check_state,
    load_state,
    mmagic_to_basicsr,
    read_raw,
    sniff_format,
    strip_wrapper_prefixes,
)

AMP_CHOICES = ("none", "bf16", "fp16")
METADATA_KEY = "mgvsr_model_config"


class InferenceError(ValueError):
    """Bad inference settings or weights; the message names the setting or file."""


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
    amp: str = "none"  # "bf16" / "fp16": autocast on devices that support it

    def check(self) -> None:
        for name in ("chunk", "chunk_overlap", "tile", "tile_overlap"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise InferenceError(f"{name}: must be an integer >= 0, got {value!r}")
        if self.amp not in AMP_CHOICES:
            raise InferenceError(f"amp: {self.amp!r} is not supported; choose one of {list(AMP_CHOICES)}")


def add_model_arguments(parser) -> None:
    """CLI flags shared by ``mgvsr eval`` and ``mgvsr upscale``: device, autocast, model overrides."""
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--amp", choices=["none", "bf16"], default="none", help="bf16 autocast")
    parser.add_argument("--model", choices=["basicvsr", "iconvsr", "edvr", "basicvsrpp"],
                        help="override the model kind from the weights")
    parser.add_argument("--num-feat", type=int, help="override the width from the weights")
    parser.add_argument("--num-block", type=int, help="override the depth from the weights")


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
        raise InferenceError(f"device: {name!r} is not a device name ({err})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InferenceError(f"device: {name!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Autocast to bf16 / fp16 (``amp``) where the device type supports it; ``none`` = a no-op."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp not in AMP_CHOICES:
        raise InferenceError(f"amp: {amp!r} is not supported; choose one of {list(AMP_CHOICES)}")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InferenceError(f"amp: bf16 is not supported on {device}")
    if device.type not in ("cuda", "cpu", "mps", "xpu"):
        raise InferenceError(f"amp: autocast is not available for device type {device.type!r}")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameter-free module)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


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


def _forward(model: nn.Module, clip: torch.Tensor, device: torch.device, amp: str) -> torch.Tensor:
    """One forward pass of ``(T, 3, h, w)``; returns float32 ``(T, 3, sh, sw)`` on ``device``."""
    with torch.no_grad(), autocast_context(device, amp):
        x = clip.to(device=device, dtype=torch.float32).unsqueeze(0)
        out = model.forward_clip(x) if hasattr(model, "forward_clip") else model(x)  # sliding-window models
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
        return _forward(model, clip, device, opts.amp)
    # Edge tiles are widened inwards to a full tile, so every tile has the same input size.
    rows = plan_spans(h, opts.tile, opts.tile_overlap, min_read=opts.tile)
    cols = plan_spans(w, opts.tile, opts.tile_overlap, min_read=opts.tile)
    out = None  # assembled on the CPU: only one tile's output is on the accelerator at a time
    scale = 0
    for r in rows:
        for c in cols:
            piece = _forward(model, clip[..., r.read_start : r.read_end, c.read_start : c.read_end], device, opts.amp)
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


# --------------------------------------------------------------------------------------------------
# Weights -> model
# --------------------------------------------------------------------------------------------------


def read_model_config_metadata(path: str | Path) -> Optional[ModelConfig]:
    """The ModelConfig stored in an mgvsr ``.safetensors`` file's metadata, or None if absent."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:  # safetensors raises several types for corrupt headers
        raise InferenceError(f"{path}: not a readable .safetensors file ({err})") from None
    text = metadata.get(METADATA_KEY)
    if text is None:
        return None
    try:
        fields = json.loads(text)
        return model_config_from_dict(fields)
    except (json.JSONDecodeError, ConfigError) as err:
        raise InferenceError(f"{path}: metadata '{METADATA_KEY}' is invalid: {err}") from None


def model_config_from_dict(fields: dict) -> ModelConfig:
    """Checked ModelConfig from a plain dict (weights-file paths are dropped: nothing is loaded)."""
    fields = {k: v for k, v in dict(fields).items() if k not in ("init_weights", "spynet_weights", "edvr_weights")}
    return config_model_from_dict(fields)


def infer_model_config(state: dict, where: str = "weights") -> ModelConfig:
    """Guess the model and its width and depth from BasicSR- or MMagic-style parameter names.

    EDVR and BasicVSR++ are recognised by the rules in their model modules
    (``infer_edvr_fields``, ``infer_basicvsrpp_fields``); BasicVSR / IconVSR as follows.

    ``num_feat`` is the output width of the backward trunk's first conv; ``num_block`` counts the
    residual blocks of that trunk; IconVSR is recognised by its EDVR keyframe extractor / fusion
    convs, and its ``temporal_padding`` from the width of EDVR's fusion conv (``keyframe_stride`` has
    no parameters and keeps its default). Raises :class:`InferenceError` when the names are not those
    of either model.
    """
    from mgvsr.models.basicvsrpp import infer_basicvsrpp_fields
    from mgvsr.models.edvr import infer_edvr_fields

    state = strip_wrapper_prefixes(state)
    for infer in (infer_edvr_fields, infer_basicvsrpp_fields):  # EDVR, BasicVSR++: per-model rules
        fields = infer({mmagic_to_basicsr(k): v for k, v in state.items()})
        if fields is not None:
            return model_config_from_dict(fields)
    trunk = None
    for name in ("backward_trunk", "backward_resblocks"):  # BasicSR, MMagic
        if f"{name}.main.0.weight" in state:
            trunk = name
            break
    if trunk is None:
        sample = ", ".join(sorted(state)[:5])
        raise InferenceError(
            f"{where}: cannot tell the model from the parameter names (no 'backward_trunk.main.0.weight'; "
            f"first keys: {sample}); pass --model/--num-feat/--num-block"
        )
    num_feat = int(state[f"{trunk}.main.0.weight"].shape[0])
    blocks = {k.split(".")[3] for k in state if k.startswith(f"{trunk}.main.2.") and k.endswith("conv1.weight")}
    if not blocks:
        raise InferenceError(f"{where}: found no residual blocks under '{trunk}.main.2.'")
    fields = {"name": "basicvsr", "num_feat": num_feat, "num_block": len(blocks)}
    if "conv_hr.weight" in state:  # width of the HR head (64 in BasicSR/MMagic; smaller in CPU variants)
        fields["head_feat"] = int(state["conv_hr.weight"].shape[0])
    if any(k.startswith(("edvr.", "backward_fusion.", "forward_fusion.")) for k in state):
        fields["name"] = "iconvsr"
        # EDVR's TSA fusion conv reads (2 * temporal_padding + 1) frames of num_feat channels.
        fusion = state.get("edvr.fusion.feat_fusion.weight")
        if fusion is not None:
            fields["temporal_padding"] = (int(fusion.shape[1]) // num_feat - 1) // 2
    return model_config_from_dict(fields)


@dataclass
class WeightsFile:
    """What a weights file holds. ``ema`` is None when the file has no EMA weights."""

    path: Path
    kind: str  # "safetensors" | "checkpoint" (our trainer) | "pth" (BasicSR / MMagic)
    state: dict
    ema: Optional[dict]
    model_cfg: Optional[ModelConfig]  # from metadata or the checkpoint's config; None = unknown

    def best_state(self) -> dict:
        """EMA weights when present (they evaluate better), else the raw weights."""
        return self.ema if self.ema is not None else self.state


def read_weights(path: str | Path) -> WeightsFile:
    """Read ``.safetensors`` (ours), a training checkpoint, or a BasicSR/MMagic ``.pth``.

    Training checkpoints are ``torch.save``'d dicts with ``model``, ``ema`` and ``config`` keys.
    Everything is read with ``weights_only=True``; pickles that need arbitrary code are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise InferenceError(f"weights file not found: {path}")
    if sniff_format(path) == "safetensors":
        return WeightsFile(path, "safetensors", load_state(str(path)), None, read_model_config_metadata(path))
    obj = read_raw(path)  # weights_only=True; clear WeightsError for refused pickles / corrupt files
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        cfg = None
        config = obj.get("config")
        if isinstance(config, dict) and isinstance(config.get("model"), dict):
            try:
                cfg = model_config_from_dict(config["model"])
            except ConfigError as err:
                raise InferenceError(f"{path}: checkpoint 'config.model' is invalid: {err}") from None
        ema = obj.get("ema")
        if ema is not None and not isinstance(ema, dict):
            raise InferenceError(f"{path}: checkpoint 'ema' must be a state dict or None")
        return WeightsFile(path, "checkpoint", obj["model"], ema, cfg)
    if isinstance(obj, dict) and isinstance(obj.get("params"), dict):
        # BasicSR: keep the raw weights and the EMA weights apart (export writes both back).
        ema = load_state(str(path), key="params_ema") if isinstance(obj.get("params_ema"), dict) else None
        return WeightsFile(path, "pth", load_state(str(path), key="params"), ema, None)
    return WeightsFile(path, "pth", load_state(str(path)), None, None)


def build_for_inference(
    weights: str | Path,
    device: str | torch.device = "cpu",
    name: Optional[str] = None,
    num_feat: Optional[int] = None,
    num_block: Optional[int] = None,
) -> tuple[nn.Module, ModelConfig]:
    """Build the model described by ``weights`` (metadata, checkpoint config or parameter shapes),
    load the weights strictly (EMA weights when present) and return ``(model.eval(), cfg)``.

    ``name`` / ``num_feat`` / ``num_block`` override what the file says.
    """
    from mgvsr.models import build_model

    info = read_weights(weights)
    state = info.best_state()
    cfg = info.model_cfg or infer_model_config(state, where=str(weights))
    overrides = {k: v for k, v in (("name", name), ("num_feat", num_feat), ("num_block", num_block)) if v is not None}
    if overrides:
        fields = {**cfg.__dict__, **overrides}
        try:
            cfg = model_config_from_dict(fields)
        except ConfigError as err:
            raise InferenceError(f"model options: {err}") from None

    model = build_model(cfg)
    model.load_state_dict(check_state(model, strip_wrapper_prefixes(state), str(weights), strict=True), strict=True)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    return model.to(device).eval(), cfg
