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
# Where LR frames come from when ``cfg.lr_source`` is null: layouts that ship LR read it (a missing LR
# folder is an error), generic frame folders and prepared sets use stored LR when there is some, and
# plain videos always degrade the HR frames.
DEFAULT_LR_SOURCE = {"reds": "disk", "vimeo": "disk", "vid4": "disk", "frames": "auto", "video": "on_the_fly",
                     "prepared": "auto"}


def lr_source(cfg) -> str:
    """``cfg.lr_source``, or the layout's default when it is null."""
    return cfg.lr_source or DEFAULT_LR_SOURCE[cfg.kind]


def _lmdb_path(root: str, path: str) -> Path:
    """An LMDB folder named in the config: relative to ``root`` unless absolute."""
    return Path(root) / path if root else Path(path)


def build_lmdb_source(cfg, scale: int) -> ClipSource:
    """A REDS / Vimeo-90K dataset from BasicSR's LMDB folders (``cfg.gt_lmdb`` and ``cfg.lq_lmdb``)."""
    from mgvsr.data.lmdb import lmdb_source  # imports the lmdb package only for LMDB datasets

    if cfg.root and not Path(cfg.root).is_dir():
        raise DataError(f"{cfg.root}: dataset root not found (kind '{cfg.kind}', LMDB folders)")
    gt = _lmdb_path(cfg.root, cfg.gt_lmdb)
    lq = _lmdb_path(cfg.root, cfg.lq_lmdb) if cfg.lq_lmdb else None
    return lmdb_source(cfg.kind, Path(cfg.root), gt, lq, cfg.split, cfg.degradation, cfg.clips, scale,
                       lr_source(cfg))


def cache_origin(cfg, scale: int) -> dict:
    """What identifies a dataset in a cache index (checked when the cache is opened)."""
    return {"kind": cfg.kind, "root": str(Path(cfg.root).resolve()), "split": cfg.split,
            "clip_len": cfg.clip_len, "scale": scale}


def build_source(cfg, scale: int = 4) -> ClipSource:
    """The dataset read from its original files (ignores ``cfg.cache``)."""
    if cfg.kind not in KINDS:
        raise DataError(f"unknown dataset kind '{cfg.kind}'; choose one of {list(KINDS)}")
    if cfg.lq_lmdb and not cfg.gt_lmdb:
        raise DataError(f"lq_lmdb {cfg.lq_lmdb!r} is set without gt_lmdb (the GT LMDB folder)")
    if cfg.gt_lmdb:
        if cfg.kind not in ("reds", "vimeo"):
            raise DataError(f"gt_lmdb {cfg.gt_lmdb!r}: BasicSR LMDB folders are read for kind reds or vimeo, "
                            f"not '{cfg.kind}'")
        return build_lmdb_source(cfg, scale)
    root = Path(cfg.root)
    if not cfg.root:
        raise DataError(f"dataset root is empty (kind '{cfg.kind}'): set data.train.root / data.val.root")
    if not root.exists():
        raise DataError(f"{root}: dataset root not found (kind '{cfg.kind}')")
    kind, deg, clips, lr = cfg.kind, cfg.degradation, cfg.clips, lr_source(cfg)
    if kind == "reds":
        return reds_source(root, cfg.split, deg, clips, scale, lr)
    if kind == "vimeo":
        return vimeo_source(root, cfg.split, deg, clips, scale, lr)
    if kind == "vid4":
        return vid4_source(root, deg, clips, scale, lr)
    if kind == "frames":
        return frames_source(root, deg, clips, scale, lr)
    if kind == "video":
        return video_source(root, deg, clips, scale, cfg.clip_len, lr)
    return prepared_source(root, cfg.split, deg, clips, scale, lr)


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
