"""One run per GPU on a node: which GPUs the workers get, each worker process seeing only its own.

A worker is started with CUDA_VISIBLE_DEVICES naming its one GPU (set in the environment it is
born with, so nothing in it can initialise CUDA on another), so inside it the GPU is `cuda:0`
and a run is the same program on any of them. Records name the GPU as the node's scheduler and
nvidia-smi do: its entry in this command's CUDA_VISIBLE_DEVICES (an index or a UUID), or its
index when that is unset.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

VISIBLE = "CUDA_VISIBLE_DEVICES"


def uses_cuda(device_name: str) -> bool:
    """Whether runs on `device_name` (cpu, cuda, auto) go to CUDA; asks without initialising it."""
    return device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as the node names them."""
    count = torch.cuda.device_count()
    listed = os.environ.get(VISIBLE)
    if listed is None:
        return [str(i) for i in range(count)]
    return [entry.strip() for entry in listed.split(",") if entry.strip()][:count]


def worker_gpus(device_name: str, workers: int) -> list[str] | None:
    """The GPU of each of `workers` worker processes (the first `workers` visible); None when
    runs stay on the CPU, or one run at a time in this process uses the current GPU."""
    if workers == 1 or not uses_cuda(device_name):
        return None
    return visible_gpus()[:workers]


@contextmanager
def only(gpu: str | None) -> Iterator[None]:
    """Processes started in the block (spawned: a fresh interpreter with this environment) see
    only `gpu`; None leaves the environment as it is."""
    if gpu is None:
        yield
        return
    before = os.environ.get(VISIBLE)
    os.environ[VISIBLE] = gpu
    try:
        yield
    finally:
        if before is None:
            del os.environ[VISIBLE]
        else:
            os.environ[VISIBLE] = before


def gpu_of(device: torch.device) -> dict[str, str]:
    """The record's name for the GPU a run used ({"gpu": "3"}); nothing on a CPU."""
    if device.type != "cuda":
        return {}
    index = device.index if device.index is not None else torch.cuda.current_device()
    return {"gpu": visible_gpus()[index]}
