"""Doing the runs a plan still needs: one run to one record, and the serial way of doing them
all (bench.workers has the parallel one). Whatever happens inside a run ends in its record."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from bench.checkpoint import RunCheckpoint, fingerprint
from bench.config import ConfigError, ResolvedRun
from bench.data.core import DataShape, split_sizes
from bench.data.errors import DataError
from bench.device import is_main_process, resolve_device
from bench.gate import Gate
from bench.gpus import gpu_of
from bench.presets import Preset, get_preset
from bench.registry import get_method, get_task
from bench.results import Kind, RunRecord, Status, environment, run_key
from bench.tracking import Tracking
from bench.train import NonFiniteLoss, train_run

# a run's progress: batches done, of its total; the epoch under way (from 1) and the mean loss
# last read, where an observer reads them (bench.tracking), else None
OnStep = Callable[[int, int, int | None, float | None], None]


@dataclass(frozen=True)
class Job:
    """A run still to do, with its record key and its place in the plan."""

    index: int
    run: ResolvedRun
    key: str

    @property
    def label(self) -> str:
        return f"{self.run.method} / {self.run.task} / seed {self.run.seed}"


@dataclass(frozen=True)
class Context:
    """What every record of one invocation shares."""

    preset: str
    git: dict[str, Any]  # the code this invocation runs, even if a commit lands while it works
    command: str | None
    workers: int = 1  # runs done at once (bench.workers)
    checkpoints: Path | None = None  # OUT/checkpoints: where unfinished runs keep their state (bench.checkpoint)
    tracking: Tracking = field(default_factory=Tracking)  # trackers, and whether progress lines show the loss


def progress_bars(console: Console) -> Progress:
    """The runs' progress: a line for the whole invocation, and one per running run with its
    batches, epoch, loss and time left. Drawn on a terminal only; gone once done."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def run_state(epoch: int | None, loss: float | None) -> str:
    """A run's line, between its batches and its times: the epoch under way and its last loss."""
    parts = ([f"epoch {epoch}"] if epoch is not None else []) + ([f"loss {loss:.4g}"] if loss is not None else [])
    return " ".join(parts)


class Display:
    """One progress line per slot (a process doing runs) with the steps of its current run."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._lines: dict[int, Any] = {}

    def start(self, slot: int, label: str) -> None:
        self._lines[slot] = self._progress.add_task(label, total=None, state="")

    def step(self, slot: int, done: int, total: int, epoch: int | None = None, loss: float | None = None) -> None:
        self._progress.update(self._lines[slot], completed=done, total=total, state=run_state(epoch, loss))

    def stop(self, slot: int) -> None:
        self._progress.remove_task(self._lines.pop(slot))


def data_key(run: ResolvedRun, shape: DataShape) -> str:
    """Runs with the same key read the same datasets."""
    return repr((run.task, run.source, run.task_cfg, shape))


class DataCache:
    """Datasets are built once per (task, source, config) and shared by every method,
    so all methods see exactly the same samples. Runs come task by task, so only the
    latest datasets are kept: a split of one-second waveforms is hundreds of MB."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._datasets: Any = None

    def get(self, run: ResolvedRun, shape: DataShape) -> Any:
        key = data_key(run, shape)
        if key != self._key:
            self._datasets = None  # free the previous task's data before building the next
            self._datasets = get_task(run.task).datasets(run.task_cfg, shape, run.source)
            self._key = key
        return self._datasets


def run_serially(
    jobs: list[Job], context: Context, display: Display, take: Callable[[Job], bool] = lambda job: True
) -> Iterator[tuple[Job, RunRecord]]:
    """Each job that `take` gives this command (bench.claims) in turn in this process, with its threads."""
    preset, cache = get_preset(context.preset), DataCache()
    for job in jobs:
        if not take(job):
            continue
        display.start(0, job.label)
        record = run_one(job, preset, cache, context, partial(display.step, 0))
        display.stop(0)
        yield job, record


def run_one(
    job: Job,
    preset: Preset,
    cache: DataCache,
    context: Context,
    on_step: OnStep,
    gate: Gate | None = None,
) -> RunRecord:
    """The run's record, whatever happened (a usage error or a bad dataset, which would fail
    every run alike, is raised instead); its trackers get it too."""
    run = job.run
    start = time.perf_counter()
    status, error, metrics, efficiency, extra, splits = Status.OK, None, {}, {}, {}, None
    observer = context.tracking.observer(job.key, run) if is_main_process() else None

    def progress(done: int, total: int) -> None:
        if observer is None:
            on_step(done, total, None, None)
        else:
            on_step(done, total, observer.epoch, observer.loss)

    with observer or nullcontext():  # one that ends without a record closes its trackers
        try:
            datasets = cache.get(run, preset.shape)
            splits = split_sizes(datasets)
            checkpoint = job_checkpoint(job, context.checkpoints) if context.checkpoints is not None else None
            outcome = train_run(run, preset, datasets, progress, gate, checkpoint, observer)
            metrics, efficiency = outcome.metrics, outcome.efficiency
            extra = {
                "best_epoch": outcome.best_epoch,
                "val_history": outcome.val_history,
                "weights": outcome.towers,
                "budget": outcome.budget,
                "metrics_per_item": outcome.per_item,
            }
        except (ConfigError, DataError):
            raise
        except NonFiniteLoss as err:
            status, error = Status.NAN, str(err)
        except torch.OutOfMemoryError as err:
            status, error = Status.OOM, str(err).splitlines()[0]
        except Exception as err:  # a failed run is recorded; the sweep goes on
            status, error = Status.ERROR, f"{type(err).__name__}: {err}"
            extra = {"traceback": traceback.format_exc(limit=8)}
        wall_s = time.perf_counter() - start
        record = job_record(job, context, status, error, wall_s, metrics, efficiency, splits, **extra)
        if observer is not None:
            observer.finish(record)
    return record


def versions(run: ResolvedRun) -> dict[str, int]:
    """The versions of the run's method and task: each bumps its own when its computation
    changes, and the run key holds them, so no changed method or task reuses a record."""
    return {"method": get_method(run.method).version, "task": get_task(run.task).version}


def job_key(run: ResolvedRun) -> str:
    return run_key(run.method, run.task, run.preset, run.source_identity, run.seed, run.to_dict(), versions(run))


def job_checkpoint(job: Job, checkpoints: Path) -> RunCheckpoint:
    """Where the job's run keeps its state until it has a record."""
    return RunCheckpoint(checkpoints / job.key, fingerprint(job.key, job.run))


def job_record(
    job: Job,
    context: Context,
    status: Status,
    error: str | None,
    wall_s: float,
    metrics: dict[str, Any] | None = None,
    efficiency: dict[str, Any] | None = None,
    splits: dict[str, dict[str, int]] | None = None,
    **extra: Any,
) -> RunRecord:
    """`splits`: per split, the samples the run used and the listed videos left out (bench.data.core.split_sizes)."""
    run = job.run
    data = (run.data.record() if run.data is not None else {}) | ({"splits": splits} if splits else {})
    device = resolve_device(run.device)
    env = environment(device) | gpu_of(device)
    if context.workers > 1:
        env["workers"] = context.workers  # timed alone (bench.gate), but trained next to other runs
    return RunRecord(
        kind=Kind.RUN,
        key=job.key,
        git=context.git,
        command=context.command,
        method=run.method,
        task=run.task,
        preset=run.preset,
        source=run.source,
        seed=run.seed,
        versions=versions(run),
        status=status,
        error=error,
        config=run.to_dict(),
        metrics=metrics or {},
        efficiency=efficiency or {},
        env=env,
        tags=run.tags,
        wall_s=wall_s,
        data=data or None,
        **extra,
    )
