"""Efficiency measurement (DESIGN section 8): the same work for every method.

Memory is measured in its own pass, separate from timing; time is the median of
repeats after warm-up, with device synchronisation on CUDA.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

StepFn = Callable[[], torch.Tensor]  # runs forward + loss, returns the loss


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


def measure_efficiency(
    model: nn.Module,
    encoder: nn.Module,
    loss_fn: StepFn,
    infer_fn: Callable[[], Any],
    make_optimizer: Callable[[], torch.optim.Optimizer],
    inputs: Iterable[torch.Tensor],
    batch_size: int,
    device: torch.device,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    """Every efficiency key of a run record, for one training batch."""
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    out: dict[str, Any] = {
        "trainable_params": sum(p.numel() for p in trainable),
        "encoder_trainable_params": sum(p.numel() for p in encoder.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in params),
    }
    exclude = [*params, *model.buffers(), *inputs]
    model.train()
    model.zero_grad(set_to_none=True)
    out["activation_bytes"] = activation_bytes(loss_fn, exclude)
    optimizer = make_optimizer()
    out["train_mem_bytes_est"] = train_memory_estimate(params, trainable, out["activation_bytes"])
    out["flops_per_step"] = flops_per_step(loss_fn)
    model.zero_grad(set_to_none=True)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        optimizer.step()

    if device.type == "cuda":
        train_step()  # optimizer state exists before the memory pass, as in training
        out.update(cuda_peak_bytes(train_step, device))
        out["cuda_alloc_conf"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    step_s = median_seconds(train_step, device, warmup, repeats)
    out["train_step_s"] = step_s
    out["train_samples_per_s"] = batch_size / step_s
    model.eval()
    with torch.no_grad():
        infer_s = median_seconds(infer_fn, device, warmup, repeats)
    out["infer_samples_per_s"] = batch_size / infer_s
    return out
