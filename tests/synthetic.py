"""Test fixtures: tiny synthetic datasets in every supported layout (no downloads).

Imported by the tests as ``import synthetic`` (pytest puts ``tests/`` on ``sys.path``).

Frames are smooth random textures that pan by one pixel per frame, so clips have real motion.
LR frames, when written, are made with the BI degradation of ``mgvsr.data.degrade``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from mgvsr.data.degrade import degrade_frames
from mgvsr.data.io import write_png, write_video


def smooth_clip(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 ``(T, H, W, 3)``: a smooth random texture panning diagonally by 1 px per frame."""
    rng = np.random.default_rng(seed)
    big_h, big_w = height + num_frames, width + num_frames
    coarse = (rng.random((max(2, big_h // 6), max(2, big_w // 6), 3)) * 255).astype(np.uint8)
    texture = np.asarray(Image.fromarray(coarse).resize((big_w, big_h), Image.BICUBIC))
    return np.stack([texture[t : t + height, t : t + width] for t in range(num_frames)])


def bi_lr(hr: np.ndarray, scale: int = 4) -> np.ndarray:
    return degrade_frames(hr, "BI", scale)


def _write_frames(folder: Path, frames: np.ndarray, pattern: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for t, f in enumerate(frames):
        write_png(folder / pattern.format(t), f)


def write_reds(root: Path, clips=("000", "001", "011"), num_frames: int = 8, size=(64, 64), with_lr: bool = True):
    for k, c in enumerate(clips):
        hr = smooth_clip(num_frames, *size, seed=k)
        _write_frames(root / "train_sharp" / c, hr, "{:08d}.png")
        if with_lr:
            _write_frames(root / "train_sharp_bicubic" / "X4" / c, bi_lr(hr), "{:08d}.png")
    return root


def write_vimeo(root: Path, seqs=("00001/0001", "00001/0002", "00002/0001"), test=("00002/0001",),
                size=(64, 64), lr_kind: Optional[str] = "BI"):
    for k, s in enumerate(seqs):
        hr = smooth_clip(7, *size, seed=10 + k)
        # Vimeo numbers frames im1..im7.
        _write_frames(root / "sequences" / s, np.concatenate([hr[:1], hr]), "im{}.png")
        (root / "sequences" / s / "im0.png").unlink()
        if lr_kind:
            lr = bi_lr(hr)
            _write_frames(root / f"sequences_{lr_kind}x4" / s, np.concatenate([lr[:1], lr]), "im{}.png")
            (root / f"sequences_{lr_kind}x4" / s / "im0.png").unlink()
    train = [s for s in seqs if s not in test]
    (root / "sep_trainlist.txt").write_text("\n".join(train) + "\n")
    (root / "sep_testlist.txt").write_text("\n".join(test) + "\n")
    return root


def write_vid4(root: Path, clips=("calendar", "city"), num_frames: int = 6, size=(48, 64), with_lr: bool = True):
    for k, c in enumerate(clips):
        hr = smooth_clip(num_frames, *size, seed=20 + k)
        _write_frames(root / "GT" / c, hr, "{:08d}.png")
        if with_lr:
            _write_frames(root / "BIx4" / c, bi_lr(hr), "{:08d}.png")
    return root


def write_frames(root: Path, clips=("a", "b"), num_frames: int = 6, size=(64, 64), with_lr: bool = False):
    """``root/hr/<clip>/*.png`` (and ``root/lr/<clip>``) when ``with_lr``, else ``root/<clip>/*.png``."""
    hr_root = root / "hr" if with_lr else root
    for k, c in enumerate(clips):
        hr = smooth_clip(num_frames, *size, seed=30 + k)
        _write_frames(hr_root / c, hr, "{:05d}.png")
        if with_lr:
            _write_frames(root / "lr" / c, bi_lr(hr), "{:05d}.png")
    return root


def write_videos(root: Path, names=("v1", "v2"), num_frames: int = 12, size=(64, 64), codec: str = "ffv1"):
    """One small video per name (lossless FFV1 in .mkv by default, or libx264 in .mp4)."""
    root.mkdir(parents=True, exist_ok=True)
    ext = ".mkv" if codec == "ffv1" else ".mp4"
    for k, n in enumerate(names):
        write_video(root / f"{n}{ext}", smooth_clip(num_frames, *size, seed=40 + k), codec=codec)
    return root
