"""``mgvsr prepare``: turn video files into a training set, or pack any dataset into the uint8 cache.

From videos (a file or a folder of them)::

    mgvsr prepare VIDEO_OR_FOLDER --out DIR [--clip-len 30] [--every 1] [--hr-size 320x180]
                  [--val-clips 2] [--lr none|BI|BD] [--codec libx264|ffv1]

Each video is split into consecutive clips of ``--clip-len`` frames; only every ``--every``-th clip is
kept, clips that contain a scene cut (or are nearly flat) are dropped, and ``--val-clips`` clips spread
evenly over the kept ones become the validation split (their neighbouring clips are left out of
training). HR frames are optionally downsized with PIL's antialiased bicubic filter (never upscaled)
and written as one video per clip (``libx264`` 4:4:4 at ``--crf``, or lossless ``ffv1``). With
``--lr BI|BD`` the LR frames are made now and stored losslessly; otherwise the loader makes them on
the fly. ``manifest.json`` (source path and sha256, settings, clip list with frame counts) is written
last, so an interrupted run never leaves a valid-looking dataset.

Cache (any dataset kind)::

    mgvsr prepare --cache CACHE_DIR --kind reds --root /data/REDS --split train [--degradation BI]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from PIL import Image

from mgvsr.data.degrade import degrade_frames
from mgvsr.data.io import DataError, iter_video_frames, write_video
from mgvsr.data.sources import MANIFEST, list_videos

PREPARED_FORMAT = "mgvsr-prepared-v1"


def parse_size(text: Optional[str]) -> Optional[tuple[int, int]]:
    """``"320x180"`` (W x H) -> ``(180, 320)`` (H, W)."""
    if not text:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise DataError(f"--hr-size '{text}': expected WIDTHxHEIGHT such as 320x180") from None
    if w < 4 or h < 4:
        raise DataError(f"--hr-size '{text}': width and height must be >= 4")
    return h, w


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resize_frame(frame: np.ndarray, hw: Optional[tuple[int, int]], scale: int) -> np.ndarray:
    """Downsize to ``hw`` (antialiased bicubic, PIL); then crop so H and W are multiples of ``scale``."""
    if hw is not None and hw != frame.shape[:2]:
        h, w = hw
        if h > frame.shape[0] or w > frame.shape[1]:
            raise DataError(f"--hr-size {w}x{h} would upscale frames of {frame.shape[1]}x{frame.shape[0]}")
        frame = np.asarray(Image.fromarray(frame).resize((w, h), Image.BICUBIC))
    h, w = frame.shape[0] // scale * scale, frame.shape[1] // scale * scale
    return frame[:h, :w]


def frame_details(frames: np.ndarray) -> np.ndarray:
    """Texture score of each frame (T, H, W, 3) or of one frame (H, W, 3): mean absolute
    horizontal+vertical luma gradient (0-255 scale)."""
    y = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if y.ndim == 2:
        y = y[None]
    return np.abs(np.diff(y, axis=-1)).mean(axis=(-2, -1)) + np.abs(np.diff(y, axis=-2)).mean(axis=(-2, -1))


def detail(frames: np.ndarray) -> float:
    """Texture score of the clip's flattest frame (:func:`frame_details`). A fade from black scores
    ~0 even if its last frames are detailed."""
    return float(frame_details(frames).min())


def max_frame_change(frames: np.ndarray) -> float:
    """Largest mean absolute luma difference between consecutive frames (scene-cut detector)."""
    y = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return float(np.abs(np.diff(y, axis=0)).mean(axis=(1, 2)).max()) if len(y) > 1 else 0.0


@dataclass
class Chunk:
    """A candidate clip: ``frames`` (T, H, W, 3) of ``source`` starting at frame ``start``."""

    source: Path
    index: int
    start: int
    frames: Optional[np.ndarray]
    detail: float = 0.0
    change: float = 0.0
    name: str = ""
    # Set by ``stage``: files already written (relative to the staging folder) and the frame shape.
    staged: dict = field(default_factory=dict)
    shape: tuple = ()

    def stage(self, folder: Path, lr: str, codec: str, crf: int, scale: int) -> None:
        """Write this chunk's clip (and LR clip) into ``folder`` now and free its frames."""
        assert self.frames is not None
        self.name = self.name or f"{self.source.stem}_{self.index:05d}"
        ext = ".mkv" if codec == "ffv1" else ".mp4"
        self.staged["file"] = _write_clip(folder, f"{self.name}{ext}", self.frames, codec, crf)
        if lr != "none":
            lr_frames = degrade_frames(self.frames, lr, scale)
            self.staged["lr_file"] = _write_clip(folder, f"{self.name}_lr.mkv", lr_frames, "ffv1", 0)
        self.shape = self.frames.shape
        self.frames = None


def iter_chunks(path: Path, clip_len: int, every: int, hw: Optional[tuple[int, int]], scale: int,
                max_frames: int = 0) -> Iterator[Chunk]:
    """Stream ``path`` and yield every ``every``-th run of ``clip_len`` frames (resized), in order."""
    buf: list[np.ndarray] = []
    for i, frame in enumerate(iter_video_frames(path)):
        if max_frames and i >= max_frames:
            break
        k = i // clip_len
        if k % every:
            continue
        buf.append(resize_frame(frame, hw, scale))
        if len(buf) == clip_len:
            frames = np.stack(buf)
            buf = []
            yield Chunk(path, k, k * clip_len, frames, detail(frames[::4]), max_frame_change(frames))


def split_val(chunks: list[Chunk], val_clips: int) -> tuple[list[Chunk], list[Chunk]]:
    """Pick ``val_clips`` chunks spread evenly over the list; drop their direct neighbours from training."""
    if val_clips <= 0:
        return chunks, []
    if len(chunks) < val_clips + 1:
        raise DataError(f"only {len(chunks)} usable clips, need more than --val-clips {val_clips}")
    n = len(chunks)
    picks = sorted({int((j + 0.5) * n / val_clips) for j in range(val_clips)})
    val = [chunks[p] for p in picks]
    guard = {(c.source, c.index + d) for c in val for d in (-1, 0, 1)}
    train = [c for c in chunks if (c.source, c.index) not in guard]
    if not train:
        raise DataError("no training clips left after taking validation clips; lower --val-clips")
    return train, val


def _write_clip(out: Path, rel: str, frames: np.ndarray, codec: str, crf: int) -> str:
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp." + path.name)
    write_video(tmp, frames, codec=codec, crf=crf)
    os.replace(tmp, path)
    return rel


def write_prepared(out: Path, train: list[Chunk], val: list[Chunk], sources: list[dict], settings: dict,
                   lr: str, codec: str, crf: int, scale: int, credit: Optional[str] = None) -> Path:
    """Move (or write) the clip files into ``out/<split>/``, then write ``manifest.json`` last, atomically."""
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        manifest_path.unlink()
    ext = ".mkv" if codec == "ffv1" else ".mp4"
    staging = out / ".staging"
    entries = []
    for split, chunks in (("train", train), ("val", val)):
        for c in chunks:
            if not c.staged:
                c.stage(staging, lr, codec, crf, scale)
            t, h, w = c.shape[:3]
            entry = {"name": c.name, "split": split, "num_frames": int(t), "height": int(h), "width": int(w),
                     "source": c.source.name, "start_frame": int(c.start)}
            targets = {"file": f"{split}/{c.name}{ext}", "lr_file": f"{split}_lr_{lr}x{scale}/{c.name}.mkv"}
            for key, rel in c.staged.items():
                (out / targets[key]).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / rel, out / targets[key])
                entry[key] = targets[key]
            entries.append(entry)
    manifest = {"format": PREPARED_FORMAT, "sources": sources, "settings": settings, "scale": scale,
                "lr": lr, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "clips": entries}
    if credit:
        manifest["credit"] = credit
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, manifest_path)
    # Remove clip files of an earlier run into the same folder that this manifest does not list.
    listed = {out / e[k] for e in entries for k in ("file", "lr_file") if k in e}
    for folder in {p.parent for p in listed}:
        for f in folder.iterdir():
            if f.is_file() and f not in listed:
                f.unlink()
    if staging.is_dir():
        for f in staging.iterdir():
            f.unlink()
        staging.rmdir()
    return manifest_path


def prepare_videos(source: Path, out: Path, clip_len: int = 30, every: int = 1, hr_size: Optional[str] = None,
                   val_clips: int = 2, lr: str = "none", codec: str = "libx264", crf: int = 10, scale: int = 4,
                   max_cut_change: float = 30.0, min_detail: float = 0.0, max_frames: int = 0,
                   credit: Optional[str] = None, progress: bool = True) -> Path:
    """Library form of ``mgvsr prepare VIDEO --out DIR`` (see the module docstring)."""
    if clip_len < 1 or every < 1:
        raise DataError(f"--clip-len ({clip_len}) and --every ({every}) must be >= 1")
    hw = parse_size(hr_size)
    videos = list_videos(Path(source))
    chunks: list[Chunk] = []
    sources = []
    dropped = 0
    for path in videos:
        n_before = len(chunks)
        for c in iter_chunks(path, clip_len, every, hw, scale, max_frames):
            if (max_cut_change and c.change > max_cut_change) or c.detail < min_detail:
                dropped += 1
                continue
            c.stage(Path(out) / ".staging", lr, codec, crf, scale)  # keeps memory flat on long videos
            chunks.append(c)
        if progress:
            print(f"{path.name}: {len(chunks) - n_before} clips kept")
        sources.append({"path": str(path.resolve()), "sha256": sha256_file(path)})
    if not chunks:
        raise DataError(f"{source}: no usable clips (videos shorter than --clip-len {clip_len}, or all dropped)")
    train, val = split_val(chunks, val_clips)
    settings = {"clip_len": clip_len, "every": every, "hr_size": hr_size, "val_clips": val_clips, "lr": lr,
                "codec": codec, "crf": crf if codec == "libx264" else None, "scale": scale,
                "max_cut_change": max_cut_change, "min_detail": min_detail, "resize": "PIL bicubic (antialiased)",
                "dropped_clips": dropped}
    path = write_prepared(Path(out), train, val, sources, settings, lr, codec, crf, scale, credit)
    if progress:
        print(f"wrote {len(train)} train + {len(val)} val clips to {out} ({path.name} last)")
    return path


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", help="video file or folder of videos to turn into a training set")
    parser.add_argument("--out", help="output folder of the prepared dataset")
    parser.add_argument("--clip-len", type=int, default=30, help="frames per clip (default 30)")
    parser.add_argument("--every", type=int, default=1, help="keep only every k-th clip (default 1)")
    parser.add_argument("--hr-size", default=None, help="downsize HR frames to WxH, e.g. 320x180 (default: keep)")
    parser.add_argument("--val-clips", type=int, default=2, help="validation clips, spread over the video")
    parser.add_argument("--lr", choices=["none", "BI", "BD"], default="none",
                        help="store LR frames made with this degradation (default: made on the fly)")
    parser.add_argument("--codec", choices=["libx264", "ffv1"], default="libx264", help="HR clip codec")
    parser.add_argument("--crf", type=int, default=10, help="libx264 quality (lower = better, default 10)")
    parser.add_argument("--max-cut-change", type=float, default=30.0,
                        help="drop clips whose consecutive frames differ by more than this mean luma "
                             "(0-255) = scene cut; 0 disables (default 30)")
    parser.add_argument("--min-detail", type=float, default=0.0, help="drop clips flatter than this texture score")
    parser.add_argument("--max-frames", type=int, default=0, help="read at most this many frames per video")
    parser.add_argument("--credit", default=None, help="attribution text stored in the manifest")
    parser.add_argument("--cache", default=None, help="pack the dataset given by --kind/--root into this folder")
    parser.add_argument("--kind", choices=["reds", "vimeo", "vid4", "frames", "video", "prepared"])
    parser.add_argument("--root", help="dataset root for --cache")
    parser.add_argument("--split", default="train", help="dataset split for --cache")
    parser.add_argument("--degradation", choices=["BI", "BD"], default="BI")
    parser.add_argument("--lr-source", choices=["disk", "on_the_fly", "auto"],
                        help="for --cache: LR frames from disk or made from HR (default: per layout)")
    parser.add_argument("--gt-lmdb", help="for --cache: reds/vimeo from BasicSR's LMDB folders, the GT .lmdb")
    parser.add_argument("--lq-lmdb", help="for --cache: with --gt-lmdb, the LQ .lmdb folder")
    parser.add_argument("--scale", type=int, default=4)


def run(args: argparse.Namespace) -> int:
    if args.cache:
        from mgvsr.config import DatasetConfig
        from mgvsr.data.build import build_source, cache_origin
        from mgvsr.data.cache import write_cache

        if not args.kind or not args.root:
            raise DataError("--cache needs --kind and --root (the dataset to pack)")
        clip_len = args.clip_len if args.kind == "video" else 0
        cfg = DatasetConfig(kind=args.kind, root=args.root, split=args.split, degradation=args.degradation,
                            clip_len=clip_len, lr_source=args.lr_source, gt_lmdb=args.gt_lmdb,
                            lq_lmdb=args.lq_lmdb)
        source = build_source(cfg, args.scale)
        write_cache(source, Path(args.cache), cache_origin(cfg, args.scale), progress=True)
        print(f"packed {len(source)} clips of {source.description} into {args.cache}")
        return 0
    if not args.source or not args.out:
        raise DataError("give a video file/folder and --out DIR (or --cache DIR --kind K --root R)")
    prepare_videos(Path(args.source), Path(args.out), clip_len=args.clip_len, every=args.every,
                   hr_size=args.hr_size, val_clips=args.val_clips, lr=args.lr, codec=args.codec, crf=args.crf,
                   scale=args.scale, max_cut_change=args.max_cut_change, min_detail=args.min_detail,
                   max_frames=args.max_frames, credit=args.credit)
    return 0
