"""The evaluation layer: one runner, one set of protocols, one scorer for every caller.

    weights ──► mgvsr.models.loading (file -> configured model)       mgvsr.runtime: device, autocast
    clips ──► runner.py: whole clip | temporal chunks | spatial tiles ──► SR frames (on the model's device)
                       │
              protocols.py: which frames, channels, border; model or bicubic upscaler
                       │
              scoring.py: PSNR / SSIM on the device (device_metrics.py, float64), per clip then per
                          dataset; clips split across the ranks of a process group and gathered

Used by training validation and the end-of-run report (:func:`score_model`, :func:`score_dataset`),
``mgvsr eval`` (:func:`score_dataset`) and ``mgvsr upscale`` (:func:`stream_frames`, runner only).
"""

from mgvsr.evaluation.protocols import (
    DEFAULT_PROTOCOL,
    DEFAULT_SPLIT,
    PROTOCOLS,
    Protocol,
    Upscaler,
    bicubic_upscaler,
    model_upscaler,
)
from mgvsr.evaluation.runner import (
    InferenceError,
    InferenceOptions,
    add_model_arguments,
    forward_clip,
    frames_to_tensor,
    plan_spans,
    quantize,
    run_clip,
    stream_frames,
)
from mgvsr.evaluation.scoring import EvalError, EvalResult, score_clip, score_clips, score_dataset, score_model

__all__ = [
    "DEFAULT_PROTOCOL",
    "DEFAULT_SPLIT",
    "PROTOCOLS",
    "Protocol",
    "Upscaler",
    "bicubic_upscaler",
    "model_upscaler",
    "InferenceError",
    "InferenceOptions",
    "add_model_arguments",
    "forward_clip",
    "frames_to_tensor",
    "plan_spans",
    "quantize",
    "run_clip",
    "stream_frames",
    "EvalError",
    "EvalResult",
    "score_clip",
    "score_clips",
    "score_dataset",
    "score_model",
]
