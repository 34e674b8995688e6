"""Efficiency profiling of one training step per method, at any preset, with random weights.

Memory comes from its own pass (saved-tensor bytes, then the training-memory estimate,
and on CUDA the allocator's peaks); time is the median of repeats after warm-up. The
record of each (method, batch size, segments) point is appended to OUT/profile.jsonl;
the Markdown table and the figure are rewritten from the points of this invocation.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import re
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench import forkserver
from bench.build import build_model
from bench.config import ConfigError, ResolvedRun
from bench.device import resolve_device
from bench.jobs import versions
from bench.measure import TrainingStep, measure_step, memory_figures
from bench.plan import RunPlan, resolve
from bench.presets import Preset, get_preset
from bench.registry import get_task
from bench.report.profile import (  # noqa: F401 (re-exported: bench.cli imports them from here)
    console_table,
    with_ratios,
    write_report,
)
from bench.report.profile import profile_frame as frame  # noqa: F401 (re-exported for bench.cli)
from bench.results import Kind, ResultsStore, RunRecord, Status, environment, git_state
from bench.train import first_batch

SWEEP_KEYS = ("batch-size", "segments")
RANDOM_TOWERS = ["towers.audio=random", "towers.visual=random", "towers.shared=random"]
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})
MMAP_THRESHOLD = 1 << 16  # bytes: allocations at least this large get their own mapping (CPU profiling)
MAX_BATCH = 4096  # the CUDA budget search stops here even without an OOM


def parse_size(text: str) -> int:
    """'24GiB', '512MiB', '1e9', '2GB' -> bytes (binary and decimal units)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if m is None or m.group(2).lower() not in _UNITS:
        raise ValueError(f"bad size {text!r}: expected a number with an optional unit (e.g. 24GiB, 512MiB, 1e9)")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value <= 0:
        raise ValueError(f"bad size {text!r}: must be > 0")
    return int(value)


def parse_sweep(text: str) -> tuple[str, list[int]]:
    """'batch-size=1,2,4' -> ('batch-size', [1, 2, 4])."""
    key, _, values = text.partition("=")
    if key not in SWEEP_KEYS:
        raise ValueError(f"--sweep {text!r}: unknown key {key!r} (valid: {', '.join(SWEEP_KEYS)})")
    try:
        points = [int(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--sweep {text!r}: values must be comma-separated integers") from None
    if not points or min(points) <= 0:
        raise ValueError(f"--sweep {text!r}: give one or more positive integers")
    return key, points


@dataclass
class ProfileSpec:
    methods: list[str]
    preset: str = "tiny"
    task: str = "ave"
    batch_size: int = 1
    segments: int = 10
    device: str = "auto"
    warmup: int = 2
    repeats: int = 5
    reference: str = "lavish"
    sweep: tuple[str, list[int]] | None = None
    budget: int | None = None  # bytes
    overrides: list[str] = field(default_factory=list)

    def points(self) -> list[tuple[int, int]]:
        """(batch size, segments) per profiled point."""
        if self.sweep is None:
            return [(self.batch_size, self.segments)]
        key, values = self.sweep
        return [(v, self.segments) if key == "batch-size" else (self.batch_size, v) for v in values]


def resolve_point(spec: ProfileSpec, method: str, batch_size: int, segments: int) -> ResolvedRun:
    """The run config of one point, through the runner's resolver (same names, same checks)."""
    cfg_fields = get_task(spec.task).config_cls.__dataclass_fields__
    if "segments" not in cfg_fields and spec.sweep is not None and spec.sweep[0] == "segments":
        raise ConfigError(f"--sweep segments: task {spec.task!r} has a fixed number of frames")
    sizes = [f"{spec.task}.{k}={v}" for k, v in (("num_train", batch_size), ("num_val", 1), ("num_test", 1))]
    seg = [f"{spec.task}.segments={segments}"] if "segments" in cfg_fields else []
    overrides = [
        *RANDOM_TOWERS,
        *sizes,
        *seg,
        f"train.batch_size={batch_size}",
        f"measure.warmup={spec.warmup}",
        f"measure.repeats={spec.repeats}",
        *spec.overrides,
    ]
    plan = RunPlan(methods=[method], tasks=[spec.task], preset=spec.preset, device=spec.device, overrides=overrides)
    return resolve(plan)[0]


@dataclass(frozen=True)
class Step(TrainingStep):
    """A built model's training step (random weights) on the first batch of the task's
    synthetic train split, and what its towers are (architecture and parameters per role)."""

    towers: dict[str, dict[str, Any]]


def build_step(run: ResolvedRun, preset: Preset, device: torch.device) -> Step:
    """The point's train split holds one batch (resolve_point): its values shape the batch but do
    not change memory or FLOPs, so the step is measured as a run measures its own."""
    task = get_task(run.task)
    batch = first_batch(task.synthetic(run.task_cfg, preset.shape)["train"], run, device)
    built = build_model(run, preset, task)
    model = built.model.to(device).train()  # training mode, as a run steps (towers are built in eval mode)
    return Step.of_run(run, model, task, batch, towers=built.tower_records())


def profile_step(
    step: Step,
    device: torch.device,
    warmup: int,
    repeats: int,
    on_partial: Callable[[dict[str, Any]], None] = lambda figures: None,
) -> dict[str, Any]:
    """A run's figures of the step (bench.measure.measure_step), with its towers' parameters."""
    towers = {f"{role}_tower_params": tower["params"] for role, tower in step.towers.items()}
    return measure_step(step, device, warmup, repeats, lambda figures: on_partial(figures | towers)) | towers


def _one_step(step: Step, device: torch.device) -> None:
    optimizer = step.make_optimizer()
    step.loss().backward()
    optimizer.step()
    torch.cuda.synchronize(device)


def _fits_on_cuda(spec: ProfileSpec, method: str, preset: Preset, device: torch.device, batch_size: int) -> bool:
    try:
        _one_step(build_step(resolve_point(spec, method, batch_size, spec.segments), preset, device), device)
        return True
    except torch.OutOfMemoryError:
        return False
    finally:  # the step's tensors are unreachable now: release them before the next try
        gc.collect()
        torch.cuda.empty_cache()


def largest_batch(spec: ProfileSpec, method: str, preset: Preset, device: torch.device) -> dict[str, Any]:
    """Largest batch whose training step fits in `spec.budget` bytes.

    CPU: train_mem_bytes_est is affine in the batch size (weights and optimizer state are
    fixed, activations grow per sample), so two memory passes (batch 1 and 2) give the
    fixed part and the per-sample slope. CUDA: the process is capped at the budget and
    real steps are tried, doubling the batch until OOM, then bisecting.
    """
    assert spec.budget is not None
    if device.type != "cuda":
        est = [
            memory_figures(build_step(resolve_point(spec, method, b, spec.segments), preset, device))[
                "train_mem_bytes_est"
            ]
            for b in (1, 2)
        ]
        per_sample, fixed = est[1] - est[0], 2 * est[0] - est[1]
        fits = math.floor((spec.budget - fixed) / per_sample) if per_sample > 0 else MAX_BATCH
        return {
            "budget_bytes": spec.budget,
            "budget_max_batch": max(0, min(fits, MAX_BATCH)),
            "budget_method": "linear fit of train_mem_bytes_est at batch 1 and 2",
            "budget_fixed_bytes": fixed,
            "budget_per_sample_bytes": per_sample,
        }
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, spec.budget / total), device)
    try:
        ok, bad = 0, None
        b = 1
        while b <= MAX_BATCH and _fits_on_cuda(spec, method, preset, device, b):
            ok, b = b, b * 2
        bad = b if b <= MAX_BATCH else None
        while bad is not None and bad - ok > 1:
            mid = (ok + bad) // 2
            ok, bad = (mid, bad) if _fits_on_cuda(spec, method, preset, device, mid) else (ok, mid)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    return {"budget_bytes": spec.budget, "budget_max_batch": ok, "budget_method": "CUDA steps until OOM, bisected"}


@dataclass(frozen=True)
class Point:
    """One (method, batch size, segments) point of a profile, and the command that asked for it."""

    spec: ProfileSpec
    method: str
    batch_size: int
    segments: int
    command: str
    argv: list[str]
    git: dict[str, Any]  # read once when the profile starts

    def record(self, status: Status, error: str | None, efficiency: dict[str, Any], **extra: Any) -> RunRecord:
        run = resolve_point(self.spec, self.method, self.batch_size, self.segments)
        return RunRecord(
            kind=Kind.PROFILE,
            method=self.method,
            task=self.spec.task,
            preset=self.spec.preset,
            batch_size=self.batch_size,
            segments=getattr(run.task_cfg, "segments", None),  # None: the task fixes its frames
            sweep=self.spec.sweep[0] if self.spec.sweep else None,
            reference=self.spec.reference,
            versions=versions(run),
            status=status,
            error=error,
            efficiency=efficiency,
            config=run.to_dict(),
            command=self.command,
            argv=self.argv,
            env=environment(resolve_device(self.spec.device)),
            cuda_alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
            git=self.git,
            **extra,
        )


def profile_point(point: Point, on_partial: Callable[[dict[str, Any]], None] = lambda figures: None) -> RunRecord:
    """One record; OOM and other failures end the point with a status, not the profile."""
    spec = point.spec
    preset = get_preset(spec.preset)
    run = resolve_point(spec, point.method, point.batch_size, point.segments)
    device = resolve_device(spec.device)
    start = time.perf_counter()
    status, error, efficiency, extra = Status.OK, None, {}, {}
    try:
        efficiency = profile_step(build_step(run, preset, device), device, spec.warmup, spec.repeats, on_partial)
        gc.collect()
        if spec.budget is not None:
            efficiency.update(largest_batch(spec, point.method, preset, device))
    except torch.OutOfMemoryError as err:
        status, error = Status.OOM, str(err).splitlines()[0]
    except Exception as err:  # a failed point is recorded; the profile goes on
        status, error = Status.ERROR, f"{type(err).__name__}: {err}"
        extra = {"traceback": traceback.format_exc(limit=8)}
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return point.record(status, error, efficiency, wall_s=time.perf_counter() - start, **extra)


def _point_worker(point: Point, conn: Any) -> None:
    """Body of a point's own process: figures go back through `conn` as they are measured."""
    allocator = return_freed_memory_promptly() if resolve_device(point.spec.device).type == "cpu" else ""
    record = profile_point(point, on_partial=lambda figures: conn.send(("partial", figures)))
    record.cpu_allocator = allocator
    conn.send(("record", record))
    conn.close()


def isolated_point(point: Point, worker: Callable[[Point, Any], None] = _point_worker) -> RunRecord:
    """Profile one point in a process of its own (`worker`, a module-level function), so that
    its resident memory starts from nothing (no allocator state left by the methods before
    it), and so that a point the operating system kills for memory (a CPU step raises no
    OOM error) becomes a `killed` record keeping the memory figures measured before it
    died, instead of ending the whole profile."""
    ctx = forkserver.context()  # a clean process: no forked OpenMP or CUDA state, no allocator history
    receive, send = ctx.Pipe(duplex=False)
    start = time.perf_counter()
    proc = ctx.Process(target=worker, args=(point, send), daemon=True)
    proc.start()
    send.close()
    partial: dict[str, Any] = {}
    record = None
    while record is None:
        try:
            kind, payload = receive.recv()
        except EOFError:
            break
        if kind == "partial":
            partial = payload
        else:
            record = payload
    proc.join()
    if record is not None:
        return record
    code = proc.exitcode or 0
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    passes = "the memory and FLOP passes" if "flops_per_step" in partial else "the memory pass"
    done = f"after {passes}" if partial else "before any figure"
    error = f"the point's process was {how} {done} (on CPU most likely out of memory); figures so far are kept"
    return point.record(Status.KILLED, error, partial, wall_s=time.perf_counter() - start)


def return_freed_memory_promptly() -> str:
    """Serve every large CPU allocation from its own mapping (glibc mallopt), so freed
    activations go back to the system at once. glibc's default raises the mmap threshold
    after the first large free and then keeps freed blocks in a fragmented heap: at the
    paper preset that held 2-3 x a step's activations resident and ran LAVisH out of
    24 GB. It changes resident memory only, never what is measured. Returns the setting
    (recorded with each profile point), or "" where glibc is absent."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return ""
    m_mmap_threshold = -3
    return f"mallopt(M_MMAP_THRESHOLD, {MMAP_THRESHOLD})" if libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD) else ""


def run_profile(
    spec: ProfileSpec,
    out_dir: Path,
    command: str,
    argv: list[str],
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Profile every (point, method), each in its own process, appending each record as
    it finishes."""
    for method in spec.methods:  # bad names and overrides fail before any work
        for b, t in spec.points():
            resolve_point(spec, method, b, t)
    store = ResultsStore(out_dir, "profile.jsonl")
    git = git_state(out_dir)
    records = []
    for b, t in spec.points():
        for method in spec.methods:
            record = isolated_point(Point(spec, method, b, t, command, argv, git))
            store.append(record)
            records.append(record.to_dict())
            if on_record is not None:
                on_record(records[-1])
    return records
