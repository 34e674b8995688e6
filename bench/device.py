"""Where a run executes: the device, and the process group under torchrun (DDP)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from bench.config import ConfigError
from bench.tasks.base import Batch


def resolve_device(name: str) -> torch.device:
    """cpu, or the current CUDA device with its index (some torch.cuda calls, such as
    set_per_process_memory_fraction, refuse a bare "cuda"); auto picks CUDA when present."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device cuda: CUDA is not available here (torch {torch.__version__})")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def world_size() -> int:
    """Processes of this run: torchrun sets WORLD_SIZE; 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Only rank 0 writes records, tables and figures."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def distributed(device_name: str) -> Iterator[None]:
    """Under torchrun (WORLD_SIZE > 1): one process group for all runs of the command,
    gloo on CPU, nccl on CUDA with one GPU per local rank. A no-op otherwise."""
    if world_size() == 1:
        yield
        return
    cuda = resolve_device(device_name).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard(batch: Batch) -> tuple[Batch, float]:
    """This rank's slice of a global batch, and the loss scale that makes DDP's gradient
    average equal the gradient of the whole batch's mean loss when slices differ in size."""
    if not dist.is_initialized():
        return batch, 1.0
    rank, world = dist.get_rank(), dist.get_world_size()
    total = next(iter(batch.values())).shape[0]
    local = {k: v.tensor_split(world)[rank] for k, v in batch.items()}
    return local, next(iter(local.values())).shape[0] * world / total


def to_device(batch: Batch, device: torch.device) -> Batch:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
