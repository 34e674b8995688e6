"""A run's learning-rate schedule, from its TrainConfig.

The schedule multiplies every group's learning rate by `lr_factor` of the optimizer steps
taken; torch's LambdaLR applies it and is stepped once per optimizer step, so its state (the
steps taken) goes into a run's checkpoint and a resumed run continues the same schedule.
An optimizer step takes `accumulate` batches; every epoch starts a new group, so an epoch's
last group may be shorter and an epoch has ceil(batches per epoch / accumulate) steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

from bench.config import TrainConfig

# the decay at optimizer step `step` (0-based) of `total`, with `per_epoch` steps an epoch
Decay = Callable[[TrainConfig, int, int, int], float]
DECAYS: dict[str, Decay] = {
    "constant": lambda cfg, step, per_epoch, total: 1.0,
    "step": lambda cfg, step, per_epoch, total: cfg.gamma ** (step // per_epoch // cfg.step_size),
    "cosine": lambda cfg, step, per_epoch, total: 0.5 * (1 + math.cos(math.pi * step / total)),
}


def optimizer_steps(batches: int, batches_per_epoch: int, accumulate: int) -> int:
    """The optimizer steps of `batches` batches, epochs of `batches_per_epoch` from the first."""
    epochs, rest = divmod(batches, batches_per_epoch)
    return epochs * math.ceil(batches_per_epoch / accumulate) + math.ceil(rest / accumulate)


def lr_factor(cfg: TrainConfig, step: int, per_epoch: int, total: int) -> float:
    """The learning rate's multiplier at optimizer step `step` (0-based) of `total`, with
    `per_epoch` steps an epoch: the schedule's decay, times a linear warmup that gives step
    s < warmup_steps (s + 1) / (warmup_steps + 1) of it (the decay's epochs count from step 0)."""
    warmup = min(1.0, (step + 1) / (cfg.warmup_steps + 1))
    return warmup * DECAYS[cfg.schedule](cfg, step, per_epoch, total)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, batches_per_epoch: int, batches: int
) -> LambdaLR:
    """The schedule of a run of `batches` batches (its step budget), stepped per optimizer step."""
    per_epoch = optimizer_steps(batches_per_epoch, batches_per_epoch, cfg.accumulate)
    total = optimizer_steps(batches, batches_per_epoch, cfg.accumulate)
    return LambdaLR(optimizer, lambda step: lr_factor(cfg, step, per_epoch, total))
