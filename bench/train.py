"""One run: build, train, select on val, test, measure. A small readable loop."""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from bench.build import build_model
from bench.checkpoint import RunCheckpoint, RunInterrupted, StopRequests, TrainState, restore, snapshot
from bench.config import ResolvedRun
from bench.data.loader import RunSplit, run_splits
from bench.device import is_main_process, resolve_device, shard, to_device
from bench.gate import Gate
from bench.measure import TrainingStep, autocast_for, inference_samples_per_s, measure_step, run_optimizer
from bench.presets import Preset
from bench.registry import get_task
from bench.schedule import build_scheduler
from bench.step_budget import StepBudget, step_budget
from bench.tasks.base import Batch, Task, TaskModel, TensorAVDataset, training_loss
from bench.tracking import RunObserver


class NonFiniteLoss(RuntimeError):
    """Training diverged; the run ends with status `nan`."""


@dataclass
class RunOutcome:
    metrics: dict[str, Any]
    efficiency: dict[str, Any]
    best_epoch: int
    val_history: list[float]
    towers: dict[str, dict[str, Any]]  # tower role -> its weights, architecture and size (Built.tower_records)
    budget: dict[str, Any]  # the steps taken and where their number comes from (StepBudget.record)
    per_item: dict[str, list[float]] | None = None  # test scores per item (Task.per_item), for bootstrap intervals


def iterate(ds: Dataset, batch_size: int, shuffle: bool, gen: torch.Generator) -> Iterator[Batch]:
    """A run's split read as the run reads it, through its own loader (bench.data.loader:
    workers that persist across epochs, the time waited kept); any other read (one batch for
    the step budget or the measurement, a dataset outside a run) in this process: whole-batch
    slicing for in-memory datasets, a DataLoader for real ones."""
    if isinstance(ds, RunSplit):
        if ds.serves(batch_size, shuffle, gen):
            yield from ds
            return
        ds = ds.dataset
    if isinstance(ds, TensorAVDataset):
        order = torch.randperm(len(ds), generator=gen) if shuffle else None
        yield from ds.batches(batch_size, order)
    else:
        yield from DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen)


def predict(
    model: TaskModel,
    task: Task,
    ds: Dataset,
    batch_size: int,
    device: torch.device,
    amp,
    gate: Gate | None = None,
) -> dict[str, torch.Tensor]:
    """The task's predictions over a whole split, in its order, on the CPU."""
    gate = gate or Gate()
    model.eval()
    collected: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad(), amp():
        for batch in iterate(ds, batch_size, False, torch.Generator()):
            gate.checkpoint()
            batch = to_device(batch, device)
            out = model(batch["audio"], batch["visual"])
            for k, v in task.predictions(out, batch).items():
                collected.setdefault(k, []).append(v)
    return {
        k: torch.cat(v).float().cpu() if v[0].is_floating_point() else torch.cat(v).cpu() for k, v in collected.items()
    }


def evaluate(
    model: TaskModel,
    task: Task,
    cfg: Any,
    ds: Dataset,
    batch_size: int,
    device: torch.device,
    amp,
    gate: Gate | None = None,
) -> dict[str, float]:
    return task.score(cfg, predict(model, task, ds, batch_size, device, amp, gate))


def train_run(
    run: ResolvedRun,
    preset: Preset,
    datasets: dict[str, Dataset],
    on_step: Callable[[int, int], None] | None = None,
    gate: Gate | None = None,
    checkpoint: RunCheckpoint | None = None,
    observer: RunObserver | None = None,
) -> RunOutcome:
    """Train for the run's step budget (the preset's epochs, or the reference method's
    training FLOPs), validating at each epoch end and after the last, possibly partial,
    epoch, and stopping early after `patience` epochs without a better val selection metric;
    keep the state with the best one, report test metrics with it, then measure efficiency on
    one training batch, alone on the machine (`gate`) when other runs share it.

    With a `checkpoint` (bench.checkpoint), training is saved at every epoch end, within an
    epoch when the checkpoint says a save is due, and, on SIGTERM or SIGINT, at the next
    optimizer step, then RunInterrupted is raised; a run that
    finds its checkpoint continues from it and ends as it would have uninterrupted. An
    `observer` (bench.tracking) gets each batch's loss, still on the device, with the
    learning rates, and each epoch's val selection metric."""
    gate = gate or Gate()
    task = get_task(run.task)
    device = resolve_device(run.device)
    built = build_model(run, preset, task)
    model = built.model.to(device)
    # DDP averages gradients over ranks; every rank evaluates the whole val/test split itself.
    # A method may leave some trainable parameters out of a step; DDP must not wait for their grads.
    trained = DistributedDataParallel(model, find_unused_parameters=True) if dist.is_initialized() else model
    cfg = run.train
    amp = autocast_for(cfg.amp, device)
    optimizer = run_optimizer(model, run)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    gen = torch.Generator().manual_seed(run.seed)
    datasets = run_splits(datasets, cfg.batch_size, gen, cfg.loader_workers, device)  # one loader per split
    steps_per_epoch = math.ceil(len(datasets["train"]) / cfg.batch_size)
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is None:
        first = partial(first_batch, datasets["train"], run, device)
        budget = step_budget(run, preset, task, model, first, steps_per_epoch)
    else:
        budget = StepBudget(**saved["budget"])
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch, budget.steps)
    state = TrainState() if saved is None else restore(saved, model, optimizer, scheduler, gen, device)

    def save(shuffle: torch.Tensor) -> None:
        if checkpoint is not None and is_main_process():  # under torchrun the ranks' states are equal
            checkpoint.save(snapshot(model, optimizer, scheduler, state, shuffle, budget, device))

    k = cfg.accumulate
    if observer is not None:
        observer.start(state.step)
    with StopRequests() as stop:
        while state.step < budget.steps and not state.patience_spent(cfg.patience):
            model.train()
            epoch_start = gen.get_state()
            # every epoch but the last is whole: the batches of this one, and those done already
            batches = min(steps_per_epoch, budget.steps - state.epoch * steps_per_epoch)
            done = state.step - state.epoch * steps_per_epoch
            for i, batch in enumerate(datasets["train"].read(skip=done), start=done):
                gate.checkpoint()
                batch, scale = shard(to_device(batch, device))
                group = min(k, batches - i + i % k)  # batches of this optimizer step: k, or an epoch's last few
                last = i % k == group - 1
                with nullcontext() if last or trained is model else trained.no_sync():
                    with amp():
                        loss = training_loss(task, trained, batch)
                    if i % k == 0:
                        optimizer.zero_grad(set_to_none=True)
                    (loss * (scale / group)).backward()  # the group's mean loss
                state.step += 1
                if observer is not None:  # the rates this batch's optimizer step applies
                    observer.step(state.step, state.epoch, loss, group_rates(optimizer))
                if on_step is not None:
                    on_step(state.step, budget.steps)
                if last:
                    if cfg.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
                    optimizer.step()
                    scheduler.step()
                    if i + 1 < batches:  # at an epoch's end, it is saved after val
                        if stop.asked(device):
                            save(epoch_start)
                            raise RunInterrupted(stop.signum or signal.SIGTERM)
                        if checkpoint is not None and checkpoint.due():
                            save(epoch_start)
                if state.step == budget.steps:
                    break
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"loss is {loss.item()} after epoch {state.epoch}")
            scores = evaluate(model, task, run.task_cfg, datasets["val"], cfg.batch_size, device, amp, gate)
            state.validated(scores[task.selection_metric], model)
            if observer is not None:
                observer.epoch_end(scores[task.selection_metric])
            save(gen.get_state())
            if stop.asked(device):
                raise RunInterrupted(stop.signum or signal.SIGTERM)
    assert state.best_state is not None
    model.load_state_dict(state.best_state, strict=False)
    test = predict(model, task, datasets["test"], cfg.batch_size, device, amp, gate)
    metrics = task.score(run.task_cfg, test)
    metrics["val_" + task.selection_metric] = state.best
    measured = run.measure.enabled and is_main_process()  # other ranks' records are dropped
    efficiency = {}
    if measured:
        with gate.alone():
            efficiency = measure_model(model, task, run, datasets["train"], device)
    efficiency |= datasets["train"].record()  # the training loop's wait for its batches
    per_item = task.per_item(run.task_cfg, test)
    stopped = {"stopped_epoch": state.epoch - 1} if state.step < budget.steps else {}  # patience ran out
    return RunOutcome(
        metrics, efficiency, state.best_epoch, state.history, built.tower_records(), budget.record() | stopped, per_item
    )


def group_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Each parameter group's learning rate, by the group's name (bench.build.param_groups)."""
    return {group.get("name", str(i)): group["lr"] for i, group in enumerate(optimizer.param_groups)}


def first_batch(ds: Dataset, run: ResolvedRun, device: torch.device) -> Batch:
    """The first training batch in dataset order, at the run's batch size: what one step is
    counted or measured on."""
    return to_device(next(iterate(ds, run.train.batch_size, False, torch.Generator())), device)


def measure_model(
    model: TaskModel, task: Task, run: ResolvedRun, train_ds: Dataset, device: torch.device
) -> dict[str, Any]:
    """Every efficiency key of a run's record: its training step on its first batch (as a
    profile point measures it), then inference throughput on the same batch."""
    step = TrainingStep.of_run(run, model, task, first_batch(train_ds, run, device))
    warmup, repeats = run.measure.warmup, run.measure.repeats
    out = measure_step(step, device, warmup, repeats)
    out["infer_samples_per_s"] = inference_samples_per_s(step, device, warmup, repeats)
    if device.type == "cuda":
        out["cuda_alloc_conf"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    return out
