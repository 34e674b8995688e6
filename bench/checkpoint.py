"""Resuming a run: its checkpoint, and stopping it cleanly on SIGTERM or SIGINT.

A run's checkpoint (OUT/checkpoints/<run key>/checkpoint.pt) holds what training changes:
trainable parameters and buffers, optimiser and scheduler state, the torch, CUDA and shuffling
generators, the step and epoch, the best state, the val history and the step budget; the frozen
towers are rebuilt from their weight sources, never saved. It is written atomically at every
epoch end; within an epoch at the first optimizer step MIN_INTERVAL_S (60 s) after the last
save, or later where one save costs more than SAVE_SHARE of that, so a run killed outright
(`kill -9`, the OOM killer, a lost node) loses about a minute of training however long its
epochs are; and at the next optimizer step after SIGTERM (what a batch scheduler sends before
preemption) or SIGINT, so a run stopped that way loses nothing. A save mid-epoch holds the
shuffling generator as it was at the epoch's start and the batches done since: the resumed run
draws the same order and skips those batches, so it ends exactly as an uninterrupted run would
(on CPU, bit for bit). The runner removes a checkpoint once its run has a record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pickle
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import torch
import torch.distributed as dist
from torch.optim.lr_scheduler import LRScheduler

from bench.config import ResolvedRun
from bench.step_budget import StepBudget

FILE = "checkpoint.pt"
MIN_INTERVAL_S = 60.0  # training a run killed outright loses at most about this much (mid-epoch saves)
SAVE_SHARE = 0.05  # ... unless saving that often would cost more than this share of the training time


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT stopped the command; a run that was training saved its checkpoint
    first. It has no record, so rerunning the command resumes it. A KeyboardInterrupt, so
    that no `except Exception` records the run as failed; the CLI exits 128 + `signum`."""

    def __init__(self, signum: int, command: str | None = None) -> None:
        super().__init__(signum, command)
        self.signum, self.command = signum, command

    def __str__(self) -> str:
        rerun = f"rerun `{self.command}`" if self.command else "rerun the same command"
        return f"interrupted by {signal.Signals(self.signum).name}: finished runs are kept; {rerun} to resume"


@dataclass
class TrainState:
    """Where a run's training is, and what val selection has kept so far."""

    step: int = 0  # batches trained on, the step budget's unit
    epoch: int = 0  # epochs done; all but the last are whole, so step - epoch * batches per epoch is the position
    best: float = -math.inf
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] | None = None
    history: list[float] = field(default_factory=list)
    since_best: int = 0  # epochs without a better val selection metric

    def validated(self, val: float, model: torch.nn.Module) -> None:
        """An epoch ended with `val`: keep the model's state if it is the best so far."""
        self.history.append(val)
        if val > self.best:
            self.best, self.best_epoch, self.since_best = val, self.epoch, 0
            self.best_state = trainable_state(model)
        else:
            self.since_best += 1
        self.epoch += 1

    def patience_spent(self, patience: int) -> bool:
        return patience > 0 and self.since_best >= patience


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of what training changes and load_state_dict restores (trainable parameters and
    persistent buffers), not the frozen towers: the best epoch's state and a checkpoint must
    not hold the model twice."""
    persistent = model.state_dict(keep_vars=True).keys()
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    state.update({n: b.detach().clone() for n, b in model.named_buffers() if n in persistent})
    return state


def snapshot(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    state: TrainState,
    shuffle: torch.Tensor,
    budget: StepBudget,
    device: torch.device,
) -> dict[str, Any]:
    """What a checkpoint holds; `shuffle` is the shuffling generator at the current epoch's start."""
    return {
        "model": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "train": {f.name: getattr(state, f.name) for f in dataclasses.fields(state)},
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
            "shuffle": shuffle,
        },
        "budget": dataclasses.asdict(budget),
    }


def restore(
    saved: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    shuffling: torch.Generator,
    device: torch.device,
) -> TrainState:
    """Put a checkpoint's state back into a freshly built run; `shuffling` is set to the
    current epoch's start."""
    loaded = model.load_state_dict(saved["model"], strict=False)
    if loaded.unexpected_keys:
        raise ValueError(f"checkpoint holds keys this model lacks: {', '.join(loaded.unexpected_keys[:5])}")
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"]["torch"])
    if device.type == "cuda" and saved["rng"]["cuda"] is not None:
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    shuffling.set_state(saved["rng"]["shuffle"])
    return TrainState(**saved["train"])


def fingerprint(key: str, run: ResolvedRun) -> str:
    """The run key and its towers' weight digests: a checkpoint of another experiment, or of
    towers whose weights were replaced since, is never resumed."""
    digests = {role: source.sha256 for role, source in sorted(run.weights.items())}
    return hashlib.sha1(json.dumps([key, digests]).encode()).hexdigest()


class RunCheckpoint:
    """One run's checkpoint file, written atomically (a temporary file in the same folder,
    fsynced, then renamed), so a kill leaves the previous checkpoint or the new one."""

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder, self.fingerprint = folder, fingerprint
        self.path = folder / FILE
        self._saved_at = time.monotonic()  # the run's training starts about now
        self._save_cost = 0.0  # seconds the last save took

    def exists(self) -> bool:
        return self.path.is_file()

    def due(self) -> bool:
        """Whether a save within an epoch is due: MIN_INTERVAL_S since the last save, or, where
        one save costs more than SAVE_SHARE of that, the interval that keeps saves at that share."""
        return time.monotonic() - self._saved_at >= max(MIN_INTERVAL_S, self._save_cost / SAVE_SHARE)

    def save(self, state: dict[str, Any]) -> None:
        start = time.monotonic()
        self._write(state)
        self._saved_at = time.monotonic()
        self._save_cost = self._saved_at - start

    def _write(self, state: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{FILE}.tmp{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                torch.save({**state, "fingerprint": self.fingerprint}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        folder = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a crash
        finally:
            os.close(folder)

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None (and a warning) when there is none this run can resume."""
        if not self.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
            warnings.warn(f"{self.path}: unreadable ({err}); the run starts afresh", stacklevel=2)
            return None
        if state.get("fingerprint") != self.fingerprint:
            warnings.warn(
                f"{self.path}: saved by another configuration or tower weights; the run starts afresh", stacklevel=2
            )
            return None
        return state

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class StopRequests:
    """While a run trains, SIGTERM and SIGINT ask it to stop at its next optimizer step, after
    saving its checkpoint, instead of ending the process wherever it is. A signal the process
    ignores (a worker's SIGINT: its parent handles Ctrl-C) stays ignored, and outside this
    context the previous handlers apply again. Off the main thread, signals cannot be caught."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous = signal.getsignal(signum)
                if previous not in (signal.SIG_IGN, None):
                    self._previous[signum] = signal.signal(signum, self._request)
        return self

    def __exit__(self, kind: type | None, err: BaseException | None, tb: TracebackType | None) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _request(self, signum: int, frame: FrameType | None) -> None:
        self.signum = self.signum or signum

    def asked(self, device: torch.device) -> bool:
        """Whether to stop now; under DDP, whether any rank was asked, so that all stop at the same step."""
        asked = self.signum is not None
        if dist.is_initialized():
            flag = torch.tensor([float(asked)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            asked = bool(flag.item())
            self.signum = self.signum or (signal.SIGTERM if asked else None)
        return asked


@contextmanager
def interrupts(command: str | None) -> Iterator[None]:
    """Within it, SIGTERM raises RunInterrupted in the main thread as Ctrl-C raises
    KeyboardInterrupt (unless SIGTERM has a handler of its own already), and either ends it as
    RunInterrupted naming `command`, the command that resumes: the parent stops its workers
    and the command ends cleanly."""
    main = threading.current_thread() is threading.main_thread()
    previous = None
    if main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM, or a run that either stopped (its checkpoint saved)
        raise RunInterrupted(getattr(err, "signum", signal.SIGINT), command) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise RunInterrupted(signum)
