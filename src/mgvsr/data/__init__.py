"""Data: sources (REDS, Vimeo-90K, Vid4, frame folders, video files), degradations, sampling.

Public API::

    build_dataset(cfg: DatasetConfig, scale=4) -> ClipSource
    make_batch(dataset, seed=, step=, rank=, world_size=, num_frames=, lr_patch=, batch_size=, aug=, intervals=)
    StepBatches(dataset, shape_fn, seed, rank, world_size, aug, intervals, accum_steps)  # ds[k] -> (lr, hr)
    iter_clips(dataset, max_frames=0)   # yields (name, lr uint8 (T,h,w,3), hr uint8 (T,4h,4w,3))
    check_shape(dataset, num_frames, lr_patch)
"""

from mgvsr.data.build import build_dataset, build_source
from mgvsr.data.cache import ArraySource, load_into_memory, open_cache, write_cache
from mgvsr.data.io import DataError
from mgvsr.data.sampling import AugmentConfig, StepBatches, check_shape, iter_clips, make_batch
from mgvsr.data.sources import ClipInfo, ClipSource

__all__ = [
    "ArraySource",
    "AugmentConfig",
    "ClipInfo",
    "ClipSource",
    "DataError",
    "StepBatches",
    "build_dataset",
    "build_source",
    "check_shape",
    "iter_clips",
    "load_into_memory",
    "make_batch",
    "open_cache",
    "write_cache",
]
