"""The training loop (bench/train.py): device resolution, gradient accumulation, early
stopping, and how a run reads its data: the same training with any number of loader
workers, and what its record keeps of the reads."""

from pathlib import Path

import numpy as np
import pytest
import torch

import bench.train
from bench.cli import main
from bench.config import ConfigError
from bench.measure import run_optimizer
from bench.plan import RunPlan, resolve
from bench.presets import get_preset
from bench.registry import get_task
from bench.results import ResultsStore
from bench.train import resolve_device, train_run

QUICK = ["train.epochs=1", "measure.enabled=false"]


def test_cuda_resolves_to_the_current_device_with_its_index(monkeypatch):
    """torch.cuda.set_per_process_memory_fraction refuses a bare "cuda" device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("auto") == torch.device("cuda", 3)
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_without_cuda_is_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device cuda: CUDA is not available"):
        resolve_device("cuda")


def test_run_on_cuda_without_cuda_exits_2_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["run", "--methods", "frozen", "--tasks", "ave", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "runs.jsonl").exists()


def step_gradients(monkeypatch, overrides: list[str]) -> list[list[torch.Tensor]]:
    """Train frozen / ave on the smoke preset (16 samples, one epoch): the gradient each
    optimizer step applies (after clipping)."""
    steps: list[list[torch.Tensor]] = []

    def recording(model, run) -> torch.optim.Optimizer:
        optimizer = run_optimizer(model, run)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        optimizer.register_step_pre_hook(lambda *_: steps.append([p.grad.clone() for p in params]))
        return optimizer

    monkeypatch.setattr(bench.train, "run_optimizer", recording)
    (run,) = resolve(RunPlan(["frozen"], ["ave"], "smoke", device="cpu", overrides=[*QUICK, *overrides]))
    train_run(run, get_preset("smoke"), get_task("ave").synthetic(run.task_cfg, get_preset("smoke").shape))
    return steps


def test_k_accumulated_batches_of_b_are_one_batch_of_k_times_b(monkeypatch) -> None:
    """Frozen towers in eval mode and the AVE head (LayerNorm, no dropout) have no layer that
    depends on the batch, and the loss is a mean over equal batches: two batches of 4 give the
    step one batch of 8 gives (the same shuffled order), unlike a step on one batch of 4."""
    unclipped = "train.grad_clip=0"  # clipping would hide a gradient twice as large
    one = step_gradients(monkeypatch, ["train.batch_size=8", unclipped])
    accumulated = step_gradients(monkeypatch, ["train.batch_size=4", "train.accumulate=2", unclipped])
    separate = step_gradients(monkeypatch, ["train.batch_size=4", unclipped])
    assert (len(one), len(accumulated), len(separate)) == (2, 2, 4)
    gap = lambda grads: max((g - b).abs().max().item() for b, g in zip(one[0], grads[0], strict=True))  # noqa: E731
    assert gap(accumulated) < 1e-6 and gap(separate) > 1e-4


def test_patience_stops_after_that_many_epochs_without_a_better_val_metric(monkeypatch) -> None:
    """Val accuracy 10, 30, 20, 30, 25, ...: the best is epoch 1 (a tie is no improvement), and
    with patience 3 the run stops after epoch 4, having trained 5 of its 6 epochs."""
    scripted = iter([10.0, 30.0, 20.0, 30.0, 25.0, 90.0])
    overrides = [*QUICK, "train.epochs=6", "train.batch_size=16", "train.patience=3"]  # one batch an epoch
    (run,) = resolve(RunPlan(["frozen"], ["ave"], "smoke", device="cpu", overrides=overrides))
    datasets = get_task("ave").synthetic(run.task_cfg, get_preset("smoke").shape)
    scores = lambda model, task, cfg, ds, *rest: {"accuracy": next(scripted)}  # noqa: E731 (val only: test is predicted)
    monkeypatch.setattr(bench.train, "evaluate", scores)
    steps: list[int] = []
    outcome = train_run(run, get_preset("smoke"), datasets, lambda done, total: steps.append(done))
    assert outcome.val_history == [10.0, 30.0, 20.0, 30.0, 25.0] and outcome.best_epoch == 1
    assert outcome.budget["stopped_epoch"] == 4 and steps == [1, 2, 3, 4, 5] and outcome.budget["steps"] == 6
    assert outcome.metrics["val_accuracy"] == 30.0


def prepared_ave(root: Path) -> Path:
    """A prepared AVE tree: 6 train, 2 val and 2 test clips of random frames and audio, and
    labels of their own, so that training depends on the order it sees them in."""
    rng = np.random.default_rng(0)
    root.mkdir()
    videos = {"train": [f"v{i}" for i in range(6)], "val": ["v6", "v7"], "test": ["v8", "v9"]}
    rows = {
        s: [f"{'Banjo' if int(v[1:]) % 2 else 'Dog'}&{v}&good&0&{int(v[1:]) + 1}\n" for v in vs]
        for s, vs in videos.items()
    }
    for name, lines in (("Annotations.txt", sum(rows.values(), [])), ("trainSet.txt", rows["train"]),
                        ("valSet.txt", rows["val"]), ("testSet.txt", rows["test"])):  # fmt: skip
        (root / name).write_text("".join(lines))
    (root / "media.json").write_text('{"dataset": "ave", "sample_rate": 800, "size": 24}')
    for sub in ("frames", "audio"):
        (root / sub).mkdir()
    for v in sum(videos.values(), []):
        np.save(root / "frames" / f"{v}.npy", rng.integers(0, 256, (10, 24, 24, 3), dtype=np.uint8))
        np.save(root / "audio" / f"{v}.npy", rng.integers(-9000, 9000, (10, 800), dtype=np.int16))
    return root


def test_a_real_data_run_trains_on_the_same_batches_with_0_and_2_loader_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[torch.Tensor] = []  # the labels of every training batch, in the order trained on

    def shard(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], float]:
        seen.append(batch["label"])
        return batch, 1.0

    monkeypatch.setattr(bench.train, "shard", shard)
    overrides = ["train.epochs=2", "train.batch_size=2", "measure.enabled=false"]
    outcomes, batches = {}, {}
    for workers in (0, 2):
        tree = prepared_ave(tmp_path / f"{workers}")
        plan = RunPlan(["frozen"], ["ave"], "smoke", device="cpu", source={"ave": str(tree)},
                       overrides=[*overrides, f"train.loader_workers={workers}"])  # fmt: skip
        (run,) = resolve(plan)
        datasets = get_task("ave").datasets(run.task_cfg, get_preset("smoke").shape, run.source)
        outcomes[workers] = train_run(run, get_preset("smoke"), datasets)
        batches[workers], seen[:] = list(seen), []
    assert len(batches[0]) == 6 and len({tuple(b.flatten().tolist()) for b in batches[0][:3]}) == 3
    assert [b.tolist() for b in batches[0][:3]] != [b.tolist() for b in batches[0][3:6]]  # epochs: other orders
    assert [b.tolist() for b in batches[2]] == [b.tolist() for b in batches[0]]
    none, two = outcomes[0], outcomes[2]
    assert none.val_history == two.val_history and none.metrics == two.metrics
    assert none.efficiency["loader_workers"] == 0 and two.efficiency["loader_workers"] == 2
    assert all(0 <= o.efficiency["data_wait_fraction"] <= 1 for o in outcomes.values())


def test_a_record_keeps_the_wait_the_loader_workers_and_the_samples_of_each_split(tmp_path, capsys):
    run = [
        "run",
        "--methods",
        "frozen",
        "--tasks",
        "ave",
        "--preset",
        "smoke",
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
    ]
    assert main([*run, "--set", "measure.enabled=false"]) == 0
    (record,) = ResultsStore(tmp_path).load().records
    assert 0 <= record["efficiency"]["data_wait_fraction"] <= 1 and record["efficiency"]["loader_workers"] == 0
    assert record["data"] == {
        "splits": {s: {"samples": n, "missing": 0} for s, n in (("train", 16), ("val", 8), ("test", 8))}
    }
    assert "loader_workers" not in record["config"]["train"]  # how the data is read is not what the run computes
    assert main([*run, "--set", "measure.enabled=false", "--set", "train.loader_workers=3"]) == 0
    assert "skip frozen / ave / seed 0: already finished" in capsys.readouterr().err
