"""The contract every registered task passes on the smoke preset, as lm-eval's BaseTasks runs
over its tasks: synthetic train/val/test splits with the documented shapes, deterministic by
the data seed; a spec that agrees with them; the head built as the runner builds it, whose
loss is a finite scalar that reaches every head parameter; per-sample predictions; and a
score over a whole split with exactly the task's metric keys, each a finite percentage.
A newly registered task is covered without a line here."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from bench.build import build_model
from bench.config import build_section, parse_overrides
from bench.plan import RunPlan, all_sections, resolve
from bench.presets import get_preset
from bench.registry import get_task, task_names
from bench.tasks.base import Task, TaskModel, TensorAVDataset

PRESET = get_preset("smoke")
SPLITS = ("train", "val", "test")  # every task provides these three
SMALL = {"num_train": 3, "num_val": 4, "num_test": 2}  # videos per split: seconds for every task
EVAL_BATCH = 2  # the val and test splits are scored over several batches, as the runner does
PERCENT = (0.0, 100.0)  # the range of every metric a registered task reports
# a task's other heads (its config's switch), each run through the same contract
HEAD_VARIANTS = {
    "ave": [["ave.head=cmbs"]],
    "avvp": [["avvp.head=han"]],
    "avs_s4": [["avs_s4.head=avsbench"]],
    "avs_ms3": [["avs_ms3.head=avsbench"]],
}
VARIANTS = [(name, []) for name in task_names()] + [
    (name, extra) for name, variants in HEAD_VARIANTS.items() for extra in variants
]


@dataclass
class Case:
    """One registered task on the smoke preset: its config, its synthetic splits, and the frozen
    method's model with the task's head, built by bench.build as a run builds it."""

    name: str
    task: Task
    cfg: Any
    overrides: list[str]
    data: dict[str, TensorAVDataset]
    model: TaskModel


def small_overrides(name: str, task: Task) -> list[str]:
    fields = {f.name for f in dataclasses.fields(task.config_cls)}
    return [f"{name}.{key}={value}" for key, value in SMALL.items() if key in fields]


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: "+".join([v[0], *v[1]]))
def case(request: pytest.FixtureRequest) -> Case:
    name, extra = request.param
    task = get_task(name)
    overrides = small_overrides(name, task) + extra
    cfg = build_section(task.config_cls, name, PRESET.data, parse_overrides(overrides, all_sections()))
    (run,) = resolve(RunPlan(methods=["frozen"], tasks=[name], preset="smoke", overrides=overrides))
    data = task.datasets(cfg, PRESET.shape, "synthetic")
    return Case(name, task, cfg, overrides, data, build_model(run, PRESET, task).model)  # type: ignore[arg-type]


def split_size(case: Case, split: str) -> int:
    return getattr(case.cfg, f"num_{split}")


def test_the_task_is_registered_under_its_name_with_a_selection_metric_it_reports(case: Case) -> None:
    assert case.task.name == case.name
    assert len(set(case.task.metric_keys)) == len(case.task.metric_keys) > 0
    assert case.task.selection_metric in case.task.metric_keys
    assert dataclasses.is_dataclass(case.task.config_cls) and hasattr(case.cfg, "data_seed")


def test_the_runner_trains_on_the_config_the_preset_and_overrides_give(case: Case) -> None:
    (run,) = resolve(RunPlan(methods=["frozen"], tasks=[case.name], preset="smoke", overrides=case.overrides))
    assert run.task_cfg == case.cfg
    assert all(split_size(case, split) == SMALL[f"num_{split}"] for split in SPLITS)  # the overrides took


def test_synthetic_splits_have_the_documented_shapes(case: Case) -> None:
    """audio [N, T, S]: a one-second mono waveform per segment at the preset's rate; visual
    [N, T, 3, H, W]: RGB frames of the preset's size; every target leads with N."""
    assert set(case.data) == set(SPLITS)
    t = case.task.spec(case.cfg).num_segments
    s, h = PRESET.shape.sample_rate, PRESET.shape.image_size
    for split, ds in case.data.items():
        n = split_size(case, split)
        assert isinstance(ds, TensorAVDataset) and len(ds) == n, split
        tensors = ds.tensors
        assert tensors["audio"].shape == (n, t, s) and tensors["audio"].dtype == torch.float32, split
        assert tensors["visual"].shape == (n, t, 3, h, h) and tensors["visual"].dtype == torch.float32, split
        assert all(v.shape[0] == n for v in tensors.values()), split
        assert tensors["audio"].isfinite().all() and tensors["visual"].isfinite().all(), split
        sample = ds[n - 1]
        assert sample.keys() == tensors.keys()
        assert sample["audio"].shape == (t, s) and sample["visual"].shape == (t, 3, h, h)


def test_synthetic_splits_are_deterministic_by_the_data_seed(case: Case) -> None:
    again = case.task.synthetic(case.cfg, PRESET.shape)
    reseeded = case.task.synthetic(dataclasses.replace(case.cfg, data_seed=case.cfg.data_seed + 1), PRESET.shape)
    for split, ds in case.data.items():
        assert again[split].tensors.keys() == ds.tensors.keys(), split
        for key, value in ds.tensors.items():
            assert torch.equal(again[split].tensors[key], value), (split, key)
        for key in ("audio", "visual"):
            assert not torch.equal(reseeded[split].tensors[key], ds.tensors[key]), (split, key)


def test_the_spec_agrees_with_the_data(case: Case) -> None:
    spec = case.task.spec(case.cfg)
    assert spec.name == case.name
    assert spec.kind in ("classification", "segmentation")
    assert spec.needs_maps or spec.kind != "segmentation"  # a mask decoder reads the visual maps
    for split, ds in case.data.items():
        assert ds.tensors["audio"].shape[1] == ds.tensors["visual"].shape[1] == spec.num_segments, split


def test_the_loss_is_a_finite_scalar_whose_gradient_reaches_every_head_parameter(case: Case) -> None:
    """On a whole training batch (weak labels only, where the task's train split has no more),
    with the frozen method: only the head trains. Predictions are detached, one row per sample."""
    model = case.model.train()
    model.zero_grad(set_to_none=True)
    batch = case.data["train"].tensors
    out = model(batch["audio"], batch["visual"])
    loss = case.task.loss(out, batch)
    assert loss.shape == () and loss.requires_grad and math.isfinite(loss.item())
    loss.backward()
    head = [(name, p) for name, p in model.head.named_parameters() if p.requires_grad]
    assert head, "the head has nothing to train"
    for name, p in head:
        assert p.grad is not None and p.grad.isfinite().all(), name
    assert sum(p.grad.abs().sum().item() for _, p in head) > 0  # type: ignore[union-attr]
    preds = case.task.predictions(out, batch)
    n = split_size(case, "train")
    assert preds and all(v.shape[0] == n and not v.requires_grad for v in preds.values())


def predict(case: Case, split: str) -> dict[str, torch.Tensor]:
    """The split's predictions batch by batch, concatenated in the split's order, as the
    runner's evaluation collects them."""
    case.model.eval()
    collected: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for batch in case.data[split].batches(EVAL_BATCH):
            preds = case.task.predictions(case.model(batch["audio"], batch["visual"]), batch)
            n = batch["audio"].shape[0]
            assert all(v.shape[0] == n for v in preds.values()), {k: tuple(v.shape) for k, v in preds.items()}
            for key, value in preds.items():
                collected.setdefault(key, []).append(value)
    return {key: torch.cat(values) for key, values in collected.items()}


@pytest.mark.parametrize("split", ["val", "test"])
def test_the_score_of_a_split_has_exactly_the_metric_keys_each_a_finite_percentage(case: Case, split: str) -> None:
    preds = predict(case, split)
    assert all(v.shape[0] == split_size(case, split) for v in preds.values())
    scores = case.task.score(case.cfg, preds)
    assert sorted(scores) == sorted(case.task.metric_keys) and case.task.selection_metric in scores
    low, high = PERCENT
    for key, value in scores.items():
        assert isinstance(value, float) and math.isfinite(value) and low <= value <= high, (key, value)
