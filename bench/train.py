"""One run: build, train, select on val, test, measure. A small readable loop."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from bench.config import ConfigError, ResolvedRun
from bench.measure import measure_efficiency
from bench.presets import Preset
from bench.pretrain import default_checkpoints
from bench.registry import get_method, get_task
from bench.results import tower_weights
from bench.tasks.base import Batch, Task, TaskModel, TensorAVDataset
from bench.towers import build_towers


class NonFiniteLoss(RuntimeError):
    """Training diverged; the run ends with status `nan`."""


@dataclass
class RunOutcome:
    metrics: dict[str, Any]
    efficiency: dict[str, Any]
    best_epoch: int
    val_history: list[float]
    weights: dict[str, dict[str, str | None]]  # tower role -> file and digest (bench.results.tower_weights)


def resolve_device(name: str) -> torch.device:
    """cpu, or the current CUDA device with its index (some torch.cuda calls, such as
    set_per_process_memory_fraction, refuse a bare "cuda"); auto picks CUDA when present."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device cuda: CUDA is not available here (torch {torch.__version__})")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def world_size() -> int:
    """Processes of this run: torchrun sets WORLD_SIZE; 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Only rank 0 writes records, tables and figures."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def distributed(device_name: str) -> Iterator[None]:
    """Under torchrun (WORLD_SIZE > 1): one process group for all runs of the command,
    gloo on CPU, nccl on CUDA with one GPU per local rank. A no-op otherwise."""
    if world_size() == 1:
        yield
        return
    cuda = resolve_device(device_name).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard(batch: Batch) -> tuple[Batch, float]:
    """This rank's slice of a global batch, and the loss scale that makes DDP's gradient
    average equal the gradient of the whole batch's mean loss when slices differ in size."""
    if not dist.is_initialized():
        return batch, 1.0
    rank, world = dist.get_rank(), dist.get_world_size()
    total = next(iter(batch.values())).shape[0]
    local = {k: v.tensor_split(world)[rank] for k, v in batch.items()}
    return local, next(iter(local.values())).shape[0] * world / total


def iterate(ds: Dataset, batch_size: int, shuffle: bool, gen: torch.Generator) -> Iterator[Batch]:
    """Whole-batch slicing for in-memory datasets, a DataLoader for real ones."""
    if isinstance(ds, TensorAVDataset):
        order = torch.randperm(len(ds), generator=gen) if shuffle else None
        yield from ds.batches(batch_size, order)
    else:
        yield from DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen)


def to_device(batch: Batch, device: torch.device) -> Batch:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def evaluate(
    model: TaskModel, task: Task, cfg: Any, ds: Dataset, batch_size: int, device: torch.device, amp
) -> dict[str, float]:
    model.eval()
    collected: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad(), amp():
        for batch in iterate(ds, batch_size, False, torch.Generator()):
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


def checkpoints_for(preset: Preset, run: ResolvedRun) -> dict[str, Path | None]:
    """Tower checkpoint per role: explicit path, `random`, or the preset's pretrained
    weights (shipped, or rebuilt into the user cache on first use). An unset shared
    tower follows an explicitly set visual one (LAVisH shares the visual tower), else
    takes the preset's own shared weights, else the visual tower's."""
    chosen: dict[str, Path | None] = {}
    for role in ("audio", "visual", "shared"):
        value = getattr(run.towers, role)
        if value == "random":
            chosen[role] = None
        elif value:
            chosen[role] = Path(value)
        elif role == "shared" and (run.towers.visual or role not in preset.default_weights):
            chosen[role] = chosen["visual"]
        else:
            chosen[role] = default_checkpoints(preset).get(role)
    return chosen


def build_model(run: ResolvedRun, preset: Preset, task: Task) -> tuple[TaskModel, dict[str, Path | None]]:
    """The model, and the checkpoint of each tower role the method actually built."""
    torch.manual_seed(run.seed)
    checkpoints = checkpoints_for(preset, run)
    towers = build_towers(preset, checkpoints, run.seed)
    encoder = get_method(run.method).build(towers, task.spec(run.task_cfg), run.method_cfg)
    head = task.head(run.task_cfg, encoder)
    return TaskModel(encoder, head), {role: checkpoints[role] for role in towers.built_roles}


def param_groups(model: TaskModel, run: ResolvedRun) -> list[dict[str, Any]]:
    head = [p for p in model.head.parameters() if p.requires_grad]
    return [*model.encoder.param_groups(run.train.lr), {"params": head, "lr": run.train.head_lr, "name": "head"}]


def train_run(
    run: ResolvedRun,
    preset: Preset,
    datasets: dict[str, Dataset],
    on_step: Callable[[int, int], None] | None = None,
) -> RunOutcome:
    """Train for `epochs`, keep the state with the best val selection metric, report
    test metrics with it, then measure efficiency on one training batch."""
    task = get_task(run.task)
    device = resolve_device(run.device)
    model, checkpoints = build_model(run, preset, task)
    model = model.to(device)
    # DDP averages gradients over ranks; every rank evaluates the whole val/test split itself.
    # A method may leave some trainable parameters out of a step; DDP must not wait for their grads.
    trained = DistributedDataParallel(model, find_unused_parameters=True) if dist.is_initialized() else model
    cfg = run.train
    amp = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if cfg.amp == "bf16" and device.type == "cuda"
        else nullcontext
    )
    optimizer = torch.optim.AdamW(param_groups(model, run), weight_decay=cfg.weight_decay)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    gen = torch.Generator().manual_seed(run.seed)
    steps_per_epoch = math.ceil(len(datasets["train"]) / cfg.batch_size)
    best, best_state, best_epoch, history = -math.inf, None, -1, []
    for epoch in range(cfg.epochs):
        model.train()
        for i, batch in enumerate(iterate(datasets["train"], cfg.batch_size, True, gen)):
            batch, scale = shard(to_device(batch, device))
            with amp():
                loss = task.loss(trained(batch["audio"], batch["visual"]), batch)
            optimizer.zero_grad(set_to_none=True)
            (loss * scale).backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            if on_step is not None:
                on_step(epoch * steps_per_epoch + i + 1, cfg.epochs * steps_per_epoch)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss is {loss.item()} after epoch {epoch}")
        val = evaluate(model, task, run.task_cfg, datasets["val"], cfg.batch_size, device, amp)[task.selection_metric]
        history.append(val)
        if val > best:
            best, best_epoch = val, epoch
            best_state = trainable_state(model)
    assert best_state is not None
    model.load_state_dict(best_state, strict=False)
    metrics = evaluate(model, task, run.task_cfg, datasets["test"], cfg.batch_size, device, amp)
    metrics["val_" + task.selection_metric] = best
    measured = run.measure.enabled and is_main_process()  # other ranks' records are dropped
    efficiency = measure_model(model, task, run, datasets["train"], device, amp) if measured else {}
    return RunOutcome(metrics, efficiency, best_epoch, history, tower_weights(checkpoints))


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of what training changes (trainable parameters and buffers), not the
    frozen towers: selecting the best epoch must not double the model's memory."""
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    state.update({n: b.detach().clone() for n, b in model.named_buffers()})
    return state


def measure_model(model: TaskModel, task: Task, run: ResolvedRun, train_ds: Dataset, device: torch.device, amp):
    batch = to_device(next(iterate(train_ds, run.train.batch_size, False, torch.Generator())), device)

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
