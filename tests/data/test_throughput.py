"""`bench data bench`: a prepared split read through a run's loader, timed per loader-worker count."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from bench.cli.data import train_split
from bench.data.loader import RunSplit
from bench.data.throughput import Throughput, measure_throughput


def prepared_ave(root: Path) -> Path:
    """A prepared AVE tree as `bench data prepare ave` writes it: 6 train clips, 1 val, 1 test."""
    rng = np.random.default_rng(0)
    videos = {"trainSet.txt": [f"v{i}" for i in range(6)], "valSet.txt": ["v6"], "testSet.txt": ["v7"]}
    for sub in ("frames", "audio"):
        (root / sub).mkdir(parents=True)
    (root / "media.json").write_text('{"dataset": "ave", "sample_rate": 800, "size": 24}')
    for name, vs in videos.items():
        (root / name).write_text("".join(f"Banjo&{v}&good&0&5\n" for v in vs))
        for v in vs:
            np.save(root / "frames" / f"{v}.npy", rng.integers(0, 256, (10, 24, 24, 3), dtype=np.uint8))
            np.save(root / "audio" / f"{v}.npy", rng.integers(-9000, 9000, (10, 800), dtype=np.int16))
    (root / "Annotations.txt").write_text("".join((root / n).read_text() for n in videos))
    return root


def test_the_figures_follow_from_the_timed_batches() -> None:
    result = Throughput(loader_workers=2, batch_size=4, batches=10, samples=38, seconds=2.0)
    assert result.samples_per_s == 19.0 and result.seconds_per_batch == 0.2


def test_a_prepared_split_is_read_as_a_run_reads_it_across_epochs(tmp_path: Path, monkeypatch) -> None:
    ds, batch_size = train_split("ave", prepared_ave(tmp_path / "ave"), "smoke")
    assert len(ds) == 6 and batch_size == 8  # the smoke preset's batch
    served: list[int] = []
    read = RunSplit.read

    def counted(self: RunSplit, skip: int = 0):
        for batch in read(self, skip):
            served.append(len(batch["label"]))
            yield batch

    monkeypatch.setattr(RunSplit, "read", counted)
    result = measure_throughput(ds, 4, workers=0, batches=4)
    # 6 samples at batch 4: batches of 4 and 2 per epoch; the warm-up batch and 4 timed ones span 3 epochs
    assert served == [4, 2, 4, 2, 4]
    assert (result.loader_workers, result.batch_size, result.batches, result.samples) == (0, 4, 4, 12)
    assert result.seconds > 0
    with pytest.raises(ValueError, match="batches must be >= 1, got 0"):
        measure_throughput(ds, 4, workers=0, batches=0)


@pytest.mark.slow
def test_data_bench_prints_samples_per_second_for_each_worker_count(tmp_path: Path, capsys) -> None:
    tree = prepared_ave(tmp_path / "ave")
    args = ["data", "bench", "--task", "ave", "--data", f"ave={tree}", "--preset", "smoke", "--batches", "3"]
    assert main([*args, "--loader-workers", "0,2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        f"ave / smoke: train split of 6 samples in {tree}, batch 8, 3 batches timed after 1 warm-up batch"
    )
    figure = r"(\d+\.\d\d) samples/s, (\d+\.\d) ms/batch \((\d+\.\d\d) x the first\)"
    assert len(lines) == 3
    first, second = (
        re.fullmatch(rf"loader_workers {n}: {figure}", line) for n, line in zip((0, 2), lines[1:], strict=True)
    )
    assert first and second
    assert first.group(3) == "1.00"
    # every batch holds the split's 6 samples (fewer than the batch of 8): samples/s x ms/batch is
    # 6000, and the ratio is the rates' ratio, each printed figure within half a unit of its last
    # digit of the exact one (0.005 samples/s, 0.05 ms, 0.005 x)
    rate, ms = float(first.group(1)), float(first.group(2))
    assert (rate - 0.005) * (ms - 0.05) <= 6000 <= (rate + 0.005) * (ms + 0.05)
    ratio, rate2 = float(second.group(3)), float(second.group(1))
    assert (rate2 - 0.005) / (rate + 0.005) - 0.005 <= ratio <= (rate2 + 0.005) / (rate - 0.005) + 0.005


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--loader-workers", "0,x", "argument --loader-workers: --loader-workers expects comma-separated integers "
                                    ">= 0, got '0,x'"),
        ("--loader-workers", "2,-1", "got '2,-1'"),
        ("--data", "avvp=DIR", "--data 'avvp=DIR': expected ave=PATH"),
        ("--batches", "0", "--batches must be > 0, got 0"),
    ],
)  # fmt: skip
def test_bad_arguments_exit_2_naming_them(tmp_path: Path, capsys, flag: str, value: str, message: str) -> None:
    tree = prepared_ave(tmp_path / "ave")
    args = {"--task": "ave", "--data": f"ave={tree}", "--preset": "smoke", "--loader-workers": "0", flag: value}
    assert main(["data", "bench", *sum(([k, v] for k, v in args.items()), [])]) == 2
    assert message in " ".join(capsys.readouterr().err.split())
