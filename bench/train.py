"""One run: build, train, select on val, test, measure. A small readable loop."""

from __future__ import annotations

import itertools
import math
import signal
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from bench.build import build_model, param_groups
from bench.checkpoint import RunCheckpoint, RunInterrupted, StopRequests, TrainState, restore, snapshot
from bench.config import ResolvedRun
from bench.device import is_main_process, resolve_device, shard, to_device
from bench.gate import Gate
from bench.measure import measure_efficiency
from bench.presets import Preset
from bench.registry import get_task
from bench.schedule import build_optimizer, build_scheduler
from bench.step_budget import StepBudget, step_budget
from bench.tasks.base import Batch, Task, TaskModel, TensorAVDataset


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


def iterate(ds: Dataset, batch_size: int, shuffle: bool, gen: torch.Generator, skip: int = 0) -> Iterator[Batch]:
    """Whole-batch slicing for in-memory datasets, a DataLoader for real ones; `skip` leaves
    out the first batches without reading them, with the same draws from `gen` (a resumed epoch)."""
    if isinstance(ds, TensorAVDataset):
        order = torch.randperm(len(ds), generator=gen) if shuffle else torch.arange(len(ds))
        yield from ds.batches(batch_size, order[skip * batch_size :])
    else:
        sampler = RandomSampler(ds, generator=gen) if shuffle else SequentialSampler(ds)
        yield from DataLoader(ds, batch_size=batch_size, sampler=Skipped(sampler, skip * batch_size), generator=gen)


class Skipped(Sampler[int]):
    """A sampler's indices after its first `count`: the skipped ones are drawn, never loaded."""

    def __init__(self, sampler: Sampler[int], count: int) -> None:
        self.sampler, self.count = sampler, count

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.count, None)

    def __len__(self) -> int:
        return len(self.sampler) - self.count  # type: ignore[arg-type]


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
    return task.score(
        cfg,
        {
            k: torch.cat(v).float().cpu() if v[0].is_floating_point() else torch.cat(v).cpu()
            for k, v in collected.items()
        },
    )


def train_run(
    run: ResolvedRun,
    preset: Preset,
    datasets: dict[str, Dataset],
    on_step: Callable[[int, int], None] | None = None,
    gate: Gate | None = None,
    checkpoint: RunCheckpoint | None = None,
) -> RunOutcome:
    """Train for the run's step budget (the preset's epochs, or the reference method's
    training FLOPs), validating at each epoch end and after the last, possibly partial,
    epoch, and stopping early after `patience` epochs without a better val selection metric;
    keep the state with the best one, report test metrics with it, then measure efficiency on
    one training batch, alone on the machine (`gate`) when other runs share it.

    With a `checkpoint` (bench.checkpoint), training is saved at every epoch end and, on
    SIGTERM or SIGINT, at the next optimizer step, then RunInterrupted is raised; a run that
    finds its checkpoint continues from it and ends as it would have uninterrupted."""
    gate = gate or Gate()
    task = get_task(run.task)
    device = resolve_device(run.device)
    built = build_model(run, preset, task)
    model = built.model.to(device)
    # DDP averages gradients over ranks; every rank evaluates the whole val/test split itself.
    # A method may leave some trainable parameters out of a step; DDP must not wait for their grads.
    trained = DistributedDataParallel(model, find_unused_parameters=True) if dist.is_initialized() else model
    cfg = run.train
    amp = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if cfg.amp == "bf16" and device.type == "cuda"
        else nullcontext
    )
    optimizer = build_optimizer(model, run)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    gen = torch.Generator().manual_seed(run.seed)
    steps_per_epoch = math.ceil(len(datasets["train"]) / cfg.batch_size)
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is None:
        first = partial(first_batch, datasets["train"], run, device)
        budget = step_budget(run, preset, task, model, first, steps_per_epoch, amp)
    else:
        budget = StepBudget(**saved["budget"])
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch, budget.steps)
    state = TrainState() if saved is None else restore(saved, model, optimizer, scheduler, gen, device)

    def save(shuffle: torch.Tensor) -> None:
        if checkpoint is not None and is_main_process():  # under torchrun the ranks' states are equal
            checkpoint.save(snapshot(model, optimizer, scheduler, state, shuffle, budget, device))

    k = cfg.accumulate
    with StopRequests() as stop:
        while state.step < budget.steps and not state.patience_spent(cfg.patience):
            model.train()
            epoch_start = gen.get_state()
            # every epoch but the last is whole: the batches of this one, and those done already
            batches = min(steps_per_epoch, budget.steps - state.epoch * steps_per_epoch)
            done = state.step - state.epoch * steps_per_epoch
            for i, batch in enumerate(iterate(datasets["train"], cfg.batch_size, True, gen, done), start=done):
                gate.checkpoint()
                batch, scale = shard(to_device(batch, device))
                group = min(k, batches - i + i % k)  # batches of this optimizer step: k, or an epoch's last few
                last = i % k == group - 1
                with nullcontext() if last or trained is model else trained.no_sync():
                    with amp():
                        loss = task.loss(trained(batch["audio"], batch["visual"]), batch)
                    if i % k == 0:
                        optimizer.zero_grad(set_to_none=True)
                    (loss * (scale / group)).backward()  # the group's mean loss
                state.step += 1
                if on_step is not None:
                    on_step(state.step, budget.steps)
                if last:
                    if cfg.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
                    optimizer.step()
                    scheduler.step()
                    if i + 1 < batches and stop.asked(device):  # at an epoch's end, it is saved after val
                        save(epoch_start)
                        raise RunInterrupted(stop.signum or signal.SIGTERM)
                if state.step == budget.steps:
                    break
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"loss is {loss.item()} after epoch {state.epoch}")
            scores = evaluate(model, task, run.task_cfg, datasets["val"], cfg.batch_size, device, amp, gate)
            state.validated(scores[task.selection_metric], model)
            save(gen.get_state())
            if stop.asked(device):
                raise RunInterrupted(stop.signum or signal.SIGTERM)
    assert state.best_state is not None
    model.load_state_dict(state.best_state, strict=False)
    metrics = evaluate(model, task, run.task_cfg, datasets["test"], cfg.batch_size, device, amp, gate)
    metrics["val_" + task.selection_metric] = state.best
    measured = run.measure.enabled and is_main_process()  # other ranks' records are dropped
    efficiency = {}
    if measured:
        with gate.alone():
            efficiency = measure_model(model, task, run, datasets["train"], device, amp)
    stopped = {"stopped_epoch": state.epoch - 1} if state.step < budget.steps else {}  # patience ran out
    return RunOutcome(
        metrics, efficiency, state.best_epoch, state.history, built.tower_records(), budget.record() | stopped
    )


def first_batch(ds: Dataset, run: ResolvedRun, device: torch.device) -> Batch:
    """The first training batch in dataset order, at the run's batch size: what one step is
    counted or measured on."""
    return to_device(next(iterate(ds, run.train.batch_size, False, torch.Generator())), device)


def measure_model(model: TaskModel, task: Task, run: ResolvedRun, train_ds: Dataset, device: torch.device, amp):
    batch = first_batch(train_ds, run, device)

    def loss_fn() -> torch.Tensor:
        with amp():
            return task.loss(model(batch["audio"], batch["visual"]), batch)

    def infer_fn() -> Any:
        with amp():
            return model(batch["audio"], batch["visual"])

    return measure_efficiency(
        model,
        model.encoder,
        loss_fn,
        infer_fn,
        lambda: torch.optim.AdamW(param_groups(model, run), weight_decay=run.train.weight_decay),
        inputs=list(batch.values()),
        batch_size=batch["audio"].shape[0],
        device=device,
        warmup=run.measure.warmup,
        repeats=run.measure.repeats,
    )
