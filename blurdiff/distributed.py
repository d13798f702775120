"""Several training processes (``torchrun``): the process group's set-up and teardown, the device
of each rank, and the few collective calls the trainer makes. With one process (``WORLD_SIZE``
unset or 1) there is no process group and every helper here is a plain local call."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from blurdiff.devices import resolve_device

__all__ = [
    "DistInfo",
    "setup_distributed",
    "teardown_distributed",
    "device_for_rank",
    "broadcast_from_main",
    "mean_over_ranks",
    "gather_from_ranks",
    "data_parallel",
]

T = TypeVar("T")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    initialized_here: bool = False


def setup_distributed(device: str | None) -> DistInfo:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK; start the process group when there are several
    processes (nccl on CUDA, gloo on the CPU). A single process needs none of it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    initialized_here = False
    if not dist.is_initialized():
        on_cuda = (device is None or device.startswith("cuda")) and torch.cuda.is_available()
        if on_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if on_cuda else "gloo")
        initialized_here = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), initialized_here)


def teardown_distributed(info: DistInfo) -> None:
    """End the process group :func:`setup_distributed` started (one started elsewhere is left alone)."""
    if info.initialized_here:
        dist.destroy_process_group()


def device_for_rank(requested: str | None, rank: int, world_size: int) -> torch.device:
    """The device of process ``rank``: ``requested`` (default: CUDA when available); a CUDA device
    without an index is one GPU per process, torchrun's LOCAL_RANK when set, else the rank, modulo
    the visible GPUs (1 where each process sees only its own), or the current GPU for one process."""
    device = resolve_device(requested)
    if device.type == "cuda" and device.index is None:
        if world_size > 1:
            index = int(os.environ.get("LOCAL_RANK", rank)) % max(torch.cuda.device_count(), 1)
        else:
            index = torch.cuda.current_device()
        device = torch.device("cuda", index)
    return device


def broadcast_from_main(decide: Callable[[], T], rank: int, errors=(ValueError, OSError)) -> T:
    """One decision for every rank (a collective call): rank 0 calls ``decide()`` and every rank
    gets what it returned (picklable). One of ``errors`` raised there is raised on every rank, so
    that none waits forever for an answer that never comes."""
    choice: list[Any] = [None]
    if rank == 0:
        try:
            choice = [decide()]
        except errors as e:
            choice = [e]
    dist.broadcast_object_list(choice, src=0)
    if isinstance(choice[0], Exception):
        raise choice[0]
    return choice[0]


def mean_over_ranks(value: torch.Tensor, world_size: int) -> torch.Tensor:
    """The mean of ``value`` over the ranks (a collective call when ``world_size > 1``)."""
    if world_size > 1:
        value = value.clone()
        dist.all_reduce(value)  # gloo has no AVG
        value /= world_size
    return value


def gather_from_ranks(obj: Any, world_size: int) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order (a collective call when ``world_size > 1``)."""
    if world_size <= 1:
        return [obj]
    objects = [None] * world_size
    dist.all_gather_object(objects, obj)
    return objects


def data_parallel(model: torch.nn.Module, device: torch.device, world_size: int) -> torch.nn.Module:
    """``model`` wrapped in ``DistributedDataParallel`` (which starts from rank 0's weights and
    averages the gradients over the ranks) when ``world_size > 1``; else ``model`` itself."""
    if world_size <= 1:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
