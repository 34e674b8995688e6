"""Learning-rate schedules, optimisers and their settings: the rate at every optimizer step
against the formula, the defaults leave the rate alone, bad settings are usage errors naming
the key, and the recipe settings reach the record."""

from __future__ import annotations

import math

import pytest
import torch

from bench.build import build_model
from bench.cli import main
from bench.config import ConfigError, TrainConfig
from bench.measure import run_optimizer
from bench.plan import RunPlan, resolve
from bench.presets import get_preset
from bench.registry import get_task
from bench.results import ResultsStore
from bench.schedule import build_scheduler, optimizer_steps

# 5 batches an epoch in groups of 2 -> 3 optimizer steps an epoch; 23 batches -> 4 epochs and 3
# batches: 4 * 3 + 2 = 14 optimizer steps
BATCHES_PER_EPOCH, BATCHES, BASE = 5, 23, (1e-3, 5e-6)


def expected_lr(cfg: TrainConfig, step: int, base: float) -> float:
    """The rate at optimizer step `step`, written out by hand."""
    epoch = step // 3  # 3 optimizer steps an epoch
    decay = {
        "constant": 1.0,
        "step": cfg.gamma ** math.floor(epoch / cfg.step_size),
        "cosine": (1 + math.cos(math.pi * step / 14)) / 2,
    }[cfg.schedule]
    ramp = (step + 1) / (cfg.warmup_steps + 1) if step < cfg.warmup_steps else 1.0
    return base * decay * ramp


def rates(cfg: TrainConfig, steps: int) -> list[tuple[float, ...]]:
    """Each group's rate at each optimizer step, stepping the scheduler as training does."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in BASE]
    optimizer = torch.optim.AdamW(groups)
    scheduler = build_scheduler(optimizer, cfg, BATCHES_PER_EPOCH, BATCHES)
    out = []
    for _ in range(steps):
        out.append(tuple(g["lr"] for g in optimizer.param_groups))
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize(
    "settings",
    [
        dict(schedule="constant"),
        dict(schedule="constant", warmup_steps=4),
        dict(schedule="step", step_size=2, gamma=0.35),
        dict(schedule="step", step_size=1, gamma=0.5, warmup_steps=2),
        dict(schedule="cosine"),
        dict(schedule="cosine", warmup_steps=3),
    ],
)
def test_the_rate_at_every_optimizer_step_follows_the_formula(settings: dict) -> None:
    cfg = TrainConfig(accumulate=2, **settings)
    assert optimizer_steps(BATCHES, BATCHES_PER_EPOCH, 2) == 14
    for step, got in enumerate(rates(cfg, 14)):
        want = tuple(expected_lr(cfg, step, base) for base in BASE)
        assert got == pytest.approx(want, rel=1e-12), f"step {step}"


def test_the_step_schedule_decays_once_every_step_size_epochs() -> None:
    got = [lr for lr, _ in rates(TrainConfig(accumulate=2, schedule="step", step_size=2, gamma=0.35), 14)]
    assert got[:6] == [1e-3] * 6  # epochs 0 and 1
    # Python floats through a few products: float64 round-off, well under 1e-12
    assert got[6:12] == pytest.approx([0.35e-3] * 6, rel=1e-12)
    assert got[12:] == pytest.approx([0.35**2 * 1e-3] * 2, rel=1e-12)


def test_the_default_schedule_leaves_every_rate_exactly_as_given() -> None:
    assert all(r == BASE for r in rates(TrainConfig(), 14))


def test_the_optimizer_is_the_configured_one_with_the_methods_rates() -> None:
    (run,) = resolve(RunPlan(["frozen"], ["ave"], "smoke", device="cpu", overrides=["train.optimizer=adam"]))
    model = build_model(run, get_preset("smoke"), get_task("ave")).model
    optimizer = run_optimizer(model, run)
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["weight_decay"] == run.train.weight_decay
    assert [g["lr"] for g in optimizer.param_groups] == [run.train.head_lr]  # frozen: the head only


@pytest.mark.parametrize(
    "item, message",
    [
        ("train.step_size=0", "TrainConfig.step_size must be > 0, got 0"),
        ("train.accumulate=0", "TrainConfig.accumulate must be > 0, got 0"),
        ("train.gamma=1.5", "TrainConfig.gamma must be in (0, 1], got 1.5"),
        ("train.gamma=nan", "train.gamma='nan' is not a finite number"),
        ("train.gamma=0", "TrainConfig.gamma must be in (0, 1], got 0.0"),
        ("train.warmup_steps=-1", "TrainConfig.warmup_steps must be >= 0, got -1"),
        ("train.patience=-2", "TrainConfig.patience must be >= 0, got -2"),
        ("train.schedule=linear", "train.schedule='linear' is not allowed (allowed: constant, step, cosine)"),
        ("train.optimizer=sgd", "train.optimizer='sgd' is not allowed (allowed: adamw, adam)"),
    ],
)
def test_a_bad_schedule_setting_is_a_usage_error_naming_it(item: str, message: str, tmp_path, capsys) -> None:
    with pytest.raises(ConfigError) as err:
        resolve(RunPlan(["frozen"], ["ave"], "smoke", overrides=[item]))
    assert message in str(err.value)
    args = ["run", "--methods", "frozen", "--tasks", "ave", "--preset", "smoke", "--out", str(tmp_path)]
    assert main([*args, "--set", item]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "runs.jsonl").exists()


@pytest.mark.slow
def test_a_recipe_runs_and_its_record_holds_its_settings(tmp_path) -> None:
    """The official AVE recipe's settings: StepLR 3 epochs / 0.35, accumulation 2, early stop after 5."""
    recipe = ["train.schedule=step", "train.step_size=3", "train.gamma=0.35", "train.accumulate=2", "train.patience=5"]
    args = ["run", "--methods", "frozen", "--tasks", "ave", "--preset", "smoke", "--out", str(tmp_path)]
    sets = [x for item in [*recipe, "measure.enabled=false"] for x in ("--set", item)]
    assert main([*args, "--workers", "1", *sets]) == 0
    (record,) = ResultsStore(tmp_path).load().records
    assert record["status"] == "ok"
    train = record["config"]["train"]
    assert (train["schedule"], train["step_size"], train["gamma"], train["accumulate"], train["patience"]) == (
        "step", 3, 0.35, 2, 5
    )  # fmt: skip
    assert (train["optimizer"], train["warmup_steps"]) == ("adamw", 0)
