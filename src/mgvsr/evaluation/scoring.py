"""Scoring: run an upscaler over clips, measure the protocol's frames on the device, average.

* :func:`score_clips` scores any iterable of ``(name, lr, hr)`` uint8 clips in this process.
* :func:`score_dataset` scores a dataset; under an initialised ``torch.distributed`` process group
  each rank reads and scores only its share of the clips (clips ``rank, rank + W, ...``) and the
  per-frame scores of all ranks are gathered, so every rank returns the same :class:`EvalResult`,
  equal to a single-process run's. Callers let rank 0 write.
* :func:`score_model` is training validation (and the end-of-run report's model score): the
  ``generic`` protocol on a model in eval mode, returned as the flat dict of ``val_log.csv``.

PSNR / SSIM are computed by :mod:`mgvsr.evaluation.device_metrics` in float64 on the device of the
SR frames (the model's, for a model), so validating on a GPU costs little besides the forward pass;
per-frame values are averaged per clip, then over clips (:class:`mgvsr.metrics.ClipAverager`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
from torch import nn

from mgvsr.data.io import write_png
from mgvsr.data.sampling import iter_clips
from mgvsr.distributed import all_gather_objects, group_rank_and_size
from mgvsr.errors import MgvsrError
from mgvsr.evaluation import device_metrics
from mgvsr.evaluation.protocols import PROTOCOLS, Protocol, Upscaler, model_upscaler
from mgvsr.evaluation.runner import InferenceOptions
from mgvsr.metrics import ClipAverager


class EvalError(MgvsrError, ValueError):
    """Bad evaluation input; the message names the clip, file or option."""


@dataclass
class ClipScores:
    """Per-frame ``(psnr, ssim)`` of one clip for each channel of the protocol."""

    index: int  # position of the clip in the dataset / iterable (the order of the results)
    name: str
    frames_in: int  # LR frames super-resolved (including unscored context frames)
    frames: dict[str, list[tuple[float, float]]]


@dataclass
class EvalResult:
    """Per-channel :class:`~mgvsr.metrics.ClipAverager` plus timing."""

    protocol: Protocol
    method: str
    scores: dict[str, ClipAverager] = field(default_factory=dict)
    seconds: float = 0.0
    frames_in: int = 0  # LR frames super-resolved (including unscored context frames)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "protocol": self.protocol.name,
            "channels": {ch: avg.summary() for ch, avg in self.scores.items()},
            "seconds": self.seconds,
            "frames_per_second": self.frames_in / self.seconds if self.seconds > 0 else None,
        }

    def flat_scores(self) -> dict[str, dict]:
        """``{"clips": {name: {psnr, ssim, psnr_y, ssim_y}}, "average": {...}}`` of an RGB + Y result:
        the layout of ``val_log.csv``, ``val_metrics.json`` and the run summary."""
        rgb, y = self.scores["rgb"], self.scores["y"]
        per_clip = {
            name: {"psnr": c["psnr"], "ssim": c["ssim"], "psnr_y": cy["psnr"], "ssim_y": cy["ssim"]}
            for (name, c), cy in zip(rgb.clip_means().items(), y.clip_means().values())
        }
        avg, avg_y = rgb.average(), y.average()
        average = {"psnr": avg["psnr"], "ssim": avg["ssim"], "psnr_y": avg_y["psnr"], "ssim_y": avg_y["ssim"]}
        return {"clips": per_clip, "average": average}

    def table(self) -> str:
        """Plain-text table: one row per clip, columns PSNR/SSIM per channel, then the average."""
        channels = list(self.scores)
        first = self.scores[channels[0]]
        rows = {ch: avg.clip_means() for ch, avg in self.scores.items()}
        width = max([len("Average")] + [len(c) for c in first.clips])
        cols = []
        for ch in channels:
            suffix = "" if ch == "rgb" else "-Y"
            cols += [f"PSNR{suffix}", f"SSIM{suffix}"]
        lines = [f"{self.method} ({self.protocol.name})", f"{'clip':<{width}}  {'frames':>6}" + "".join(f"  {c:>8}" for c in cols)]
        for clip in first.clips:
            cells = []
            for ch in channels:
                cells += [f"{rows[ch][clip]['psnr']:8.4f}", f"{rows[ch][clip]['ssim']:8.4f}"]
            lines.append(f"{clip:<{width}}  {int(rows[channels[0]][clip]['frames']):>6d}  " + "  ".join(cells))
        cells = []
        for ch in channels:
            avg = self.scores[ch].average()
            cells += [f"{avg['psnr']:8.4f}", f"{avg['ssim']:8.4f}"]
        total = sum(int(r["frames"]) for r in rows[channels[0]].values())
        lines.append(f"{'Average':<{width}}  {total:>6d}  " + "  ".join(cells))
        return "\n".join(lines)

    def csv_rows(self) -> list[dict]:
        out = []
        for ch, avg in self.scores.items():
            for clip, r in avg.clip_means().items():
                out.append({"method": self.method, "channel": ch, "clip": clip, **_csv_numbers(r)})
            total = sum(int(r["frames"]) for r in avg.clip_means().values())
            out.append({"method": self.method, "channel": ch, "clip": "Average", **_csv_numbers({**avg.average(), "frames": total})})
        return out


def _csv_numbers(row: dict) -> dict:
    return {"frames": int(row["frames"]), "psnr": f"{row['psnr']:.6f}", "ssim": f"{row['ssim']:.6f}"}


# --------------------------------------------------------------------------------------------------
# One clip
# --------------------------------------------------------------------------------------------------


def score_clip(
    upscale: Upscaler,
    index: int,
    name: str,
    lr: np.ndarray,
    hr: np.ndarray,
    protocol: Protocol,
    save_dir: Optional[Path] = None,
) -> ClipScores:
    """Super-resolve one clip and score the protocol's frames on the device of the SR frames.

    Under ``protocol.center_frame`` only output frame ``T // 2`` is scored, against ``hr[T // 2]``
    (or ``hr[0]`` when a single GT frame is given). ``save_dir`` receives the scored output frames
    as ``save_dir/<clip>/<frame index, 8 digits>.png``.
    """
    sr = upscale(lr)
    if sr.shape[0] != lr.shape[0]:
        raise EvalError(f"clip {name}: {lr.shape[0]} input frames gave {sr.shape[0]} output frames")
    try:
        pairs = protocol.scored_frames(len(lr), len(hr))
    except ValueError as err:
        raise EvalError(f"clip {name}: {err}") from None
    values = []  # one (channels, 2) tensor per scored frame, kept on the device until the clip is done
    for t, g in pairs:
        pred, gt = sr[t], torch.from_numpy(np.ascontiguousarray(hr[g])).to(sr.device)
        if pred.shape != gt.shape:
            raise EvalError(f"clip {name} frame {t}: output {tuple(pred.shape)} vs ground truth {tuple(gt.shape)}")
        values.append(torch.stack([
            device_metrics.frame_scores(pred, gt, protocol.crop_border, ch == "y") for ch in protocol.channels
        ]))
        if save_dir is not None:
            write_png(Path(save_dir) / name / f"{t:08d}.png", pred.cpu().numpy())
    table = torch.stack(values).cpu().tolist()  # one host transfer per clip: [frame][channel][psnr, ssim]
    frames = {ch: [tuple(row[c]) for row in table] for c, ch in enumerate(protocol.channels)}
    return ClipScores(index, name, len(lr), frames)


def _collect(protocol: Protocol, method: str, clips: list[ClipScores], seconds: float) -> EvalResult:
    """Average per-frame scores into an :class:`EvalResult`, clips in the order of their index."""
    result = EvalResult(protocol, method, {ch: ClipAverager() for ch in protocol.channels}, seconds)
    for clip in sorted(clips, key=lambda c: c.index):
        result.frames_in += clip.frames_in
        for ch, avg in result.scores.items():
            for frame_psnr, frame_ssim in clip.frames[ch]:
                avg.add(clip.name, frame_psnr, frame_ssim)
    if not result.scores[protocol.channels[0]].clips:
        raise EvalError("no clips to evaluate")
    return result


def _progress(enabled: bool, method: str, total: Optional[int] = None):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(desc=method, unit="clip", total=total, file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# Many clips
# --------------------------------------------------------------------------------------------------


def score_clips(
    upscale: Upscaler,
    clips: Iterable[tuple[str, np.ndarray, np.ndarray]],
    protocol: Protocol,
    method: str = "model",
    save_dir: Optional[Path] = None,
    progress: bool = False,
) -> EvalResult:
    """Score ``upscale`` on ``(name, lr (T,h,w,3), hr (T or 1, H, W, 3))`` uint8 clips, in this process.

    See :func:`score_clip` for the frames scored and ``save_dir``.
    """
    bar = _progress(progress, method)
    start = time.perf_counter()
    scored = []
    for index, (name, lr, hr) in enumerate(clips):
        scored.append(score_clip(upscale, index, name, lr, hr, protocol, save_dir))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return _collect(protocol, method, scored, time.perf_counter() - start)


def score_dataset(
    upscale: Upscaler,
    dataset,
    protocol: Protocol,
    max_frames: int = 0,
    method: str = "model",
    save_dir: Optional[Path] = None,
    progress: bool = False,
) -> EvalResult:
    """Score ``upscale`` on every clip of ``dataset`` (the first ``max_frames`` frames of each).

    Under an initialised process group of ``W`` ranks, rank ``r`` reads and scores clips
    ``r, r + W, ...`` and the per-frame scores are gathered (a collective: every rank must call this);
    the result, identical on every rank, equals a single-process run's. ``seconds`` is the slowest
    rank's time.
    """
    rank, world = group_rank_and_size()
    mine = range(rank, len(dataset.clips), world)
    bar = _progress(progress and rank == 0, method, len(mine))
    start = time.perf_counter()
    scored = []
    for index, (name, lr, hr) in zip(mine, iter_clips(dataset, max_frames, indices=mine)):
        scored.append(score_clip(upscale, index, name, lr, hr, protocol, save_dir))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    if world > 1:
        gathered = all_gather_objects((scored, seconds))
        scored = [clip for part, _ in gathered for clip in part]
        seconds = max(s for _, s in gathered)
    return _collect(protocol, method, scored, seconds)


def score_model(model: nn.Module, dataset, max_frames: int = 0, amp: str = "none",
                channels_last: bool = False) -> dict[str, dict]:
    """Validation scores of ``model`` (on its own device, whole clips, eval mode) on ``dataset``:
    the ``generic`` protocol (RGB and Y, no border) as :meth:`EvalResult.flat_scores`.

    A collective under a process group (see :func:`score_dataset`); the model's train/eval mode is
    restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        upscale = model_upscaler(model, InferenceOptions(amp=amp, channels_last=channels_last))
        return score_dataset(upscale, dataset, PROTOCOLS["generic"], max_frames).flat_scores()
    finally:
        model.train(was_training)
