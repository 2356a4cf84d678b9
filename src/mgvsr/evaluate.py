"""``mgvsr eval``: PSNR / SSIM of a model (or of bicubic up-sampling) on a test set.

The protocols (reds4, vid4, vimeo-t, generic), the runner and the scoring live in
:mod:`mgvsr.evaluation`; this module is the command: it builds the dataset and the model, scores
them with :func:`mgvsr.evaluation.score_dataset` (PSNR / SSIM on the model's device) and writes the
results as JSON and CSV. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Optional

from mgvsr.evaluation import (
    DEFAULT_PROTOCOL,
    DEFAULT_SPLIT,
    PROTOCOLS,
    EvalError,
    EvalResult,
    InferenceOptions,
    Protocol,
    Upscaler,
    add_model_arguments,
    bicubic_upscaler,
    model_upscaler,
    score_dataset,
)


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
    try:
        return _run(args)
    except FileNotFoundError as err:  # project errors (MgvsrError) are reported by cli.main
        print(f"mgvsr eval: error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from mgvsr.config import ConfigError, from_dict
    from mgvsr.data import build_dataset
    from mgvsr.data.io import DataError
    from mgvsr.models.loading import build_for_inference
    from mgvsr.runtime import channels_last_model, resolve_device

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

    opts = InferenceOptions(args.chunk, args.chunk_overlap, args.tile, args.tile_overlap, args.amp, args.channels_last)
    opts.check()
    runs: list[tuple[str, Upscaler]] = []
    info: dict = {"data": args.data, "split": ds_cfg.split, "protocol": protocol.name, "flip_seq": protocol.flip_seq}
    device = resolve_device(args.device)  # where the model runs and where every method is scored
    if args.weights:
        opts = opts.on_device(device)
        model, model_cfg = build_for_inference(args.weights, device, args.model, args.num_feat, args.num_block)
        if opts.channels_last:
            channels_last_model(model)
        info.update(weights=str(args.weights), model=model_cfg.__dict__, device=str(device), inference=opts.__dict__)
        runs.append((Path(args.weights).name, model_upscaler(model, opts, protocol.flip_seq)))
    if args.bicubic:
        runs.append(("bicubic", bicubic_upscaler(4, device)))

    results = []
    for method, upscale in runs:
        save = Path(args.save_frames) if args.save_frames and method != "bicubic" else None
        result = score_dataset(upscale, dataset, protocol, args.max_frames, method, save, progress=not args.no_progress)
        print(result.table())
        print()
        results.append(result)
    csv_path = write_results(results, Path(args.out), info)
    print(f"results: {args.out}, {csv_path}")
    return 0
