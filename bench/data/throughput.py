"""How fast a run's loader serves a prepared split: `bench data bench`.

The split is read exactly as a run reads its training split (bench.data.loader.RunSplit:
shuffled, at the run's batch size, persistent DataLoader workers), with nothing else to do
between batches, so the figure is the most the loader can feed a model. The first batch is
a warm-up (it starts the workers and fills their prefetch queues) and is not timed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from bench.data.core import Batch
from bench.data.loader import RunSplit


@dataclass(frozen=True)
class Throughput:
    """`batches` timed batches at `batch_size` (`samples` in all: an epoch's last batch may be
    short) read in `seconds` by `loader_workers` workers."""

    loader_workers: int
    batch_size: int
    batches: int
    samples: int
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds

    @property
    def seconds_per_batch(self) -> float:
        return self.seconds / self.batches


def endless(split: RunSplit) -> Iterator[Batch]:
    """Epoch after epoch of `split`, so that any number of batches can be timed."""
    while True:
        yield from split.read()


def measure_throughput(ds: Dataset, batch_size: int, workers: int, batches: int, seed: int = 0) -> Throughput:
    """Read one warm-up batch, then time `batches` more, through a RunSplit with `workers`
    DataLoader workers; its workers are shut down before returning."""
    if batches < 1:
        raise ValueError(f"batches must be >= 1, got {batches}")
    split = RunSplit(ds, batch_size, torch.Generator().manual_seed(seed), workers, pin_memory=False)
    reads = endless(split)
    try:
        next(reads)
        start = time.perf_counter()
        samples = sum(len(next(reads)["audio"]) for _ in range(batches))
        seconds = time.perf_counter() - start
    finally:
        reads.close()
        split.loader = None  # its persistent workers stop with their last reference, not at exit
    return Throughput(workers, batch_size, batches, samples, seconds)
