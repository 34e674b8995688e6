"""Efficiency measurement: one training step measured the same way for every method, by runs,
profiles and the FLOPs budget alike.

A `TrainingStep` is a run's model on one batch, under the run's amp context and with its
optimiser; every figure comes from it. Memory is measured in its own pass, separate from
timing; time is the median of repeats after warm-up, with device synchronisation on CUDA.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Self

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.build import param_groups
from bench.config import ResolvedRun
from bench.tasks.base import Batch, Task, TaskModel, training_loss

StepFn = Callable[[], torch.Tensor]  # runs forward + loss, returns the loss
Amp = Callable[[], AbstractContextManager[Any]]  # a fresh autocast (or no-op) context per step


def autocast_for(amp: str, device: torch.device) -> Amp:
    """The context a run's forward passes run under: bf16 autocast when `train.amp` is bf16 on
    CUDA; a no-op otherwise (a CPU step runs in fp32 whatever `train.amp` says)."""
    if amp == "bf16" and device.type == "cuda":
        return partial(torch.autocast, "cuda", dtype=torch.bfloat16)
    return nullcontext


OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}


def run_optimizer(model: TaskModel, run: ResolvedRun) -> torch.optim.Optimizer:
    """The optimiser a run trains with (`train.optimizer`, AdamW or Adam) over the method's
    and the head's groups; either keeps two states per trainable parameter, which the
    training-memory estimate counts."""
    return OPTIMIZERS[run.train.optimizer](param_groups(model, run), weight_decay=run.train.weight_decay)


@dataclass(frozen=True)
class TrainingStep:
    """One training step of a model on one batch, as its run trains it (amp context and
    optimiser): what every efficiency figure of a run, a profile point and a FLOPs budget
    is measured on."""

    model: TaskModel
    task: Task
    batch: Batch
    amp: Amp
    make_optimizer: Callable[[], torch.optim.Optimizer]

    @classmethod
    def of_run(cls, run: ResolvedRun, model: TaskModel, task: Task, batch: Batch, **fields: Any) -> Self:
        """The step of `run` (its `train.amp` on the batch's device, its optimiser); `fields`:
        a subclass's own."""
        amp = autocast_for(run.train.amp, batch["audio"].device)
        return cls(model, task, batch, amp, partial(run_optimizer, model, run), **fields)

    @property
    def inputs(self) -> list[torch.Tensor]:
        return list(self.batch.values())

    @property
    def batch_size(self) -> int:
        return self.batch["audio"].shape[0]

    def loss(self) -> torch.Tensor:
        with self.amp():
            return training_loss(self.task, self.model, self.batch)

    def infer(self) -> Any:
        with self.amp():
            return self.model(self.batch["audio"], self.batch["visual"])


def _storage_key(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. functional wrappers)
        return None


def _storage_keys(tensors: Iterable[torch.Tensor]) -> set[int]:
    return {k for t in tensors if (k := _storage_key(t)) is not None}


def activation_bytes(loss_fn: StepFn, exclude: Iterable[torch.Tensor]) -> int:
    """Bytes that autograd saves for backward while `loss_fn` runs, counted once per
    storage, excluding the storages of `exclude` (parameters, buffers, inputs).
    Eager mode; deterministic on CPU."""
    excluded = _storage_keys(exclude)
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key is not None and key not in excluded and key not in seen:
            seen[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    del loss
    return sum(seen.values())


def flops_per_step(loss_fn: StepFn) -> int:
    """FLOPs of forward + backward of one training step (torch's flop counter)."""
    counter = FlopCounterMode(display=False)
    with counter:
        loss = loss_fn()
        loss.backward()
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cuda_peak_bytes(step: Callable[[], Any], device: torch.device) -> dict[str, int]:
    """Peak allocated (above what was resident before the step) and peak reserved
    bytes of one step, measured in a pass of its own."""
    _sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    step()
    _sync(device)
    return {
        "cuda_peak_allocated_bytes": torch.cuda.max_memory_allocated(device) - baseline,
        "cuda_peak_reserved_bytes": torch.cuda.max_memory_reserved(device),
    }


def tensor_bytes(params: Iterable[torch.Tensor]) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def train_memory_estimate(params: list[torch.Tensor], trainable: list[torch.Tensor], activations: int) -> int:
    """Weights + gradients + AdamW state (exp_avg, exp_avg_sq) + saved activations:
    what one training step needs resident, device-independent."""
    state_per_param = 2
    return tensor_bytes(params) + tensor_bytes(trainable) * (1 + state_per_param) + activations


def parameter_counts(model: TaskModel) -> dict[str, int]:
    params = list(model.parameters())
    return {
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "encoder_trainable_params": sum(p.numel() for p in model.encoder.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in params),
    }


def memory_figures(step: TrainingStep) -> dict[str, Any]:
    """Parameter counts, saved-activation bytes, the training-memory estimate and, where the
    encoder offers them (optional hooks), its memory floor and its trainable parameters by
    part (with the task head's); one forward pass, freed on return."""
    model = step.model
    params = list(model.parameters())
    out: dict[str, Any] = parameter_counts(model)
    model.train()
    model.zero_grad(set_to_none=True)
    out["activation_bytes"] = activation_bytes(step.loss, [*params, *model.buffers(), *step.inputs])
    trainable = [p for p in params if p.requires_grad]
    out["train_mem_bytes_est"] = train_memory_estimate(params, trainable, out["activation_bytes"])
    with step.amp():
        floor = model.encoder.memory_floor_bytes(step.batch["audio"], step.batch["visual"])
    if floor is not None:
        out["memory_floor_bytes"] = floor
    if (parts := model.encoder.param_breakdown()) is not None:
        head = sum(p.numel() for p in model.head.parameters() if p.requires_grad)
        out |= {f"params_{part}": n for part, n in (parts | {"head": head}).items()}
    gc.collect()
    return out


def flops(step: TrainingStep) -> int:
    """FLOPs of one training step (forward, loss, backward), leaving the model as it found it:
    gradients cleared, buffers (BatchNorm statistics) and the random state restored, so that
    counting does not change the training that follows."""
    model = step.model
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    device = step.batch["audio"].device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model.train()
        counted = flops_per_step(step.loss)
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    return counted


def timing(step: TrainingStep, device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    """Median training-step time and samples/s, after the CUDA allocator's peaks in a pass of
    their own (with the optimiser state already allocated, as in training)."""
    optimizer = step.make_optimizer()

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        step.loss().backward()
        optimizer.step()

    step.model.train()
    out: dict[str, Any] = {}
    if device.type == "cuda":
        train_step()
        out |= cuda_peak_bytes(train_step, device)
    out["train_step_s"] = median_seconds(train_step, device, warmup, repeats)
    out["train_samples_per_s"] = step.batch_size / out["train_step_s"]
    return out


def inference_samples_per_s(step: TrainingStep, device: torch.device, warmup: int, repeats: int) -> float:
    step.model.eval()
    with torch.no_grad():
        return step.batch_size / median_seconds(step.infer, device, warmup, repeats)


def measure_step(
    step: TrainingStep,
    device: torch.device,
    warmup: int,
    repeats: int,
    on_partial: Callable[[dict[str, Any]], None] = lambda figures: None,
) -> dict[str, Any]:
    """Memory pass first (freed), then FLOPs, then the CUDA peaks and time. `on_partial` gets
    the figures measured so far after each of the first two passes (a profile keeps them
    when its process dies in a later one)."""
    out = memory_figures(step)
    on_partial(dict(out))
    out["flops_per_step"] = flops(step)
    on_partial(dict(out))
    return out | timing(step, device, warmup, repeats)
