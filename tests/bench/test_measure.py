import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import cache
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import bench.measure
from bench.build import build_model
from bench.config import ResolvedRun
from bench.measure import TrainingStep, activation_bytes, autocast_for, flops, flops_per_step, tensor_bytes
from bench.plan import RunPlan, resolve
from bench.presets import get_preset
from bench.profile import RANDOM_TOWERS, Point, ProfileSpec, profile_point
from bench.registry import get_task
from bench.step_budget import step_budget
from bench.tasks.base import TaskModel
from bench.train import first_batch, measure_model


def _chain() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_activation_bytes_of_a_known_chain():
    # Linear1 saves its input (excluded) and weight (a parameter: excluded);
    # ReLU saves its output [5, 16]; Linear2 saves that same tensor as input
    # (one storage, counted once): 5 * 16 * 4 bytes.
    model = _chain()
    x = torch.randn(5, 8)
    got = activation_bytes(lambda: model(x).sum(), [*model.parameters(), x])
    assert got == 5 * 16 * 4


def test_activation_bytes_counts_inputs_when_not_excluded():
    model = _chain()
    x = torch.randn(5, 8)
    got = activation_bytes(lambda: model(x).sum(), list(model.parameters()))
    assert got == 5 * 16 * 4 + 5 * 8 * 4


def test_frozen_trunk_under_no_grad_saves_only_what_the_head_reads():
    trunk = _chain().requires_grad_(False)
    head = nn.Linear(4, 3)
    x = torch.randn(5, 8)

    def step() -> torch.Tensor:
        with torch.no_grad():
            feats = trunk(x)
        return head(feats).sum()

    # the weight gradient of the head needs its input [5, 4]: 80 bytes, nothing of the trunk
    assert activation_bytes(step, [*head.parameters(), x]) == 5 * 4 * 4


def test_flops_per_step_of_a_linear():
    lin = nn.Linear(8, 4, bias=False)
    x = torch.randn(5, 8)
    # forward mm 2*5*8*4 = 320; backward: weight grad only (x needs no grad) = 320
    assert flops_per_step(lambda: lin(x).sum()) == 640


def test_tensor_bytes():
    assert tensor_bytes([torch.zeros(3, 4), torch.zeros(2, dtype=torch.bfloat16)]) == 48 + 4


# One measurement path: a run, a profile point and a FLOPs budget measure the same training step.

SMOKE = get_preset("smoke")
CPU = torch.device("cpu")
ONCE = ["measure.warmup=0", "measure.repeats=1"]
TIMINGS = {"train_step_s", "train_samples_per_s", "infer_samples_per_s"}


def _run_step(method: str, overrides: tuple[str, ...]) -> tuple[ResolvedRun, TaskModel, Dataset]:
    """A run of `method` on AVE at smoke (random towers), its untrained model and its train split."""
    (run,) = resolve(RunPlan([method], ["ave"], "smoke", device="cpu", overrides=[*RANDOM_TOWERS, *ONCE, *overrides]))
    task = get_task("ave")
    return run, build_model(run, SMOKE, task).model, task.synthetic(run.task_cfg, SMOKE.shape)["train"]


@cache  # the figures are deterministic: tests that compare with them share them
def run_figures(method: str, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    run, model, train = _run_step(method, overrides)
    return measure_model(model, get_task("ave"), run, train, CPU)


@cache
def point_record(method: str, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """A profile point at the run's batch size and segments, through the profile's own code path."""
    spec = ProfileSpec([method], "smoke", segments=SMOKE.data["segments"], device="cpu", warmup=0, repeats=1)
    spec.overrides = list(overrides)
    point = Point(spec, method, SMOKE.train["batch_size"], spec.segments, "cmd", [], {"sha": "abc", "dirty": False})
    record = profile_point(point).to_dict()
    assert record["status"] == "ok", record["error"]
    return record


def untimed(figures: dict[str, Any]) -> dict[str, Any]:
    """The deterministic figures, without the profile's tower sizes (a run records its towers apart)."""
    return {k: v for k, v in figures.items() if k not in TIMINGS and not k.endswith("_tower_params")}


@pytest.mark.parametrize("method", ["frozen", "lavish", "mettle"])
def test_a_profile_point_and_a_run_give_the_same_figures(method: str) -> None:
    run, point = run_figures(method), point_record(method)["efficiency"]
    keys = ["activation_bytes", "train_mem_bytes_est", "flops_per_step"]
    keys += ["trainable_params", "total_params", "encoder_trainable_params"]
    assert all(run[k] > 0 for k in keys if k != "encoder_trainable_params")
    assert {k: run[k] for k in keys} == {k: point[k] for k in keys}
    assert untimed(run) == untimed(point)  # the encoder's hooks (Mettle's floor and parts) too
    assert ("memory_floor_bytes" in run) == (method == "mettle")
    assert TIMINGS <= set(run) and "infer_samples_per_s" not in point


def test_bf16_on_a_cpu_is_fp32_for_a_profile_as_for_a_run() -> None:
    """`--set train.amp=bf16` autocasts on CUDA only: on a CPU the profile's step is the run's,
    and both equal the fp32 step."""
    bf16 = ("train.amp=bf16",)
    assert autocast_for("bf16", CPU) is nullcontext
    point = point_record("mettle", bf16)
    assert point["config"]["train"]["amp"] == "bf16"
    assert untimed(point["efficiency"]) == untimed(run_figures("mettle", bf16))
    assert untimed(point["efficiency"]) == untimed(point_record("mettle")["efficiency"])


def test_autocast_for_casts_to_bf16_on_cuda_only() -> None:
    assert autocast_for("off", torch.device("cuda", 0)) is nullcontext
    assert autocast_for("off", CPU) is nullcontext
    with warnings.catch_warnings():  # built on a machine without CUDA: torch warns and disables it
        warnings.simplefilter("ignore")
        context = autocast_for("bf16", torch.device("cuda", 0))()
    assert isinstance(context, torch.autocast)
    assert (context.device, context.fast_dtype) == ("cuda", torch.bfloat16)


def test_runs_profiles_and_flops_budgets_measure_under_the_runs_amp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pass of each path enters the amp context that `train.amp` gives on the step's
    device: warm-up 0 and one repeat make it once per pass."""
    asked: list[tuple[str, str]] = []
    entered: list[str] = []

    def counting_autocast_for(amp: str, device: torch.device) -> Callable[[], Any]:
        asked.append((amp, device.type))

        @contextmanager
        def counting() -> Iterator[None]:
            entered.append(amp)
            yield

        return counting

    monkeypatch.setattr(bench.measure, "autocast_for", counting_autocast_for)
    bf16 = ("train.amp=bf16",)
    point_record.__wrapped__("frozen", bf16)
    assert len(entered) == 4  # saved activations, the memory-floor hook, FLOPs, one timed step
    run_figures.__wrapped__("frozen", bf16)
    assert len(entered) == 4 + 5  # the same, and one inference
    run, model, train = _run_step("frozen", (*bf16, "train.budget=flops", "train.budget_reference=frozen"))
    budget = step_budget(run, SMOKE, get_task("ave"), model, lambda: first_batch(train, run, CPU), steps_per_epoch=2)
    assert budget.kind == "flops" and budget.reference == "frozen"
    assert len(entered) == 4 + 5 + 2  # the run's step and the reference method's
    assert set(entered) == {"bf16"} and set(asked) == {("bf16", "cpu")}


def test_counting_flops_leaves_the_model_as_it_was() -> None:
    """LAVisH has BatchNorm statistics and the HTS-AT tower draws SpecAugment masks: counting a
    step must not move either, nor leave gradients behind."""
    run, model, train = _run_step("lavish", ())
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    rng = torch.get_rng_state()
    assert flops(TrainingStep.of_run(run, model, get_task("ave"), first_batch(train, run, CPU))) > 0
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert all(p.grad is None for p in model.parameters())
