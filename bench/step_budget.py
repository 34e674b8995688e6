"""How many optimiser steps a run takes: the preset's epochs, or the training FLOPs of a
reference method at the preset's epochs.

The methods' steps differ several-fold in cost and every method is still improving at a
small preset's epochs, so a table at equal epochs hides the trade between step cost and
accuracy. Under `train.budget=flops` each method trains for the total training FLOPs that
the reference method spends in the preset's epochs: cheap steps buy more of them. FLOPs are
counted (torch's flop counter) on one training step at the run's batch size, so the budget
is a deterministic function of task, preset, batch size and the two methods.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bench.build import build_model
from bench.config import ResolvedRun, TowersConfig
from bench.measure import TrainingStep, flops
from bench.presets import Preset
from bench.registry import get_method
from bench.tasks.base import Batch, Task, TaskModel
from bench.weights import random_sources


@dataclass(frozen=True)
class StepBudget:
    """The steps a run takes and where the number comes from (kept in the run's record)."""

    kind: str  # epochs | flops
    steps: int
    steps_per_epoch: int
    flops_per_step: int | None = None  # this method's training step (flops only)
    reference: str | None = None
    reference_flops_per_step: int | None = None
    reference_steps: int | None = None

    def record(self) -> dict[str, Any]:
        out = dataclasses.asdict(self) | {"epochs": self.steps / self.steps_per_epoch}
        if self.kind == "flops":
            out["total_flops"] = self.reference_flops_per_step * self.reference_steps  # type: ignore[operator]
        return {k: v for k, v in out.items() if v is not None}


def reference_flops(run: ResolvedRun, preset: Preset, task: Task, batch: Batch) -> int:
    """One training step of the reference method at its default config, built for the same
    task, preset, seed and batch, with random towers (FLOPs do not depend on weight values,
    and no checkpoint needs to be found for a model that is only counted), under the run's amp."""
    method = run.train.budget_reference
    reference = dataclasses.replace(
        run,
        method=method,
        method_cfg=get_method(method).config_cls(),
        towers=TowersConfig(audio="random", visual="random", shared="random"),
        weights=random_sources(),
    )
    devices = [batch["audio"].device] if batch["audio"].is_cuda else []
    with torch.random.fork_rng(devices=devices):  # building seeds the global generator
        model = build_model(reference, preset, task).model.to(batch["audio"].device)
    return flops(TrainingStep.of_run(reference, model, task, batch))


def step_budget(
    run: ResolvedRun,
    preset: Preset,
    task: Task,
    model: TaskModel,
    batch: Callable[[], Batch],
    steps_per_epoch: int,
) -> StepBudget:
    """`epochs`: the preset's epochs. `flops`: the reference method's FLOPs per step times its
    steps at the preset's epochs, divided by this method's FLOPs per step on `batch()`
    (rounded down, at least one step). The reference is always built at its default config,
    so every run of a sweep, the reference method's own included, gets the same total."""
    epoch_steps = run.train.epochs * steps_per_epoch
    if run.train.budget == "epochs":
        return StepBudget("epochs", epoch_steps, steps_per_epoch)
    counted = batch()
    own = flops(TrainingStep.of_run(run, model, task, counted))
    ref = reference_flops(run, preset, task, counted)
    steps = max(1, ref * epoch_steps // own)
    return StepBudget("flops", steps, steps_per_epoch, own, run.train.budget_reference, ref, epoch_steps)
