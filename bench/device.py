"""Where runs execute: the device, the cores, how many runs go at once, and the process
group under torchrun (DDP)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

from bench.config import ConfigError
from bench.data.core import Batch
from bench.gpus import VISIBLE, uses_cuda, visible_gpus


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


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity, capped by a container's CPU quota
    (`docker --cpus`), which neither os.cpu_count() nor the affinity sees."""
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity else os.cpu_count() or 1
    quota = cpu_quota(cgroup)
    return max(1, min(cores, math.floor(quota))) if quota else cores


def cpu_quota(cgroup: Path) -> float | None:
    """CPUs allowed by the cgroup (v2 `cpu.max`, v1 `cpu/cpu.cfs_quota_us`); None when unlimited."""
    try:
        if (cgroup / "cpu.max").is_file():
            quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        else:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        return None if quota in ("max", "-1") else int(quota) / int(period)
    except (OSError, ValueError):  # no cgroup files (not Linux, not a container): no quota
        return None


def threads_per_worker(workers: int) -> int:
    return max(1, usable_cores() // workers)


def check_workers(workers: int | None, device: str) -> int:
    """How many runs go at once: `workers`, or by default one per usable core on a CPU and one
    per visible GPU on CUDA (bench.gpus: each worker sees only its own); one under torchrun,
    whose processes are one run's."""
    if world_size() > 1:
        if workers not in (None, 1):
            raise ConfigError(f"--workers {workers}: under torchrun the processes do one run together; use --workers 1")
        return 1
    gpus = len(visible_gpus()) if uses_cuda(device) else None
    if workers is None:
        return usable_cores() if gpus is None else max(gpus, 1)
    if workers < 1:
        raise ConfigError(f"--workers {workers}: expected a positive number of processes, or auto")
    if gpus is not None and workers > max(gpus, 1):
        raise ConfigError(
            f"--workers {workers}: one run per GPU, and {gpus} GPU(s) are visible here "
            f"({VISIBLE}={os.environ.get(VISIBLE, 'unset')})"
        )
    return workers
