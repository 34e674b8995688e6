"""Equal-compute training (`train.budget=flops`) on the smoke preset: step counts, validation
points and the record (counting a step's FLOPs is bench.measure.flops, tested with it)."""

from __future__ import annotations

import pytest

import bench.step_budget
from bench.cli import main
from bench.config import ConfigError
from bench.measure import TrainingStep
from bench.plan import RunPlan, resolve
from bench.presets import get_preset
from bench.registry import get_task
from bench.results import ResultsStore
from bench.runner import execute
from bench.train import train_run

# smoke: 16 training samples in batches of 8 -> 2 steps per epoch; 2 epochs -> the reference takes 4 steps
SMOKE = ["train.epochs=2", "measure.enabled=false"]
FAKE_FLOPS = {"MettleEncoder": 2_000_000, "PooledTowersEncoder": 1_600_000, "LavishEncoder": 4_000_000}


@pytest.fixture
def fake_flops(monkeypatch: pytest.MonkeyPatch) -> None:
    """A training step's FLOPs by encoder class (the reference, Mettle, counted the same way)."""

    def flops(step: TrainingStep) -> int:
        return FAKE_FLOPS[type(step.model.encoder).__name__]

    monkeypatch.setattr(bench.step_budget, "flops", flops)


def test_methods_with_different_step_flops_take_steps_in_the_inverse_ratio(tmp_path, fake_flops) -> None:
    """Reference Mettle: 4 steps x 2.0 MFLOP = 8 MFLOP. Frozen at 1.6 MFLOP a step takes 5 (2.5
    epochs: validated after epochs 1, 2 and the half third), LAVisH at 4.0 takes 2 (one epoch)."""
    overrides = [*SMOKE, "train.budget=flops", "train.budget_reference=mettle"]
    records = execute(RunPlan(["frozen", "lavish"], ["ave"], "smoke", device="cpu", overrides=overrides), tmp_path)
    by_method = {r["method"]: r for r in records}
    assert all(r["status"] == "ok" for r in records)
    frozen, lavish = by_method["frozen"]["budget"], by_method["lavish"]["budget"]
    assert frozen["steps"] * FAKE_FLOPS["PooledTowersEncoder"] == lavish["steps"] * FAKE_FLOPS["LavishEncoder"]
    assert (frozen["steps"], lavish["steps"]) == (5, 2)
    for budget, encoder in ((frozen, "PooledTowersEncoder"), (lavish, "LavishEncoder")):
        assert budget["kind"] == "flops" and budget["reference"] == "mettle" and budget["reference_steps"] == 4
        assert budget["flops_per_step"] == FAKE_FLOPS[encoder] and budget["total_flops"] == 8_000_000
    assert frozen["epochs"] == 2.5 and len(by_method["frozen"]["val_history"]) == 3
    assert lavish["epochs"] == 1.0 and len(by_method["lavish"]["val_history"]) == 1
    stored = {r["method"]: r["budget"] for r in ResultsStore(tmp_path).load().records}
    assert stored == {"frozen": frozen, "lavish": lavish}


def test_the_epochs_budget_keeps_the_preset_epochs() -> None:
    steps: list[tuple[int, int]] = []
    (run,) = resolve(RunPlan(["frozen"], ["ave"], "smoke", device="cpu", overrides=SMOKE))
    datasets = get_task("ave").synthetic(run.task_cfg, get_preset("smoke").shape)
    outcome = train_run(run, get_preset("smoke"), datasets, on_step=lambda done, total: steps.append((done, total)))
    assert outcome.budget == {"kind": "epochs", "steps": 4, "steps_per_epoch": 2, "epochs": 2.0}
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)] and len(outcome.val_history) == 2


def test_an_unknown_budget_reference_exits_2_before_any_work(tmp_path, capsys) -> None:
    args = ["run", "--methods", "frozen", "--tasks", "ave", "--preset", "smoke", "--out", str(tmp_path)]
    assert main([*args, "--set", "train.budget=flops", "--set", "train.budget_reference=lavsh"]) == 2
    assert "lavsh" in capsys.readouterr().err and not (tmp_path / "runs.jsonl").exists()
    with pytest.raises(ConfigError, match="budget='steps' is not allowed"):
        resolve(RunPlan(["frozen"], ["ave"], "smoke", overrides=["train.budget=steps"]))
