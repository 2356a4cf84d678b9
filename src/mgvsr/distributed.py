"""Process-group set-up for ``torchrun`` (DDP) and single-process runs.

``torchrun --nproc_per_node N -m mgvsr.cli train CONFIG`` sets RANK / WORLD_SIZE / LOCAL_RANK; without
them the run is a single process. Backend: NCCL on CUDA, gloo otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from mgvsr.runtime import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str = "auto", timeout_min: int = 30) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; return (info, device).

    ``timeout_min`` bounds how long a collective waits for the other ranks before the run fails with
    an error instead of hanging (``train.dist_timeout_min``); it must cover the longest stretch one
    rank can spend outside collectives, such as a checkpoint write or the end-of-run report.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    info = DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)
    device = resolve_device(device_name, local_rank)
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_min))
    return info, device


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (identity in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def all_reduce_loss_and_stop(loss: torch.Tensor, stop: bool) -> tuple[torch.Tensor, bool]:
    """The step's loss averaged over ranks (a 0-d tensor on the loss's device), and whether any rank
    asked to stop, in one all-reduce.

    The stop request rides on the all-reduce every step already makes, so all ranks learn of it at
    the same step and stop together: a flag checked per rank could send rank 0 into the checkpoint's
    collective while another rank is already in the next step's all-reduce, and hang the run. Reading
    the flag is the one host synchronisation of a distributed step; a single process neither
    communicates nor waits (its loss is returned as it is).
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return loss, stop
    packed = torch.stack([loss.detach().float(), torch.tensor(float(stop), device=loss.device)])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return packed[0] / dist.get_world_size(), bool(packed[1] > 0)


def group_rank_and_size() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised process group; ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_objects(value: object) -> list:
    """Every rank's ``value`` (picklable), in rank order, on every rank; ``[value]`` without a group."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [value]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
