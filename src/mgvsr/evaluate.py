"""``mgvsr eval``: PSNR / SSIM of a model (or of bicubic up-sampling) on a test set.

A *protocol* fixes what is measured; see docs/evaluation.md for the sources of each:

=========  ==========================  ===========  =======  =====================================
protocol   frames scored               channels     border   notes
=========  ==========================  ===========  =======  =====================================
reds4      all frames of each clip     RGB          0        REDS4 = clips 000, 011, 015, 020
vid4       all frames of each clip     Y            0        Y = BT.601 luma (MATLAB rgb2ycbcr)
vimeo-t    centre frame (im4) of 7     Y            0        model sees all 7 frames; by default
                                                             the output is averaged with that of
                                                             the time-reversed clip (flip_seq)
generic    all frames of each clip     RGB and Y    0        any frame folder / video set
=========  ==========================  ===========  =======  =====================================

Scores are averaged over the frames of a clip, then over clips (every clip weighs the same).

Library use: :func:`evaluate` takes any ``upscale(lr_uint8) -> sr_uint8`` function and an iterable of
``(name, lr, hr)`` clips, so a model (:func:`model_upscaler`) and the bicubic baseline
(:func:`bicubic_upscaler`) are scored by the same code.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch
from torch import nn

from mgvsr.inference import InferenceError, InferenceOptions, add_model_arguments, frames_to_tensor, run_clip
from mgvsr.metrics import ClipAverager, psnr, ssim, tensor_to_uint8

Upscaler = Callable[[np.ndarray], np.ndarray]


class EvalError(ValueError):
    """Bad evaluation input; the message names the file or option."""


# --------------------------------------------------------------------------------------------------
# Protocols
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """What to score. ``channels``: "rgb" and/or "y"; the first one is the headline number."""

    name: str
    channels: tuple[str, ...]
    crop_border: int = 0
    center_frame: bool = False  # score only frame T // 2 of each clip (Vimeo-90K-T: im4 of 7)
    flip_seq: bool = False  # average with the output for the time-reversed clip (BasicSR flip_seq)


PROTOCOLS: dict[str, Protocol] = {
    "reds4": Protocol("reds4", ("rgb",)),
    "vid4": Protocol("vid4", ("y",)),
    "vimeo-t": Protocol("vimeo-t", ("y",), center_frame=True, flip_seq=True),
    "generic": Protocol("generic", ("rgb", "y")),
}

# Dataset kind -> default protocol and split.
DEFAULT_PROTOCOL = {"reds": "reds4", "vid4": "vid4", "vimeo": "vimeo-t"}
DEFAULT_SPLIT = {"reds": "REDS4", "vimeo": "test", "prepared": "val"}


# --------------------------------------------------------------------------------------------------
# Upscalers: uint8 LR clip (T, h, w, 3) -> uint8 SR clip (T, H, W, 3)
# --------------------------------------------------------------------------------------------------


def model_upscaler(model: nn.Module, opts: Optional[InferenceOptions] = None, flip_seq: bool = False) -> Upscaler:
    """Wrap a model with :func:`mgvsr.inference.run_clip`.

    With ``flip_seq`` the clip is followed by its time-reversed copy (2T frames), and the output of
    each frame is the mean of its two outputs, as BasicSR's ``VideoRecurrentModel.test`` does.
    """

    def upscale(lr: np.ndarray) -> np.ndarray:
        clip = frames_to_tensor(lr)
        n = clip.shape[0]
        if flip_seq:
            clip = torch.cat([clip, clip.flip(0)], dim=0)
        out = run_clip(model, clip, opts)
        if flip_seq:
            out = 0.5 * (out[:n] + out[n:].flip(0))
        return tensor_to_uint8(out)

    return upscale


def bicubic_upscaler(scale: int = 4) -> Upscaler:
    """MATLAB-style bicubic up-sampling (``imresize(lr, scale, 'bicubic')``), the papers' baseline."""
    from mgvsr.data.degrade import bicubic_resize

    def upscale(lr: np.ndarray) -> np.ndarray:
        return np.stack([bicubic_resize(frame, float(scale)) for frame in lr])

    return upscale


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


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


def evaluate(
    upscale: Upscaler,
    clips: Iterable[tuple[str, np.ndarray, np.ndarray]],
    protocol: Protocol,
    method: str = "model",
    save_dir: Optional[Path] = None,
    progress: bool = False,
) -> EvalResult:
    """Score ``upscale`` on ``(name, lr (T,h,w,3), hr (T or 1, H, W, 3))`` uint8 clips.

    Under ``protocol.center_frame`` only output frame ``T // 2`` is scored, against ``hr[T // 2]``
    (or ``hr[0]`` when a single GT frame is given). ``save_dir`` receives the scored output frames
    as ``save_dir/<clip>/<frame index, 8 digits>.png``.
    """
    result = EvalResult(protocol, method, {ch: ClipAverager() for ch in protocol.channels})
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc=method, unit="clip", file=sys.stderr)
    start = time.perf_counter()
    for name, lr, hr in clips:
        sr = upscale(lr)
        result.frames_in += len(lr)
        if sr.shape[0] != lr.shape[0]:
            raise EvalError(f"clip {name}: {lr.shape[0]} input frames gave {sr.shape[0]} output frames")
        if protocol.center_frame:
            pairs = [(len(lr) // 2, sr[len(lr) // 2], hr[len(lr) // 2] if len(hr) == len(lr) else hr[0])]
        else:
            if len(hr) != len(sr):
                raise EvalError(f"clip {name}: {len(hr)} ground-truth frames for {len(sr)} output frames")
            pairs = [(t, sr[t], hr[t]) for t in range(len(sr))]
        for t, pred, gt in pairs:
            if pred.shape != gt.shape:
                raise EvalError(f"clip {name} frame {t}: output {pred.shape} vs ground truth {gt.shape}")
            for ch, avg in result.scores.items():
                y = ch == "y"
                avg.add(name, psnr(pred, gt, protocol.crop_border, y), ssim(pred, gt, protocol.crop_border, y))
            if save_dir is not None:
                _save_png(Path(save_dir) / name / f"{t:08d}.png", pred)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    result.seconds = time.perf_counter() - start
    if not result.scores[protocol.channels[0]].clips:
        raise EvalError("no clips to evaluate")
    return result


def _save_png(path: Path, frame: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame).save(path)


def write_results(results: list[EvalResult], json_path: Path, extra: Optional[dict] = None) -> Path:
    """Write ``json_path`` and the same numbers as CSV next to it (``.csv``); return the CSV path."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**(extra or {}), "results": [r.to_dict() for r in results]}
    json_path.write_text(json.dumps(_json_safe(payload), indent=2, allow_nan=False) + "\n")
    csv_path = json_path.with_suffix(".csv")
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["method", "channel", "clip", "frames", "psnr", "ssim"])
        writer.writeheader()
        for r in results:
            writer.writerows(r.csv_rows())
    return csv_path


def _json_safe(value):
    """Identical frames give PSNR = inf, which JSON cannot hold: write it as the string "inf"."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def parse_data_spec(text: str) -> tuple[str, str]:
    """``"reds:/data/REDS"`` -> ``("reds", "/data/REDS")``."""
    from mgvsr.data.build import KINDS

    kind, sep, root = text.partition(":")
    if not sep or not root:
        raise EvalError(f"--data {text!r}: expected KIND:ROOT, e.g. reds:/data/REDS (kinds: {', '.join(KINDS)})")
    if kind not in KINDS:
        raise EvalError(f"--data {text!r}: unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    return kind, root


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", help="model weights (.safetensors, training checkpoint, BasicSR/MMagic .pth)")
    parser.add_argument("--data", required=True, help="KIND:ROOT, KIND one of reds|vimeo|vid4|frames|video|prepared")
    parser.add_argument("--split", help="dataset split (default: REDS4 for reds, test for vimeo)")
    parser.add_argument("--degradation", choices=["BI", "BD"], default="BI", help="LR frames: bicubic (BI) or blur-down (BD)")
    parser.add_argument("--clips", nargs="+", help="evaluate only these clips")
    parser.add_argument("--lr-source", choices=["disk", "on_the_fly", "auto"],
                        help="LR frames from disk or made from HR (default: per layout, see docs/data.md)")
    parser.add_argument("--gt-lmdb", help="reds/vimeo from BasicSR's LMDB folders: the GT .lmdb (relative to ROOT)")
    parser.add_argument("--lq-lmdb", help="with --gt-lmdb: the LQ .lmdb folder (relative to ROOT)")
    parser.add_argument("--max-frames", type=int, default=0, help="at most this many frames per clip (0 = all)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), help="default: from the dataset kind")
    parser.add_argument(
        "--flip-seq", action=argparse.BooleanOptionalAction, default=None,
        help="average with the time-reversed clip's output (default: on for vimeo-t only)",
    )
    parser.add_argument("--bicubic", action="store_true", help="also report the bicubic up-sampling baseline")
    parser.add_argument("--save-frames", metavar="DIR", help="save the model's scored output frames as PNG here")
    parser.add_argument("--out", default="results.json", help="JSON results (CSV written next to it)")
    parser.add_argument("--chunk", type=int, default=0, help="temporal chunk length in frames (0 = whole clip)")
    parser.add_argument("--chunk-overlap", type=int, default=2, help="context frames on each side of a chunk")
    parser.add_argument("--tile", type=int, default=0, help="LR tile size in pixels (0 = whole frame)")
    parser.add_argument("--tile-overlap", type=int, default=16, help="LR context pixels on each side of a tile")
    add_model_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from mgvsr.models.weights import WeightsError

    try:
        return _run(args)
    except (EvalError, InferenceError, WeightsError, FileNotFoundError) as err:
        print(f"mgvsr eval: error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from mgvsr.config import ConfigError, from_dict
    from mgvsr.data import build_dataset, iter_clips
    from mgvsr.data.io import DataError
    from mgvsr.inference import build_for_inference, resolve_device

    if not args.weights and not args.bicubic:
        raise EvalError("give --weights (and/or --bicubic for the bicubic baseline)")
    kind, root = parse_data_spec(args.data)
    protocol = PROTOCOLS[args.protocol or DEFAULT_PROTOCOL.get(kind, "generic")]
    if args.flip_seq is not None:
        protocol = Protocol(protocol.name, protocol.channels, protocol.crop_border, protocol.center_frame, args.flip_seq)
    fields = {"kind": kind, "root": root, "degradation": args.degradation, "max_frames": args.max_frames}
    split = args.split or DEFAULT_SPLIT.get(kind)
    if split:
        fields["split"] = split
    if args.clips:
        fields["clips"] = args.clips
    for key in ("lr_source", "gt_lmdb", "lq_lmdb"):
        if getattr(args, key):
            fields[key] = getattr(args, key)
    try:
        ds_cfg = from_dict({"data": {"train": fields}}).data.train
        dataset = build_dataset(ds_cfg, scale=4)
    except (ConfigError, DataError) as err:
        raise EvalError(f"--data {args.data}: {err}") from None

    opts = InferenceOptions(args.chunk, args.chunk_overlap, args.tile, args.tile_overlap, args.amp)
    opts.check()
    runs: list[tuple[str, Upscaler]] = []
    info: dict = {"data": args.data, "split": ds_cfg.split, "protocol": protocol.name, "flip_seq": protocol.flip_seq}
    if args.weights:
        device = resolve_device(args.device)
        model, model_cfg = build_for_inference(args.weights, device, args.model, args.num_feat, args.num_block)
        info.update(weights=str(args.weights), model=model_cfg.__dict__, device=str(device), inference=opts.__dict__)
        runs.append((Path(args.weights).name, model_upscaler(model, opts, protocol.flip_seq)))
    if args.bicubic:
        runs.append(("bicubic", bicubic_upscaler(4)))

    results = []
    for method, upscale in runs:
        save = Path(args.save_frames) if args.save_frames and method != "bicubic" else None
        clips = iter_clips(dataset, max_frames=args.max_frames)
        result = evaluate(upscale, clips, protocol, method, save, progress=not args.no_progress)
        print(result.table())
        print()
        results.append(result)
    csv_path = write_results(results, Path(args.out), info)
    print(f"results: {args.out}, {csv_path}")
    return 0
