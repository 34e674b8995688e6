"""How a run reads its splits (bench.data.loader): the same batches in the same order with any
number of loader workers, workers started once per split, the wait for batches measured, the
worker count chosen from the cores."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import torch
from test_loaders import SHAPE
from test_missing_media import ave_tree
from torch.utils.data import DataLoader, Dataset

import bench.data.loader
from bench.config import ConfigError
from bench.data.ave import load_ave
from bench.data.core import TensorAVDataset
from bench.data.loader import MAX_AUTO_WORKERS, RunSplit, loader_workers, run_splits
from bench.train import iterate

EPOCHS = 3


@pytest.fixture(scope="module")
def train_split(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """The six training clips of a prepared AVE tree, each with labels of its own."""
    root = tmp_path_factory.mktemp("ave")
    ave_tree(root)
    return load_ave(root, SHAPE)["train"]


def epochs_of(batches, epochs: int = EPOCHS) -> list[list[dict[str, torch.Tensor]]]:
    return [list(batches()) for _ in range(epochs)]


def assert_same(a: list[list[dict[str, torch.Tensor]]], b: list[list[dict[str, torch.Tensor]]]) -> None:
    assert [len(epoch) for epoch in a] == [len(epoch) for epoch in b]
    for epoch_a, epoch_b in zip(a, b, strict=True):
        for x, y in zip(epoch_a, epoch_b, strict=True):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_batches_and_their_order_are_the_same_with_0_and_2_workers_and_as_before(train_split: Dataset) -> None:
    before = torch.Generator().manual_seed(5)  # a DataLoader built each epoch: the loop before workers
    reference = epochs_of(lambda: DataLoader(train_split, batch_size=4, shuffle=True, generator=before))
    orders = {tuple(tuple(b["label"].eq(0).sum(-1).tolist()) for b in epoch) for epoch in reference}
    assert len(orders) == EPOCHS  # each epoch in another order: the comparison can tell
    for workers in (0, 2):
        split = RunSplit(train_split, 4, torch.Generator().manual_seed(5), workers, pin_memory=False)
        assert_same(epochs_of(lambda split=split: split), reference)


def test_a_split_builds_its_loader_once_and_its_workers_serve_every_epoch(train_split: Dataset) -> None:
    split = RunSplit(train_split, 4, torch.Generator().manual_seed(0), 2, pin_memory=False)
    seen = []
    for _ in range(EPOCHS):
        for i, _batch in enumerate(split):
            if i == 0:  # the epoch has started: its iterator exists
                seen.append((split.loader, [w.pid for w in split.loader._iterator._workers]))  # type: ignore[union-attr]
    (loader, pids), *later = seen
    assert loader is not None and len(pids) == 2 and loader.persistent_workers and loader.prefetch_factor == 2
    assert all(other is loader and other_pids == pids for other, other_pids in later)


def test_an_interrupted_epoch_leaves_the_next_one_whole(train_split: Dataset) -> None:
    """The step budget may end training inside an epoch; a persistent loader's next epoch
    must not start with the rest of the interrupted one."""
    split = RunSplit(train_split, 2, torch.Generator().manual_seed(1), 2, pin_memory=False)
    plain = RunSplit(train_split, 2, torch.Generator().manual_seed(1), 0, pin_memory=False)
    for reader in (split, plain):
        next(iter(reader))  # one batch of epoch 1, then the iteration is dropped
    assert_same(epochs_of(lambda: split, 2), epochs_of(lambda: plain, 2))


def test_other_reads_of_a_run_split_go_through_this_process(train_split: Dataset) -> None:
    """One batch for the step budget or the measurement starts no workers."""
    split = RunSplit(train_split, 4, torch.Generator().manual_seed(0), 2, pin_memory=False)
    (batch,) = [next(iterate(split, 4, False, torch.Generator()))]
    assert split.loader is None and torch.equal(
        batch["label"], torch.stack([train_split[i]["label"] for i in range(4)])
    )


class SlowItems(Dataset):
    """Items that take 20 ms each to read."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        time.sleep(0.02)
        return {"x": torch.tensor(i)}


def test_the_wait_for_batches_is_the_share_of_the_reads_spent_in_the_loader() -> None:
    slow = RunSplit(SlowItems(), 2, torch.Generator(), 0, pin_memory=False)
    assert len(list(slow)) == 4
    assert 0.9 < slow.record()["data_wait_fraction"] <= 1  # nothing done with the batches: all waiting
    tensors = TensorAVDataset(torch.zeros(8, 1, 4), torch.zeros(8, 1, 3, 2, 2), {"label": torch.zeros(8)})
    fast = RunSplit(tensors, 2, torch.Generator(), 0, pin_memory=False)
    for _ in fast:
        time.sleep(0.02)  # a training step
    assert 0 <= fast.record()["data_wait_fraction"] < 0.2 and fast.record()["loader_workers"] == 0
    assert fast.read_s >= 4 * 0.02 and fast.waited_s <= fast.read_s


def test_loader_workers_default_on_cuda_to_the_cores_of_the_run_but_one_and_on_a_cpu_to_none(
    train_split: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(bench.data.loader, "usable_cores", lambda: 16)
    for threads, workers in ((1, 0), (2, 1), (4, 3), (16, MAX_AUTO_WORKERS)):
        monkeypatch.setattr(torch, "get_num_threads", lambda threads=threads: threads)
        assert loader_workers(None, train_split, cuda) == workers
        assert loader_workers(None, train_split, cpu) == 0  # the run's threads hold the cores
    assert loader_workers(3, train_split, cpu) == loader_workers(3, train_split, cuda) == 3
    tensors = TensorAVDataset(torch.zeros(2, 1, 4), torch.zeros(2, 1, 3, 2, 2), {})
    assert loader_workers(None, tensors, cuda) == loader_workers(3, tensors, cuda) == 0  # in memory: nothing to read
    splits = run_splits({"train": train_split, "val": train_split}, 4, torch.Generator(), 2, cpu)
    assert splits["train"].gen is not None and splits["val"].gen is None
    assert splits["train"].workers == 2 and not splits["train"].pin_memory
    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True)  # a bench.workers process
    assert loader_workers(None, train_split, cuda) == 0
    with pytest.raises(ConfigError, match=r"train.loader_workers=2: a run in a parallel worker process"):
        loader_workers(2, train_split, cuda)
