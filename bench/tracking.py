"""Watching a run as it trains: experiment trackers (`--log tensorboard,wandb`) and the loss
its progress line shows.

A run's observer (`RunObserver`) gets every training batch's loss as a tensor and sums it
where it lies; it reads the sum (one host-device sync on a GPU) only every `every` batches
and at each epoch end, and only when a tracker or a terminal's progress line wants it. With
neither, a run has no observer and its loop reads nothing. Each tracker writes one run per
record, named by the record's key: TensorBoard under OUT/tensorboard/<key>/, Weights & Biases
under OUT/wandb (or WANDB_DIR) in the `--wandb-project` project. Both are optional extras; a
command that asks for a missing one stops before any work.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from bench.config import ConfigError, ResolvedRun

if TYPE_CHECKING:  # the command line reads the tracker names without loading tasks
    from bench.results import RunRecord

DEFAULT_PROJECT = "mettle-bench"
DEFAULT_EVERY = 10  # batches between two reads of the loss


@dataclass(frozen=True)
class Tracking:
    """What the runs of one invocation report as they train; plain values, so that worker
    processes get it whole. `display`: a terminal shows each run's progress line, with its loss."""

    trackers: tuple[str, ...] = ()
    out: Path = Path()  # the invocation's OUT
    project: str = DEFAULT_PROJECT
    every: int = DEFAULT_EVERY
    display: bool = False

    def observer(self, key: str, run: ResolvedRun) -> RunObserver | None:
        """The observer of one run, or None when nothing would read its loss."""
        if not self.trackers and not self.display:
            return None
        trackers = [TRACKERS[name](self) for name in self.trackers]
        return RunObserver(trackers, key, run, self.every)


class Tracker(ABC):
    """One experiment tracker's run per record: scalars against the training step (the
    batches trained on), then the record's figures and its status."""

    module: ClassVar[str]  # what must import for it to work
    extra: ClassVar[str]  # the optional dependency group that installs it

    def __init__(self, tracking: Tracking) -> None:
        self.tracking = tracking

    @classmethod
    def problem(cls) -> str | None:
        """What keeps this tracker from working here, checked before any run starts, or None."""
        try:
            importlib.import_module(cls.module)
        except ImportError:
            return f"needs the {cls.module} package: pip install 'mettle-bench[{cls.extra}]'"
        return None

    @abstractmethod
    def start(self, key: str, config: dict[str, Any], step: int) -> None:
        """Open the run `key` (training resumes after `step` batches: anything a previous
        attempt logged from there on is replaced)."""

    @abstractmethod
    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    @abstractmethod
    def finish(self, step: int, summary: dict[str, float], status: str) -> None:
        """Close the run with the record's figures; `status` is the record's, or `interrupted`."""


class TensorBoardTracker(Tracker):
    module, extra = "tensorboard", "tensorboard"

    def start(self, key: str, config: dict[str, Any], step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # TensorBoard hides what an earlier attempt of this run (or an earlier record of its key) logged after `step`
        self._writer = SummaryWriter(str(self.tracking.out / "tensorboard" / key), purge_step=step + 1)
        self._writer.add_text("config", f"```\n{json.dumps(config, indent=2, default=str)}\n```", step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, step)

    def finish(self, step: int, summary: dict[str, float], status: str) -> None:
        self.scalars(step, summary)
        self._writer.add_text("status", status, step)
        self._writer.close()


class WandbTracker(Tracker):
    """A W&B run whose id is the record's key, so that a resumed run continues its curves;
    its entity, mode (WANDB_MODE=offline) and API key come from the environment as W&B reads them."""

    module, extra = "wandb", "wandb"
    LOCAL_MODES = ("offline", "disabled", "dryrun")  # WANDB_MODE values that need no account

    @classmethod
    def problem(cls) -> str | None:
        """Besides the package, an account unless the mode is local: a run must not stop at a login prompt."""
        if (missing := super().problem()) is not None or os.environ.get("WANDB_MODE") in cls.LOCAL_MODES:
            return missing
        import wandb

        if not wandb.login(prompt=False, verify=False):
            return "is not logged in to W&B: run `wandb login`, set WANDB_API_KEY, or set WANDB_MODE=offline"
        return None

    def start(self, key: str, config: dict[str, Any], step: int) -> None:
        import wandb

        self._run = wandb.init(
            project=self.tracking.project,
            id=key,
            name=key,
            config={**config, "key": key},
            resume="allow",
            dir=None if "WANDB_DIR" in os.environ else str(self.tracking.out),
            settings=wandb.Settings(console="off", silent=True),  # the console is the progress lines'
        )
        self._run.define_metric("step")
        self._run.define_metric("*", step_metric="step")  # a resumed run may log a step again

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._run.log({**values, "step": step})

    def finish(self, step: int, summary: dict[str, float], status: str) -> None:
        self._run.summary.update({**summary, "status": status})
        self._run.finish(exit_code=0 if status == "ok" else 1)


TRACKERS: dict[str, type[Tracker]] = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}


def tracker_names(text: str) -> tuple[str, ...]:
    """`--log`: `none`, or comma-separated tracker names."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if names == ("none",):
        return ()
    if not names or any(n not in TRACKERS for n in names):
        raise ValueError(f"--log expects none or a comma-separated list of {', '.join(TRACKERS)}, got {text!r}")
    return names


def check_trackers(names: tuple[str, ...]) -> None:
    """Every tracker asked for can be used, or a usage error says what it lacks (the extra to install)."""
    for name in names:
        if (problem := TRACKERS[name].problem()) is not None:
            raise ConfigError(f"--log {name} {problem}")


class RunObserver:
    """One run's trackers, and the loss and epoch its progress line shows. Used as a context:
    a run that ends without a record (interrupted) closes its trackers as `interrupted`."""

    def __init__(self, trackers: list[Tracker], key: str, run: ResolvedRun, every: int) -> None:
        self.trackers, self.key, self.run, self.every = trackers, key, run, every
        from bench.registry import get_task

        self.metric = get_task(run.task).selection_metric
        self.loss: float | None = None  # the mean of the last batches read
        self.epoch = 0  # the epoch under way, from 1
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._step = 0
        self._open = False

    def __enter__(self) -> RunObserver:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self._open:
            self._finish({}, "interrupted")

    def start(self, step: int) -> None:
        """Training starts, or resumes after `step` batches."""
        self._step = step
        for tracker in self.trackers:
            tracker.start(self.key, self.run.to_dict(), step)
        self._open = True

    def step(self, step: int, epoch: int, loss: torch.Tensor, lrs: dict[str, float]) -> None:
        """Batch `step` of epoch `epoch` (from 0) trained with loss `loss` and these learning
        rates (per parameter group)."""
        self._step, self.epoch = step, epoch + 1
        loss = loss.detach().float()
        self._sum = loss if self._sum is None else self._sum + loss
        self._count += 1
        values = {f"train/lr/{group}": lr for group, lr in lrs.items()}
        if step % self.every == 0:
            values |= self._read()
        self._log(values)

    def epoch_end(self, val: float) -> None:
        """The epoch under way ended with this val selection metric."""
        self._log({**self._read(), f"val/{self.metric}": val})

    def finish(self, record: RunRecord) -> None:
        figures = {f"metrics/{k}": v for k, v in record.metrics.items()}
        figures |= {f"efficiency/{k}": v for k, v in record.efficiency.items()}
        figures |= {"run/wall_s": record.wall_s, "run/best_epoch": record.best_epoch}
        if self._open:  # a run that failed before training started has nothing to close
            self._finish({k: float(v) for k, v in figures.items() if _is_number(v)}, record.status.value)

    def _read(self) -> dict[str, float]:
        """The mean loss since the last read, read from the device."""
        if self._sum is None:
            return {}
        self.loss = (self._sum / self._count).item()
        self._sum, self._count = None, 0
        return {"train/loss": self.loss}

    def _log(self, values: dict[str, float]) -> None:
        for tracker in self.trackers:
            tracker.scalars(self._step, values)

    def _finish(self, summary: dict[str, float], status: str) -> None:
        self._open = False
        for tracker in self.trackers:
            tracker.finish(self._step, summary, status)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
