"""How a run reads its splits. In-memory (synthetic) splits are sliced a whole batch at a
time. A real split goes through one DataLoader per run, built on first use: its worker
processes decode the next batches while the model trains on this one, persist across
epochs (they start once), and pin memory on CUDA. Shuffling draws from the run's generator
exactly as a DataLoader built each epoch without workers did, so the order, the batches and
their values are the same with any number of workers. The time training waits for its
batches is kept for the record (`data_wait_fraction`).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from bench import forkserver
from bench.config import ConfigError
from bench.data.core import Batch, TensorAVDataset
from bench.device import usable_cores

PREFETCH = 2  # batches each worker keeps ready: with several workers, enough to ride out a slow read
MAX_AUTO_WORKERS = 8  # a few workers already decode faster than one GPU trains; more only cost memory


def loader_workers(setting: int | None, ds: Dataset, device: torch.device) -> int:
    """The DataLoader workers a split gets: none for an in-memory split (it reads no files);
    else `setting`, or by default (None) on CUDA one per core of this run but the one that
    trains, at most MAX_AUTO_WORKERS, and none on a CPU: there the run's threads already hold
    its cores, and a prepared item costs more to hand over from a worker than to read
    (results/loader: 2 workers gave 0.66-0.77 x the samples/s of none on 2 cores). The run's
    cores are its torch threads within the usable cores: bench.workers and bench.sweep give
    each of their parallel runs its share. A run in a bench.workers process (a daemon, which
    may start no process) reads in that process: its default is 0, and a count > 0 is a
    ConfigError."""
    if isinstance(ds, TensorAVDataset):
        return 0
    in_parallel_worker = multiprocessing.current_process().daemon
    if setting is None:
        if in_parallel_worker or device.type == "cpu":
            return 0
        return max(0, min(MAX_AUTO_WORKERS, cores_of_run() - 1))
    if setting > 0 and in_parallel_worker:
        raise ConfigError(
            f"train.loader_workers={setting}: a run in a parallel worker process (--workers > 1) cannot start "
            "loader workers; use --workers 1, or leave train.loader_workers unset"
        )
    return setting


def cores_of_run() -> int:
    return min(usable_cores(), torch.get_num_threads())


class EpochOrder(Sampler[int]):
    """A random order per epoch from `gen`, drawn as a DataLoader built each epoch draws it:
    the int64 base seed its iterator takes from its generator, then torch's RandomSampler on
    that generator. A persistent DataLoader draws no base seed after its first epoch, so with
    its own generator the order would depend on the number of workers. The whole epoch is
    drawn when it starts: how far workers prefetched into an interrupted epoch changes no
    later one."""

    def __init__(self, ds: Dataset, gen: torch.Generator) -> None:
        self.gen = gen
        self.order = RandomSampler(ds, generator=gen)
        self.skip = 0  # items of the next epoch drawn but not served (a resumed epoch's done part)

    def __len__(self) -> int:
        return len(self.order) - self.skip

    def __iter__(self) -> Iterator[int]:
        torch.empty((), dtype=torch.int64).random_(generator=self.gen)
        yield from list(self.order)[self.skip :]


def data_loader(ds: Dataset, batch_size: int, gen: torch.Generator | None, workers: int, pin: bool) -> DataLoader:
    """The DataLoader of a split: shuffled by `gen` (EpochOrder) or in order. Its own
    generator seeds the workers only: the split's items draw no random numbers."""
    order = EpochOrder(ds, gen) if gen is not None else None
    parallel: dict[str, Any] = {}
    if workers > 0:
        parallel = dict(multiprocessing_context=forkserver.context(), persistent_workers=True, prefetch_factor=PREFETCH)
    return DataLoader(
        ds, batch_size, sampler=order, num_workers=workers, pin_memory=pin, generator=torch.Generator(), **parallel
    )


class RunSplit(Dataset):
    """One split as one run reads it: at `batch_size`, shuffled by `gen` (the training split)
    or in order (None). Its DataLoader, built on the first read, serves every epoch. Keeps the
    seconds of its reads (from the first request of an epoch to its end, the work done on
    each batch included) and the part of them spent waiting for a batch."""

    def __init__(
        self, dataset: Dataset, batch_size: int, gen: torch.Generator | None, workers: int, pin_memory: bool
    ) -> None:
        self.dataset, self.batch_size, self.gen = dataset, batch_size, gen
        self.workers, self.pin_memory = workers, pin_memory
        self.loader: DataLoader | None = None
        self.read_s = self.waited_s = 0.0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Batch:
        return self.dataset[i]

    def serves(self, batch_size: int, shuffle: bool, gen: torch.Generator) -> bool:
        """Whether a read with these settings is this split's own."""
        return batch_size == self.batch_size and (gen is self.gen if shuffle else self.gen is None)

    def __iter__(self) -> Iterator[Batch]:
        return self.read()

    def read(self, skip: int = 0) -> Iterator[Batch]:
        """One epoch, less its first `skip` batches: their order is drawn as for a whole epoch
        (a resumed epoch goes on as it would have), but they are never loaded."""
        start = time.perf_counter()
        try:
            batches = self._epoch(skip)
            while True:
                asked = time.perf_counter()
                batch = next(batches, None)
                self.waited_s += time.perf_counter() - asked
                if batch is None:
                    return
                yield batch
        finally:
            self.read_s += time.perf_counter() - start

    def _epoch(self, skip: int) -> Iterator[Batch]:
        if skip and self.gen is None:
            raise ValueError("only a shuffled (training) split resumes part-way through an epoch")
        if isinstance(self.dataset, TensorAVDataset):
            order = torch.randperm(len(self.dataset), generator=self.gen) if self.gen is not None else None
            yield from self.dataset.batches(self.batch_size, None if order is None else order[skip * self.batch_size :])
            return
        if self.loader is None:
            self.loader = data_loader(self.dataset, self.batch_size, self.gen, self.workers, self.pin_memory)
        if isinstance(self.loader.sampler, EpochOrder):
            self.loader.sampler.skip = skip * self.batch_size
        yield from self.loader

    def record(self) -> dict[str, Any]:
        """What a run's record keeps of its training reads."""
        fraction = self.waited_s / self.read_s if self.read_s > 0 else 0.0
        return {"data_wait_fraction": fraction, "loader_workers": self.workers}


def run_splits(
    datasets: dict[str, Dataset], batch_size: int, gen: torch.Generator, setting: int | None, device: torch.device
) -> dict[str, RunSplit]:
    """A run's splits: train shuffled by `gen`, the others in order, each with its
    loader_workers(setting, device) and pinned memory on CUDA."""
    return {
        split: RunSplit(
            ds,
            batch_size,
            gen if split == "train" else None,
            loader_workers(setting, ds, device),
            device.type == "cuda",
        )
        for split, ds in datasets.items()
    }
