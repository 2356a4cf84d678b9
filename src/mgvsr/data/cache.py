"""Compact uint8 cache: one ``.npy`` per clip for HR and one for LR, read through memory maps.

Layout of a cache folder::

    cache.json          # {"format", "source", "scale", "degradation", "clips": [{name, num_frames, hr, lr}]}
    <k>_hr.npy          # uint8 (T, H, W, 3), H and W multiples of scale
    <k>_lr.npy          # uint8 (T, H/scale, W/scale, 3)

Training reads only the crop it needs straight from the memory map, so no PNG/H.264 decoding happens
in the hot loop. Maps are opened lazily in each process (DataLoader workers open their own).
``cache.json`` is written last, so an interrupted build never looks valid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mgvsr.data.io import DataError, read_json_file
from mgvsr.data.sources import ClipInfo, ClipSource

CACHE_INDEX = "cache.json"
CACHE_FORMAT = "mgvsr-cache-v1"
# At most this many clips' memory maps stay open per process (Linux allows ~65k maps in all).
MAX_OPEN_MAPS = 2048
# open_cache reads the .npy headers of at most this many clips (the rest: existence only).
HEADER_CHECK_CLIPS = 1000


class ArraySource(ClipSource):
    """Clips held as uint8 arrays: memory-mapped ``.npy`` files (a cache) or arrays in RAM."""

    def __init__(self, clips: list[ClipInfo], scale: int, degradation: str, description: str,
                 files: Optional[list[tuple[Path, Path]]] = None,
                 arrays: Optional[list[tuple[np.ndarray, np.ndarray]]] = None):
        super().__init__(clips, scale, degradation, description)
        self.files = files
        self._arrays = arrays
        self._maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_maps"] = {}  # memory maps are reopened lazily in each process
        return state

    def _pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is not None:
            return self._arrays[i]
        assert self.files is not None
        pair = self._maps.get(i)
        if pair is None:
            if len(self._maps) >= MAX_OPEN_MAPS:
                self._maps.pop(next(iter(self._maps)))  # close the oldest
            hr, lr = self.files[i]
            pair = (np.load(hr, mmap_mode="r"), np.load(lr, mmap_mode="r"))
            self._maps[i] = pair
        return pair

    def hr_frames(self, i: int, idx: Sequence[int]) -> np.ndarray:
        return np.asarray(self._pair(i)[0][np.asarray(idx)])

    def lr_frames(self, i: int, idx: Sequence[int]) -> np.ndarray:
        return np.asarray(self._pair(i)[1][np.asarray(idx)])

    def read_crop_raw(self, i: int, idx: Sequence[int], top: int, left: int, size: int):
        s = self.scale
        hr_all, lr_all = self._pair(i)
        idx = np.asarray(idx)
        hr = np.stack([hr_all[j, top * s : (top + size) * s, left * s : (left + size) * s] for j in idx])
        lr = np.stack([lr_all[j, top : top + size, left : left + size] for j in idx])
        return lr, hr


def load_into_memory(source: ClipSource) -> ArraySource:
    """Decode every clip once (LR degraded on whole frames when not stored) and keep it in RAM."""
    arrays = []
    for i, c in enumerate(source.clips):
        lr, hr = source.read_clip(i, range(c.num_frames))
        arrays.append((hr, lr))
    return ArraySource(source.clips, source.scale, source.degradation, f"in-memory {source.description}",
                       arrays=arrays)


def write_cache(source: ClipSource, out_dir: Path, origin: dict, progress: bool = False) -> Path:
    """Pack every clip of ``source`` into ``out_dir``; ``origin`` (kind, root, split, ...) goes into the index."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / CACHE_INDEX
    if index_path.exists():
        index_path.unlink()  # invalid until rewritten at the end
    entries = []
    it = range(len(source.clips))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="cache", unit="clip")
    for i in it:
        c = source.clips[i]
        lr, hr = source.read_clip(i, range(c.num_frames))
        for suffix, arr in (("hr", hr), ("lr", lr)):
            tmp = out_dir / f"{i:06d}_{suffix}.tmp.npy"
            np.save(tmp, np.ascontiguousarray(arr, dtype=np.uint8))
            os.replace(tmp, out_dir / f"{i:06d}_{suffix}.npy")
        entries.append({"name": c.name, "num_frames": c.num_frames, "hr": list(hr.shape), "lr": list(lr.shape),
                        "hr_file": f"{i:06d}_hr.npy", "lr_file": f"{i:06d}_lr.npy"})
    index = {"format": CACHE_FORMAT, "source": origin, "scale": source.scale,
             "degradation": source.degradation, "clips": entries}
    tmp = out_dir / (CACHE_INDEX + ".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, index_path)
    return out_dir


def open_cache(cache_dir: Path, expect: Optional[dict] = None, clips: Optional[Sequence[str]] = None) -> ArraySource:
    """Open a cache written by :func:`write_cache`. ``expect`` keys (e.g. kind, split) must match its origin."""
    cache_dir = Path(cache_dir)
    index_path = cache_dir / CACHE_INDEX
    index = read_json_file(index_path, "cache index not found (build it with `mgvsr prepare --cache`)")
    if index.get("format") != CACHE_FORMAT:
        raise DataError(f"{index_path}: unknown format {index.get('format')!r} (expected {CACHE_FORMAT!r})")
    for key, value in (expect or {}).items():
        got = index["source"].get(key) if key != "degradation" else index["degradation"]
        if got != value:
            raise DataError(f"{index_path}: cache was built with {key}={got!r}, but the dataset asks for {value!r}")
    scale = int(index["scale"])
    infos, files = [], []
    for e in index["clips"]:
        if clips is not None and e["name"] not in clips:
            continue
        hr_path, lr_path = cache_dir / e["hr_file"], cache_dir / e["lr_file"]
        for p, shape in ((hr_path, e["hr"]), (lr_path, e["lr"])):
            if not p.is_file():
                raise DataError(f"{p}: cache file missing")
            if len(infos) < HEADER_CHECK_CLIPS:
                arr = np.load(p, mmap_mode="r")  # reads the header only
                if list(arr.shape) != list(shape) or arr.dtype != np.uint8:
                    raise DataError(f"{p}: expected uint8 {shape}, found {arr.dtype} {list(arr.shape)}")
                del arr
        t, h, w, _ = e["hr"]
        infos.append(ClipInfo(e["name"], int(t), (h, w), (e["lr"][1], e["lr"][2])))
        files.append((hr_path, lr_path))
    if clips is not None:
        missing = [c for c in clips if c not in {i.name for i in infos}]
        if missing:
            raise DataError(f"{index_path}: clips not found in cache: {missing}")
    return ArraySource(infos, scale, index["degradation"], f"cache {cache_dir}", files=files)
