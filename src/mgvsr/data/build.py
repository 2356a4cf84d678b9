"""``build_dataset``: map a :class:`~mgvsr.config.DatasetConfig` to a clip source."""

from __future__ import annotations

from pathlib import Path

from mgvsr.data.cache import load_into_memory, open_cache
from mgvsr.data.io import DataError
from mgvsr.data.sources import (
    ClipSource,
    frames_source,
    prepared_source,
    reds_source,
    vid4_source,
    video_source,
    vimeo_source,
)

KINDS = ("reds", "vimeo", "vid4", "frames", "video", "prepared")


def cache_origin(cfg, scale: int) -> dict:
    """What identifies a dataset in a cache index (checked when the cache is opened)."""
    return {"kind": cfg.kind, "root": str(Path(cfg.root).resolve()), "split": cfg.split,
            "clip_len": cfg.clip_len, "scale": scale}


def build_source(cfg, scale: int = 4) -> ClipSource:
    """The dataset read from its original files (ignores ``cfg.cache``)."""
    root = Path(cfg.root)
    if not cfg.root:
        raise DataError(f"dataset root is empty (kind '{cfg.kind}'): set data.train.root / data.val.root")
    if not root.exists():
        raise DataError(f"{root}: dataset root not found (kind '{cfg.kind}')")
    kind, deg, clips = cfg.kind, cfg.degradation, cfg.clips
    if kind == "reds":
        return reds_source(root, cfg.split, deg, clips, scale)
    if kind == "vimeo":
        return vimeo_source(root, cfg.split, deg, clips, scale)
    if kind == "vid4":
        return vid4_source(root, deg, clips, scale)
    if kind == "frames":
        return frames_source(root, deg, clips, scale)
    if kind == "video":
        return video_source(root, deg, clips, scale, cfg.clip_len)
    if kind == "prepared":
        return prepared_source(root, cfg.split, deg, clips, scale)
    raise DataError(f"unknown dataset kind '{kind}'; choose one of {list(KINDS)}")


def build_dataset(cfg, scale: int = 4) -> ClipSource:
    """Build the clip source for ``cfg`` (a ``DatasetConfig``).

    With ``cfg.cache`` set, clips come from that packed uint8 cache (its recorded kind/root/split/
    degradation must match ``cfg``); with ``cfg.in_memory``, every clip is decoded once into RAM.
    """
    if cfg.kind not in KINDS:
        raise DataError(f"unknown dataset kind '{cfg.kind}'; choose one of {list(KINDS)}")
    if cfg.cache:
        expect = {"kind": cfg.kind, "split": cfg.split, "degradation": cfg.degradation, "scale": scale}
        return open_cache(Path(cfg.cache), expect=expect, clips=cfg.clips)
    source = build_source(cfg, scale)
    if cfg.in_memory:
        source = load_into_memory(source)
    return source
