"""BasicSR's LMDB datasets (REDS, Vimeo-90K) as a clip source.

BasicSR packs image folders into LMDB folders (``scripts/data_preparation/create_lmdb.py``)::

    train_sharp_with_val.lmdb/
        data.mdb        # the database: key -> the frame as PNG bytes
        lock.mdb        # LMDB's lock file (unused here: the database is opened read-only, unlocked)
        meta_info.txt   # one line per frame: "<key>.png (H,W,C) <PNG compression level>"

A key is the frame's path inside the packed folder without its extension: REDS ``000/00000000``
(clip ``000``), Vimeo-90K ``00001/0001/im1`` (clip ``00001/0001``). The clip is everything before the
last ``/``; a clip's frames are ordered by their trailing number, as in the folder layout, so an LMDB
dataset yields the same clips and frames as the folders it was packed from. GT and LQ live in two
LMDB folders with the same keys.

At construction, ``meta_info.txt`` alone is used to list clips and to check sizes (one size per
clip, LQ x scale = GT); then the stored PNG headers are checked against it (every frame for small
datasets, else the first frame of each clip). Frames read later are checked again when decoded.
The database is opened read-only, without locking or read-ahead (training reads frames at random),
lazily, once per process and folder (LMDB allows one handle per file and process; training and
validation may read the same folder); a process forked after that (a DataLoader worker) closes the
inherited handles and opens its own.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

import lmdb
import numpy as np
from PIL import Image

from mgvsr.data.io import DataError, natural_key
from mgvsr.data.sources import (
    FULL_HEADER_CHECK_LIMIT,
    ClipInfo,
    ClipSource,
    _select,
    reds_split,
    use_stored_lr,
)

DATA_FILE = "data.mdb"
META_INFO = "meta_info.txt"
_SHAPE = re.compile(r"^\((\d+),\s*(\d+)(?:,\s*(\d+))?\)$")

# Open environments of this process, by resolved folder path; _ENVS_PID is the process that opened them.
_ENVS: dict[str, lmdb.Environment] = {}
_ENVS_PID = os.getpid()


def open_environment(path: Path) -> lmdb.Environment:
    """This process's read-only handle on the LMDB folder ``path`` (opened on first use)."""
    global _ENVS_PID
    if _ENVS_PID != os.getpid():  # forked: the parent's handles must not be used (nor kept) here
        for env in _ENVS.values():
            env.close()
        _ENVS.clear()
        _ENVS_PID = os.getpid()
    key = str(Path(path).resolve())
    env = _ENVS.get(key)
    if env is None:
        try:
            env = lmdb.open(key, readonly=True, lock=False, readahead=False, meminit=False)
        except lmdb.Error as err:
            raise DataError(f"{path}: cannot open the LMDB ({err})") from None
        _ENVS[key] = env
    return env


def read_meta_info(path: Path) -> dict[str, tuple[int, int]]:
    """``meta_info.txt`` -> ``{key: (H, W)}`` in file order (a line is ``000/00000000.png (720,1280,3) 1``)."""
    if not path.is_file():
        raise DataError(f"{path}: meta_info.txt not found (BasicSR's create_lmdb.py writes it beside data.mdb)")
    shapes: dict[str, tuple[int, int]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        m = _SHAPE.match(fields[1]) if len(fields) >= 2 else None
        if m is None:
            raise DataError(f"{path}:{n}: expected '<key>.png (H,W,C) <compression>', got {line!r}")
        key = str(PurePosixPath(fields[0]).with_suffix(""))  # the key is the file name without ".png"
        if key in shapes:
            raise DataError(f"{path}:{n}: key '{key}' listed twice")
        shapes[key] = (int(m[1]), int(m[2]))
    if not shapes:
        raise DataError(f"{path}: empty (no frames listed)")
    return shapes


def group_clips(keys: Sequence[str], where: Path) -> dict[str, list[str]]:
    """``clip/frame`` keys -> ``{clip: [frame, ...]}``, clips and frames in natural order, no gaps."""
    clips: dict[str, list[str]] = {}
    for key in keys:
        clip, sep, frame = key.rpartition("/")
        if not sep:
            raise DataError(f"{where}: key '{key}' has no clip part ('clip/frame', e.g. 000/00000000): "
                            "not a video LMDB")
        clips.setdefault(clip, []).append(frame)
    out = {}
    for clip in sorted(clips, key=natural_key):
        frames = sorted(clips[clip], key=natural_key)
        numbers = [re.search(r"(\d+)$", f) for f in frames]
        if all(numbers):
            for prev, cur, frame in zip(numbers, numbers[1:], frames[1:]):
                if int(cur[1]) != int(prev[1]) + 1:
                    raise DataError(f"{where}: clip '{clip}': missing frame(s) between numbers {prev[1]} and "
                                    f"{cur[1]} (before key '{clip}/{frame}')")
        out[clip] = frames
    return out


class LmdbFolder:
    """One BasicSR LMDB folder (``data.mdb`` + ``meta_info.txt``): checked on creation, read through this
    process's handle (:func:`open_environment`), so it pickles as a plain path."""

    def __init__(self, path: Path, role: str):
        self.path = Path(path)
        self.role = role  # "GT" or "LQ", for messages
        if not self.path.is_dir():
            raise DataError(f"{self.path}: {role} LMDB folder not found")
        if not (self.path / DATA_FILE).is_file():
            raise DataError(f"{self.path / DATA_FILE}: not found ({role} LMDB folder without its database)")
        self.meta_path = self.path / META_INFO

    def get(self, keys: Sequence[str]) -> list[bytes]:
        """The stored bytes of ``keys``; a key absent from ``data.mdb`` is an error naming it."""
        out = []
        with open_environment(self.path).begin(write=False) as txn:
            for key in keys:
                value = txn.get(key.encode("ascii"))
                if value is None:
                    raise DataError(f"{self.path}: key '{key}' is listed in {META_INFO} but absent from {DATA_FILE}")
                out.append(value)
        return out

    def _image(self, key: str, data: bytes) -> Image.Image:
        try:
            return Image.open(io.BytesIO(data))
        except Exception as err:  # PIL raises several types for bad data
            raise DataError(f"{self.path}: key '{key}': not a readable image ({err})") from None

    def _check_size(self, key: str, got: tuple[int, int], want: tuple[int, int]) -> None:
        if got != want:
            raise DataError(f"{self.path}: key '{key}': stored frame is {got} (H, W) but {META_INFO} says {want}")

    def check_headers(self, keys: Sequence[str], shapes: dict[str, tuple[int, int]]) -> None:
        """Each key is stored and its image header agrees with ``meta_info.txt`` (``shapes``; no decoding)."""
        for key, data in zip(keys, self.get(keys)):
            w, h = self._image(key, data).size
            self._check_size(key, (h, w), shapes[key])

    def read(self, keys: Sequence[str], hw: tuple[int, int]) -> np.ndarray:
        """Decode ``keys`` to ``uint8 (T, H, W, 3)`` RGB; every frame must be ``hw`` (its meta_info size)."""
        frames = []
        for key, data in zip(keys, self.get(keys)):
            im = self._image(key, data)
            try:
                im.load()
                if im.mode != "RGB":
                    im = im.convert("RGB")
            except Exception as err:
                raise DataError(f"{self.path}: key '{key}': corrupt image ({err})") from None
            frame = np.asarray(im, dtype=np.uint8)
            self._check_size(key, frame.shape[:2], hw)
            frames.append(frame)
        return np.stack(frames)


class LmdbSource(ClipSource):
    """Clips read from a GT LMDB folder and, optionally, an LQ one with the same keys."""

    def __init__(self, clips: list[ClipInfo], frames: list[list[str]], gt: LmdbFolder, lq: Optional[LmdbFolder],
                 scale: int, degradation: str, description: str):
        super().__init__(clips, scale, degradation, description)
        self.frames = frames  # frame names per clip; the key is f"{clip}/{frame}"
        self.gt = gt
        self.lq = lq

    def _keys(self, i: int, idx: Sequence[int]) -> list[str]:
        name, frames = self.clips[i].name, self.frames[i]
        return [f"{name}/{frames[j]}" for j in idx]

    def hr_frames(self, i: int, idx: Sequence[int]) -> np.ndarray:
        return self.gt.read(self._keys(i, idx), self.clips[i].hr_hw)

    def lr_frames(self, i: int, idx: Sequence[int]) -> Optional[np.ndarray]:
        if self.lq is None:
            return None
        return self.lq.read(self._keys(i, idx), self.clips[i].lr_hw)


Shapes = dict[str, tuple[int, int]]


def _clip_info(name: str, frames: list[str], gt: LmdbFolder, gt_meta: Shapes, lq: Optional[LmdbFolder],
               lq_meta: Shapes, scale: int) -> ClipInfo:
    """Checks from the ``meta_info.txt`` files: one frame size per clip, same frames in LQ, LQ x scale = GT."""
    keys = [f"{name}/{f}" for f in frames]
    hr_hw = gt_meta[keys[0]]
    for key in keys[1:]:
        if gt_meta[key] != hr_hw:
            raise DataError(f"{gt.meta_path}: '{key}' is {gt_meta[key]} (H, W) but '{keys[0]}' is {hr_hw}")
    lr_hw = (hr_hw[0] // scale, hr_hw[1] // scale)
    if min(lr_hw) < 1:
        raise DataError(f"{gt.meta_path}: '{keys[0]}' {hr_hw} is smaller than the scale {scale}")
    if lq is not None:
        for key in keys:
            got = lq_meta.get(key)
            if got is None:
                raise DataError(f"{lq.meta_path}: key '{key}' of the GT LMDB ({gt.path}) is not in the LQ LMDB")
            if got != lr_hw:
                raise DataError(f"{lq.meta_path}: '{key}' is {got} (H, W), but GT {hr_hw} ({gt.meta_path}) / "
                                f"scale {scale} = {lr_hw}")
    return ClipInfo(name, len(frames), hr_hw, lr_hw)


def _check_gt_covers_lq(gt: LmdbFolder, gt_clips: dict[str, list[str]], lq: LmdbFolder, lq_meta: Shapes,
                        names: list[str]) -> None:
    """Every LQ frame of a selected clip has its GT frame (BasicVSR/IconVSR supervise every frame)."""
    lq_clips = group_clips(list(lq_meta), lq.meta_path)
    for name in names:
        have = set(gt_clips[name])
        extra = [f for f in lq_clips.get(name, []) if f not in have]
        if not extra:
            continue
        hint = ""
        if gt_clips[name] == ["im4"]:
            hint = (" (this GT LMDB holds only the centre frame im4, like BasicSR's vimeo90k_train_GT_only4th.lmdb;"
                    " recurrent models need a GT LMDB of all 7 frames)")
        raise DataError(f"{gt.meta_path}: clip '{name}' has {len(gt_clips[name])} GT frames but the LQ LMDB "
                        f"({lq.path}) has {len(lq_clips[name])}; GT key '{name}/{extra[0]}' is missing{hint}")


def _vimeo_split(names: list[str], root: Path, split: str) -> list[str]:
    """``all`` = every clip of the LMDB; ``train`` / ``test`` = those of ``root/sep_{split}list.txt``."""
    if split == "all":
        return names
    lists = {"train": "sep_trainlist.txt", "test": "sep_testlist.txt"}
    if split not in lists:
        raise DataError(f"unknown Vimeo-90K LMDB split '{split}'; choose one of {list(lists) + ['all']}")
    list_file = root / lists[split]
    if not list_file.is_file():
        raise DataError(f"{list_file}: Vimeo-90K list file not found (put it in the dataset root, or use "
                        f"split: all for every clip of the LMDB)")
    wanted = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    have = set(names)
    missing = [c for c in wanted if c not in have]
    if missing:
        raise DataError(f"{list_file}: {len(missing)} listed clips are not in the GT LMDB, e.g. {missing[:3]}")
    return wanted


def lmdb_source(kind: str, root: Path, gt_path: Path, lq_path: Optional[Path], split: str, degradation: str,
                clips: Optional[Sequence[str]], scale: int, lr_source: str) -> LmdbSource:
    """A REDS (``kind='reds'``) or Vimeo-90K (``'vimeo'``) dataset from BasicSR's GT and LQ LMDB folders.

    ``root`` holds Vimeo-90K's list files (splits ``train`` / ``test``); LQ is read from ``lq_path``
    following ``lr_source`` (see :func:`~mgvsr.data.sources.use_stored_lr`).
    """
    if kind not in ("reds", "vimeo"):
        raise DataError(f"{gt_path}: LMDB folders are read for kind reds or vimeo, not '{kind}'")
    gt = LmdbFolder(gt_path, "GT")
    gt_meta = read_meta_info(gt.meta_path)
    gt_clips = group_clips(list(gt_meta), gt.meta_path)
    if kind == "reds":
        names = reds_split(list(gt_clips), split, str(gt_path))
    else:
        names = _vimeo_split(list(gt_clips), root, split)
    names = _select(names, clips, str(gt.meta_path))
    if not names:
        raise DataError(f"{gt.meta_path}: no clips in split '{split}'")
    expected = str(lq_path) if lq_path is not None else f"{gt_path} (no LQ LMDB given: set lq_lmdb)"
    lq, lq_meta = None, {}
    if use_stored_lr(lr_source, lq_path is not None, expected, degradation):
        lq = LmdbFolder(lq_path, "LQ")
        lq_meta = read_meta_info(lq.meta_path)
        _check_gt_covers_lq(gt, gt_clips, lq, lq_meta, names)
    infos = [_clip_info(n, gt_clips[n], gt, gt_meta, lq, lq_meta, scale) for n in names]
    # The stored frames against meta_info.txt: all of a small dataset, else the first of each clip.
    full = sum(c.num_frames for c in infos) <= FULL_HEADER_CHECK_LIMIT
    for name in names:
        keys = [f"{name}/{f}" for f in (gt_clips[name] if full else gt_clips[name][:1])]
        gt.check_headers(keys, gt_meta)
        if lq is not None:
            lq.check_headers(keys, lq_meta)
    label = {"reds": "REDS", "vimeo": "Vimeo-90K"}[kind]
    return LmdbSource(infos, [gt_clips[n] for n in names], gt, lq, scale, degradation,
                      f"{label} LMDB {gt_path} [{split}]")
