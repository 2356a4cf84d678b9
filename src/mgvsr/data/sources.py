"""Datasets of clips: each clip has HR frames and matching LR frames (read from disk or degraded on the fly).

Layouts (``DatasetConfig.kind``):

* ``reds``: ``train_sharp/000/00000000.png`` and ``train_sharp_bicubic/X4/000/00000000.png``.
  Splits: ``train`` = all clips except REDS4 (000, 011, 015, 020), ``REDS4`` = those four, ``all``.
  BasicSR's alternative ("official") partition regroups the 30 REDS *validation* clips into the same
  folders, renamed 240..269 (``scripts/regroup_reds_dataset.py``); then ``train_official`` = all clips
  except 240..269, ``REDSofficial`` = 240..269 and ``REDSofficial4`` = 240, 241, 246, 257 (BasicSR's
  ``meta_info_REDSofficial4_test_GT.txt``; called REDSval4 in some papers).
* ``vimeo``: Vimeo-90K septuplets ``sequences/00001/0001/im1..7.png`` listed by ``sep_trainlist.txt``
  (split ``train``) or ``sep_testlist.txt`` (``test``); LR from ``sequences_BIx4`` / ``sequences_BDx4``
  (by ``degradation``).
* ``vid4``: ``GT/<clip>/*.png`` with LR in ``BIx4/<clip>`` or ``BDx4/<clip>``.
* ``reds`` / ``vimeo`` may instead come from BasicSR's LMDB folders (``mgvsr.data.lmdb``).
* ``frames``: ``root/<clip>/*.png|jpg``; LR from a sibling ``lr/<clip>`` folder when present
  (either ``root/hr`` + ``root/lr`` or ``root`` + ``root/../lr``).
* ``video``: a video file or a folder of them (mp4/avi/mkv/mov/webm); each video is one clip, or is
  split into clips of ``clip_len`` frames. Decoded once per process into RAM.
* ``prepared``: what ``mgvsr prepare`` writes (``manifest.json`` + one video per clip per split).

Where LR frames come from is ``DatasetConfig.lr_source`` (resolved per layout in ``data/build.py``):
``disk`` reads the stored LR and reports a missing LR folder as an error naming it, ``on_the_fly``
always degrades the HR frames, ``auto`` reads stored LR when present and degrades otherwise.

Frame counts and sizes are read from the data. LR made on the fly for training crops is the
degradation of the HR crop itself (``mgvsr.data.degrade.degrade``); whole clips (validation, cache)
degrade whole frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mgvsr.data.degrade import degrade_frames
from mgvsr.data.io import (
    VIDEO_EXTS,
    DataError,
    image_size,
    list_images,
    natural_key,
    read_images,
    read_json_file,
    read_video,
    video_info,
)

REDS4 = ("000", "011", "015", "020")
REDS_OFFICIAL = tuple(f"{i:03d}" for i in range(240, 270))
REDS_OFFICIAL4 = ("240", "241", "246", "257")
# Check every frame header when a dataset has at most this many frames, else the first of each clip.
FULL_HEADER_CHECK_LIMIT = 5000


@dataclass
class ClipInfo:
    """One clip: ``num_frames`` frames of HR size ``hr_hw`` and LR size ``lr_hw`` (``hr // scale``)."""

    name: str
    num_frames: int
    hr_hw: tuple[int, int]
    lr_hw: tuple[int, int]


class ClipSource:
    """Base class: a list of :class:`ClipInfo` plus frame readers.

    Subclasses implement :meth:`hr_frames` and, when LR is stored, :meth:`lr_frames`
    (returning None means "degrade on the fly"). Readers take frame indices and return
    ``uint8 (T, H, W, 3)``; HR is cropped to ``scale * lr_hw`` when the frame size is not divisible.
    """

    def __init__(self, clips: list[ClipInfo], scale: int, degradation: str, description: str):
        if not clips:
            raise DataError(f"{description}: no clips found")
        self.clips = clips
        self.scale = scale
        self.degradation = degradation
        self.description = description

    def __len__(self) -> int:
        return len(self.clips)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description}, {len(self.clips)} clips)"

    # -- readers (override) ----------------------------------------------------------------------
    def hr_frames(self, i: int, idx: Sequence[int]) -> np.ndarray:
        raise NotImplementedError

    def lr_frames(self, i: int, idx: Sequence[int]) -> Optional[np.ndarray]:
        return None

    # -- derived -------------------------------------------------------------------------------
    def _hr_cropped(self, i: int, idx: Sequence[int]) -> np.ndarray:
        h, w = self.clips[i].lr_hw
        return self.hr_frames(i, idx)[:, : h * self.scale, : w * self.scale]

    def read_clip(self, i: int, idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Whole frames ``(lr (T,h,w,3), hr (T,s*h,s*w,3))``."""
        hr = self._hr_cropped(i, idx)
        lr = self.lr_frames(i, idx)
        if lr is None:
            lr = degrade_frames(hr, self.degradation, self.scale)
        return lr, hr

    def read_crop_raw(self, i: int, idx: Sequence[int], top: int, left: int,
                      size: int) -> tuple[Optional[np.ndarray], np.ndarray]:
        """Like :meth:`read_crop`, but LR is None when it must be made on the fly (callers batch that)."""
        s = self.scale
        hr = self.hr_frames(i, idx)[:, top * s : (top + size) * s, left * s : (left + size) * s]
        lr = self.lr_frames(i, idx)
        if lr is not None:
            lr = lr[:, top : top + size, left : left + size]
        return lr, hr

    def read_crop(self, i: int, idx: Sequence[int], top: int, left: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """LR crop ``[top:top+size, left:left+size]`` and the exactly aligned HR crop (scale x)."""
        lr, hr = self.read_crop_raw(i, idx, top, left, size)
        if lr is None:
            lr = degrade_frames(hr, self.degradation, self.scale)
        return lr, hr


# --------------------------------------------------------------------------------------------------
# Image-folder sources (REDS, Vimeo-90K, Vid4, plain frame folders)
# --------------------------------------------------------------------------------------------------


class ImageFolderSource(ClipSource):
    """Clips given as lists of image files (LR lists optional)."""

    def __init__(
        self,
        names: list[str],
        hr_files: list[list[Path]],
        lr_files: Optional[list[list[Path]]],
        scale: int,
        degradation: str,
        description: str,
    ):
        total = sum(len(f) for f in hr_files)
        full = total <= FULL_HEADER_CHECK_LIMIT
        clips = []
        for k, (name, files) in enumerate(zip(names, hr_files)):
            lr = lr_files[k] if lr_files is not None else None
            clips.append(_check_clip(name, files, lr, scale, full))
        super().__init__(clips, scale, degradation, description)
        self.hr_files = hr_files
        self.lr_files = lr_files

    def hr_frames(self, i: int, idx: Sequence[int]) -> np.ndarray:
        return read_images([self.hr_files[i][j] for j in idx])

    def lr_frames(self, i: int, idx: Sequence[int]) -> Optional[np.ndarray]:
        if self.lr_files is None:
            return None
        return read_images([self.lr_files[i][j] for j in idx])


def _check_clip(name: str, hr: list[Path], lr: Optional[list[Path]], scale: int, full: bool) -> ClipInfo:
    """Cheap checks (headers only): equal frame lists, consistent sizes, LR * scale == HR."""
    check = hr if full else hr[:1]
    hr_hw = image_size(hr[0])
    for p in check[1:]:
        if image_size(p) != hr_hw:
            raise DataError(f"{p}: size {image_size(p)} differs from {hr[0]} {hr_hw} (H, W)")
    lr_hw = (hr_hw[0] // scale, hr_hw[1] // scale)
    if lr is not None:
        if len(lr) != len(hr):
            hr_names = {p.name for p in hr}
            lr_names = {p.name for p in lr}
            diff = sorted(hr_names ^ lr_names, key=natural_key)[:3]
            raise DataError(
                f"clip '{name}': {len(hr)} HR frames ({hr[0].parent}) but {len(lr)} LR frames "
                f"({lr[0].parent}); differing: {diff}"
            )
        got = image_size(lr[0])
        for p in (lr if full else lr[:1])[1:]:
            if image_size(p) != got:
                raise DataError(f"{p}: size {image_size(p)} differs from {lr[0]} {got} (H, W)")
        if got != lr_hw:
            raise DataError(
                f"{lr[0]}: LR size {got} (H, W) does not match HR {hr[0]} {hr_hw} / {scale} = {lr_hw}"
            )
    if min(lr_hw) < 1:
        raise DataError(f"{hr[0]}: frame {hr_hw} is smaller than the scale {scale}")
    return ClipInfo(name, len(hr), hr_hw, lr_hw)


LR_SOURCES = ("disk", "on_the_fly", "auto")


def use_stored_lr(lr_source: str, present: bool, expected: str, degradation: str) -> bool:
    """Whether to read stored LR frames; with ``disk``, missing LR (``expected`` says where) is an error."""
    if lr_source not in LR_SOURCES:
        raise DataError(f"unknown lr_source {lr_source!r}; choose one of {list(LR_SOURCES)}")
    if lr_source == "on_the_fly":
        return False
    if present:
        return True
    if lr_source == "disk":
        raise DataError(f"{expected}: LR frames not found; set lr_source: on_the_fly to make {degradation} LR "
                        f"from the HR frames instead")
    return False


def _select(names: list[str], wanted: Optional[Sequence[str]], where: str) -> list[str]:
    if wanted is None:
        return names
    have, want = set(names), set(wanted)
    missing = [c for c in wanted if c not in have]
    if missing:
        raise DataError(f"{where}: clips not found: {missing}")
    return [c for c in names if c in want]


def _subdirs(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    return sorted((p.name for p in folder.iterdir() if p.is_dir()), key=natural_key)


def reds_split(names: list[str], split: str, where: str) -> list[str]:
    """The clip names of a REDS ``split`` (REDS4, BasicSR's official partition, ...) among ``names``."""
    splits = {
        "train": [c for c in names if c not in REDS4],
        "REDS4": [c for c in names if c in REDS4],
        "all": names,
        "train_official": [c for c in names if c not in REDS_OFFICIAL],
        "REDSofficial": [c for c in names if c in REDS_OFFICIAL],
        "REDSofficial4": [c for c in names if c in REDS_OFFICIAL4],
    }
    if split not in splits:
        raise DataError(f"{where}: unknown REDS split '{split}'; choose one of {list(splits)}")
    return splits[split]


def reds_source(root: Path, split: str, degradation: str, clips, scale: int,
                lr_source: str = "disk") -> ImageFolderSource:
    hr_root = root / "train_sharp"
    lr_root = root / "train_sharp_bicubic" / f"X{scale}"
    names = _select(reds_split(_subdirs(hr_root), split, str(root)), clips, str(hr_root))
    if degradation != "BI" and lr_source == "disk":  # REDS ships bicubic LR only
        raise DataError(f"{lr_root}: REDS LR frames are bicubic (BI); set lr_source: on_the_fly to make "
                        f"{degradation} LR from the HR frames")
    present = degradation == "BI" and lr_root.is_dir()
    use_lr = use_stored_lr(lr_source, present, f"{lr_root} (REDS LR folder)", degradation)
    hr = [list_images(hr_root / c) for c in names]
    lr = [list_images(lr_root / c) for c in names] if use_lr else None
    return ImageFolderSource(names, hr, lr, scale, degradation, f"REDS {root} [{split}]")


def vimeo_source(root: Path, split: str, degradation: str, clips, scale: int,
                 lr_source: str = "disk") -> ImageFolderSource:
    lists = {"train": "sep_trainlist.txt", "test": "sep_testlist.txt"}
    if split not in lists:
        raise DataError(f"{root}: unknown Vimeo-90K split '{split}'; choose one of {list(lists)}")
    list_file = root / lists[split]
    if not list_file.is_file():
        raise DataError(f"{list_file}: Vimeo-90K list file not found")
    names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"{list_file}: empty list")
    names = _select(names, clips, str(list_file))
    hr_root = root / "sequences"
    lr_root = root / f"sequences_{degradation}x{scale}"
    use_lr = use_stored_lr(lr_source, lr_root.is_dir(), f"{lr_root} (Vimeo-90K LR folder)", degradation)
    hr = [list_images(hr_root / c) for c in names]
    lr = [list_images(lr_root / c) for c in names] if use_lr else None
    return ImageFolderSource(names, hr, lr, scale, degradation, f"Vimeo-90K {root} [{split}]")


def vid4_source(root: Path, degradation: str, clips, scale: int, lr_source: str = "disk") -> ImageFolderSource:
    hr_root = root / "GT"
    lr_root = root / f"{degradation}x{scale}"
    names = _select(_subdirs(hr_root), clips, str(hr_root))
    use_lr = use_stored_lr(lr_source, lr_root.is_dir(), f"{lr_root} (Vid4 LR folder)", degradation)
    hr = [list_images(hr_root / c) for c in names]
    lr = [list_images(lr_root / c) for c in names] if use_lr else None
    return ImageFolderSource(names, hr, lr, scale, degradation, f"Vid4 {root}")


def frames_source(root: Path, degradation: str, clips, scale: int, lr_source: str = "auto") -> ImageFolderSource:
    if (root / "hr").is_dir():
        hr_root, lr_root = root / "hr", root / "lr"
    else:
        hr_root, lr_root = root, root.parent / "lr"
    names = [c for c in _subdirs(hr_root) if not (hr_root == root and c == "lr")]
    if not names:
        raise DataError(f"{hr_root}: empty folder (expected one sub-folder of frames per clip)")
    names = _select(names, clips, str(hr_root))
    present = lr_root.is_dir() and lr_root != hr_root
    use_lr = use_stored_lr(lr_source, present, f"{lr_root} (LR frames folder)", degradation)
    hr = [list_images(hr_root / c) for c in names]
    lr = [list_images(lr_root / c) for c in names] if use_lr else None
    return ImageFolderSource(names, hr, lr, scale, degradation, f"frames {root}")


# --------------------------------------------------------------------------------------------------
# Video sources (plain video files, prepared datasets)
# --------------------------------------------------------------------------------------------------


@dataclass
class VideoSegment:
    path: Path
    start: int
    length: int


class VideoSource(ClipSource):
    """Clips that are frame ranges of video files; each file is decoded once per process into RAM."""

    def __init__(self, names: list[str], segments: list[VideoSegment], hw: list[tuple[int, int]], scale: int,
                 degradation: str, description: str, lr_segments: Optional[list[VideoSegment]] = None):
        clips = [ClipInfo(n, s.length, x, (x[0] // scale, x[1] // scale)) for n, s, x in zip(names, segments, hw)]
        super().__init__(clips, scale, degradation, description)
        self.segments = segments
        self.lr_segments = lr_segments
        self._decoded: dict[str, np.ndarray] = {}

    def __getstate__(self):  # do not ship decoded frames to worker processes
        state = self.__dict__.copy()
        state["_decoded"] = {}
        return state

    def _video(self, path: Path) -> np.ndarray:
        key = str(path)
        if key not in self._decoded:
            self._decoded[key] = read_video(path)
        return self._decoded[key]

    def _segment(self, seg: VideoSegment, i: int, idx: Sequence[int]) -> np.ndarray:
        frames = self._video(seg.path)
        if seg.start + seg.length > len(frames):
            raise DataError(
                f"{seg.path}: truncated video: clip '{self.clips[i].name}' needs frames up to "
                f"{seg.start + seg.length - 1}, decoded {len(frames)}"
            )
        return frames[seg.start + np.asarray(idx)]

    def hr_frames(self, i: int, idx: Sequence[int]) -> np.ndarray:
        return self._segment(self.segments[i], i, idx)

    def lr_frames(self, i: int, idx: Sequence[int]) -> Optional[np.ndarray]:
        if self.lr_segments is None:
            return None
        lr = self._segment(self.lr_segments[i], i, idx)
        if lr.shape[1:3] != self.clips[i].lr_hw:
            raise DataError(f"{self.lr_segments[i].path}: LR size {lr.shape[1:3]} != HR / {self.scale} "
                            f"= {self.clips[i].lr_hw}")
        return lr


def list_videos(root: Path) -> list[Path]:
    if root.is_file():
        if root.suffix.lower() not in VIDEO_EXTS:
            raise DataError(f"{root}: not a video file ({', '.join(VIDEO_EXTS)})")
        return [root]
    if not root.is_dir():
        raise DataError(f"{root}: video file or folder not found")
    files = sorted((p for p in root.iterdir() if p.suffix.lower() in VIDEO_EXTS), key=lambda p: natural_key(p.name))
    if not files:
        raise DataError(f"{root}: empty folder (no video files {', '.join(VIDEO_EXTS)})")
    return files


def video_source(root: Path, degradation: str, clips, scale: int, clip_len: int,
                 lr_source: str = "on_the_fly") -> VideoSource:
    use_stored_lr(lr_source, False, f"{root} (kind 'video' stores no LR frames)", degradation)
    names, segments, hw = [], [], []
    for path in list_videos(root):
        n, h, w = video_info(path)
        if clip_len <= 0:
            names.append(path.stem)
            segments.append(VideoSegment(path, 0, n))
            hw.append((h, w))
            continue
        if n < clip_len:
            raise DataError(f"{path}: only {n} frames, fewer than clip_len={clip_len}")
        for k in range(n // clip_len):
            names.append(f"{path.stem}_{k:04d}")
            segments.append(VideoSegment(path, k * clip_len, clip_len))
            hw.append((h, w))
    seen: dict[str, Path] = {}
    for name, seg in zip(names, segments):
        if name in seen and seen[name] != seg.path:
            raise DataError(f"{seg.path} and {seen[name]}: two videos give the clip name '{name}'; rename one")
        seen[name] = seg.path
    keep = _select(names, clips, str(root))
    position = {n: k for k, n in enumerate(names)}
    sel = [position[c] for c in keep]
    return VideoSource(keep, [segments[k] for k in sel], [hw[k] for k in sel], scale, degradation, f"video {root}")


MANIFEST = "manifest.json"


def read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    manifest = read_json_file(path, "manifest not found (build the dataset with `mgvsr prepare`)")
    for key in ("format", "clips"):
        if key not in manifest:
            raise DataError(f"{path}: missing key '{key}'")
    if manifest["format"] != "mgvsr-prepared-v1":
        raise DataError(f"{path}: unknown format {manifest['format']!r} (expected 'mgvsr-prepared-v1')")
    return manifest


def prepared_source(root: Path, split: str, degradation: str, clips, scale: int,
                    lr_source: str = "auto") -> VideoSource:
    manifest = read_manifest(root)
    entries = manifest["clips"]
    splits = sorted({c["split"] for c in entries})
    if split != "all" and split not in splits:
        raise DataError(f"{root / MANIFEST}: no clips in split '{split}'; splits: {splits + ['all']}")
    entries = [c for c in entries if split == "all" or c["split"] == split]
    keep = set(_select([c["name"] for c in entries], clips, str(root / MANIFEST)))
    # Stored LR frames are used when they were made with the requested degradation.
    present = manifest.get("lr") == degradation and all("lr_file" in c for c in entries)
    stored = f"{root / MANIFEST} (stored LR: {manifest.get('lr')}; `mgvsr prepare --lr {degradation}` stores it)"
    use_lr = use_stored_lr(lr_source, present, stored, degradation)
    names, segments, hw, lr_segments = [], [], [], []
    for c in entries:
        if c["name"] not in keep:
            continue
        path = root / c["file"]
        if not path.is_file():
            raise DataError(f"{path}: clip file listed in {root / MANIFEST} is missing")
        names.append(c["name"])
        segments.append(VideoSegment(path, 0, int(c["num_frames"])))
        hw.append((int(c["height"]), int(c["width"])))
        if use_lr:
            lr_path = root / c["lr_file"]
            if not lr_path.is_file():
                raise DataError(f"{lr_path}: LR clip file listed in {root / MANIFEST} is missing")
            lr_segments.append(VideoSegment(lr_path, 0, int(c["num_frames"])))
    return VideoSource(names, segments, hw, scale, degradation, f"prepared {root} [{split}]",
                       lr_segments=lr_segments if use_lr else None)
