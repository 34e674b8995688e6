"""Resuming a run within itself (bench.checkpoint): a run stopped by SIGTERM mid-epoch, or killed
outright after an epoch end or a save within one, resumes to exactly the record of an uninterrupted run, on the same
learning-rate schedule; the checkpoint holds no tower weight, is written atomically, is never
taken from another configuration, and is removed once the record is written unless kept."""

from __future__ import annotations

import os
import shlex
import signal
import time
from pathlib import Path

import pytest
import torch
from commands import BenchProcess
from rich.console import Console
from torch.utils.data import Dataset

import bench.checkpoint
import bench.jobs
import bench.sweep
import bench.train
from bench.build import build_model
from bench.checkpoint import RunCheckpoint, RunInterrupted
from bench.cli import main
from bench.config import ResolvedRun
from bench.data.loader import RunSplit
from bench.measure import run_optimizer
from bench.plan import RunPlan, resolve
from bench.presets import get_preset
from bench.registry import get_task
from bench.results import ResultsStore
from bench.runner import execute
from bench.sweep import SweepSpec, make_storage, run_worker
from bench.train import RunOutcome, train_run

SMOKE = get_preset("smoke")
# 16 samples in batches of 4 (4 an epoch), two to an optimizer step, three epochs: 12 batches and
# 6 optimizer steps, the rate halved every epoch. LoRA's towers train in train mode and draw from
# the torch generator, so that generator must come back too.
RECIPE = [
    "train.epochs=3",
    "train.batch_size=4",
    "train.accumulate=2",
    "train.schedule=step",
    "train.step_size=1",
    "train.gamma=0.5",
    "measure.enabled=false",
]


class Killed(Exception):
    """What `kill -9` leaves: no chance to save anything."""


def lora_run() -> ResolvedRun:
    (run,) = resolve(RunPlan(["lora"], ["ave"], "smoke", device="cpu", overrides=RECIPE))
    return run


def train(run: ResolvedRun, checkpoint: RunCheckpoint | None = None, stop_at: tuple[int, str] | None = None):
    """(the outcome, or None when stopped; the rate of each optimizer step taken). `stop_at`:
    after that batch, a SIGTERM to this process ("sigterm") or a kill ("kill")."""
    rates: list[float] = []

    def recording(model, run) -> torch.optim.Optimizer:
        optimizer = run_optimizer(model, run)
        optimizer.register_step_pre_hook(lambda opt, *_: rates.append(opt.param_groups[0]["lr"]))
        return optimizer

    def on_step(done: int, total: int) -> None:
        if stop_at == (done, "sigterm"):
            os.kill(os.getpid(), signal.SIGTERM)
        if stop_at == (done, "kill"):
            raise Killed

    datasets = get_task(run.task).synthetic(run.task_cfg, SMOKE.shape)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench.train, "run_optimizer", recording)
        try:
            return train_run(run, SMOKE, datasets, on_step, checkpoint=checkpoint), rates
        except (RunInterrupted, Killed):
            return None, rates


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[RunOutcome, list[float], dict]:
    """The run's outcome, its rates, and its state at the last epoch end (its last checkpoint)."""
    checkpoint = RunCheckpoint(tmp_path_factory.mktemp("whole"), "fingerprint")
    outcome, rates = train(lora_run(), checkpoint)
    return outcome, rates, checkpoint.load()


def same_run(got: RunOutcome, final: dict, want: RunOutcome, want_final: dict) -> None:
    """The same record, and bit for bit the same trained state and optimiser state."""
    assert got.metrics == want.metrics and got.val_history == want.val_history and got.best_epoch == want.best_epoch
    assert got.budget == want.budget
    assert final["model"].keys() == want_final["model"].keys()
    assert all(torch.equal(final["model"][n], want_final["model"][n]) for n in final["model"])
    moments = lambda state: [t for s in state["optimizer"]["state"].values() for t in s.values()]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(moments(final), moments(want_final), strict=True))
    assert torch.equal(final["rng"]["torch"], want_final["rng"]["torch"])


def test_a_run_stopped_by_sigterm_mid_epoch_saves_at_its_next_optimizer_step_and_resumes_exactly(
    uninterrupted, tmp_path
) -> None:
    """SIGTERM after batch 5 (the first of epoch 1's second group): the run finishes that
    optimizer step, saves at batch 6 and stops; the resumed run draws epoch 1's order again,
    skips its first two batches and ends with the uninterrupted run's record and rates."""
    want, want_rates, want_final = uninterrupted
    assert want_rates == [3e-3, 3e-3, 1.5e-3, 1.5e-3, 7.5e-4, 7.5e-4]  # LoRA trains at lr 3e-3
    checkpoint = RunCheckpoint(tmp_path, "fingerprint")
    stopped, before = train(lora_run(), checkpoint, stop_at=(5, "sigterm"))
    assert stopped is None and len(before) == 3
    saved = checkpoint.load()
    assert saved is not None and (saved["train"]["step"], saved["train"]["epoch"]) == (6, 1)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run's own handler is gone
    got, after = train(lora_run(), checkpoint)
    same_run(got, checkpoint.load(), want, want_final)
    assert before + after == want_rates


def test_a_run_killed_outright_resumes_from_its_last_epoch_end_exactly(uninterrupted, tmp_path) -> None:
    want, want_rates, want_final = uninterrupted
    checkpoint = RunCheckpoint(tmp_path, "fingerprint")
    killed, before = train(lora_run(), checkpoint, stop_at=(7, "kill"))
    assert killed is None and len(before) == 3
    saved = checkpoint.load()
    assert saved is not None and (saved["train"]["step"], saved["train"]["epoch"]) == (4, 1)
    assert saved["train"]["history"] == want.val_history[:1]
    got, after = train(lora_run(), checkpoint)
    same_run(got, checkpoint.load(), want, want_final)
    assert before[:2] + after == want_rates


def test_a_run_killed_outright_resumes_from_its_last_save_within_the_epoch_exactly(uninterrupted, tmp_path) -> None:
    """With a save due at every optimizer step, a kill after batch 7 finds the save of epoch 1's
    first optimizer step (batch 6), not epoch 0's end (batch 4): the rerun redoes one batch and
    ends with the uninterrupted run's record, state and rates."""
    want, want_rates, want_final = uninterrupted
    checkpoint = RunCheckpoint(tmp_path, "fingerprint")
    checkpoint.due = lambda: True  # type: ignore[method-assign]
    killed, before = train(lora_run(), checkpoint, stop_at=(7, "kill"))
    assert killed is None and len(before) == 3
    saved = checkpoint.load()
    assert saved is not None and (saved["train"]["step"], saved["train"]["epoch"]) == (6, 1)
    got, after = train(lora_run(), checkpoint)
    same_run(got, checkpoint.load(), want, want_final)
    assert before + after == want_rates


def test_a_save_within_an_epoch_is_due_after_the_interval_or_twenty_times_the_last_save(tmp_path, monkeypatch) -> None:
    """Due 60 s after the last save; after a save that took 4 s, 80 s after it (saves stay
    within 5 % of the training time)."""
    now = [1000.0]
    monkeypatch.setattr(bench.checkpoint.time, "monotonic", lambda: now[0])
    checkpoint = RunCheckpoint(tmp_path, "fingerprint")
    now[0] += 59.9
    assert not checkpoint.due()
    now[0] += 0.1
    assert checkpoint.due()
    slow_write = checkpoint._write

    def write_in_4_s(state: dict) -> None:
        slow_write(state)
        now[0] += 4.0

    monkeypatch.setattr(checkpoint, "_write", write_in_4_s)
    checkpoint.save({"epoch": 0})
    now[0] += 79.9
    assert not checkpoint.due()
    now[0] += 0.1
    assert checkpoint.due()


def test_a_checkpoint_holds_the_trainable_parameters_and_buffers_only(tmp_path) -> None:
    """LAVisH's adapters live inside its frozen shared tower: none of the tower's own weights
    may be saved, every trainable parameter must be."""
    (run,) = resolve(RunPlan(["lavish"], ["ave"], "smoke", device="cpu", overrides=["measure.enabled=false"]))
    checkpoint = RunCheckpoint(tmp_path, "fingerprint")
    train(run, checkpoint)  # its checkpoint of the last epoch end stays: only the runner removes it
    model = build_model(run, SMOKE, get_task("ave")).model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()} & model.state_dict().keys()
    saved = checkpoint.load()
    assert saved is not None and frozen and trainable
    assert saved["model"].keys() == trainable | buffers and not saved["model"].keys() & frozen
    assert saved["train"]["best_state"].keys() == trainable | buffers


def test_a_checkpoint_of_another_configuration_or_an_unreadable_one_is_not_resumed(tmp_path) -> None:
    RunCheckpoint(tmp_path, "theirs").save({"x": torch.ones(2)})
    assert RunCheckpoint(tmp_path, "theirs").load()["x"].tolist() == [1.0, 1.0]
    with pytest.warns(UserWarning, match="saved by another configuration or tower weights; the run starts afresh"):
        assert RunCheckpoint(tmp_path, "mine").load() is None
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="checkpoint.pt: unreadable"):
        assert RunCheckpoint(tmp_path, "theirs").load() is None


def test_a_save_cut_short_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch) -> None:
    checkpoint = RunCheckpoint(tmp_path / "key", "fingerprint")
    checkpoint.save({"epoch": 1})

    def torn(state, f) -> None:
        f.write(b"half a checkpoint")
        raise Killed

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(Killed):
        checkpoint.save({"epoch": 2})
    monkeypatch.undo()
    assert checkpoint.load()["epoch"] == 1 and os.listdir(tmp_path / "key") == ["checkpoint.pt"]
    checkpoint.remove()
    assert not (tmp_path / "key").exists()


class Items(Dataset):
    """A dataset read item by item (as real data is), counting the items read."""

    def __init__(self, n: int) -> None:
        self.n, self.read = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        self.read += 1
        return {"audio": torch.tensor([i])}


@pytest.mark.parametrize("n", [10, 12])  # a last partial batch, or none
def test_a_resumed_epoch_of_real_data_skips_its_first_batches_unread_with_the_same_draws(n: int) -> None:
    full = Items(n)
    gen = torch.Generator().manual_seed(3)
    order = [b["audio"].flatten().tolist() for b in torch.utils.data.DataLoader(full, 4, shuffle=True, generator=gen)]
    after = gen.get_state()
    gen = torch.Generator().manual_seed(3)
    assert [b["audio"].flatten().tolist() for b in RunSplit(full, 4, gen, 0, False).read()] == order
    assert torch.equal(gen.get_state(), after)
    resumed, gen = Items(n), torch.Generator().manual_seed(3)
    assert [b["audio"].flatten().tolist() for b in RunSplit(resumed, 4, gen, 0, False).read(skip=2)] == order[2:]
    assert resumed.read == n - 8 and torch.equal(gen.get_state(), after)


PLAN = dict(methods=["frozen"], tasks=["ave"], preset="smoke", device="cpu", overrides=["train.epochs=2", *RECIPE[-1:]])


def test_an_interrupted_command_names_the_command_that_resumes_it_and_the_rerun_ends_as_an_uninterrupted_one(
    tmp_path, monkeypatch
) -> None:
    """SIGTERM during the serial runner's run: no record, the checkpoint stays, the exception
    names the command; the rerun resumes and its record equals an uninterrupted run's, after
    which the checkpoint is removed (unless kept)."""
    command = "python -m bench run --methods frozen --tasks ave --preset smoke"
    kept = execute(RunPlan(**PLAN, command=command, keep_checkpoints=True), tmp_path / "whole")
    (key,) = [r["key"] for r in kept]
    assert (tmp_path / "whole" / "checkpoints" / key / "checkpoint.pt").is_file()

    monkeypatch.setattr(bench.jobs.Display, "step", lambda self, slot, done, total, *observed: done == 3 and sigterm())
    with pytest.raises(RunInterrupted) as err:
        execute(RunPlan(**PLAN, command=command), tmp_path / "cut")
    assert err.value.signum == signal.SIGTERM
    assert str(err.value) == f"interrupted by SIGTERM: finished runs are kept; rerun `{command}` to resume"
    assert not (tmp_path / "cut" / "runs.jsonl").exists()
    assert RunCheckpoint(tmp_path / "cut" / "checkpoints" / key, "").path.is_file()

    monkeypatch.undo()
    console = Console(record=True, width=300)
    (record,) = execute(RunPlan(**PLAN, command=command), tmp_path / "cut", console)
    assert f"resume frozen / ave / seed 0 from {tmp_path / 'cut' / 'checkpoints' / key / 'checkpoint.pt'}" in (
        console.export_text()
    )
    for field in ("key", "metrics", "val_history", "best_epoch", "budget"):
        assert record[field] == kept[0][field]
    assert not (tmp_path / "cut" / "checkpoints" / key).exists()


def sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def test_an_interrupted_sweep_trial_is_run_again_by_the_rerun(tmp_path, monkeypatch) -> None:
    """optuna fails a trial whose objective raised; the point must not count as done."""
    calls: list[list[str]] = []

    def interrupted_once(plan: RunPlan, out: Path, console: Console) -> list[dict]:
        calls.append(plan.overrides)
        if len(calls) == 1:
            raise RunInterrupted(signal.SIGTERM, plan.command)
        return [{"run_id": "r", "status": "ok", "metrics": {"accuracy": 1.0}, "efficiency": {"x": 2.0}}]

    monkeypatch.setattr(bench.sweep, "execute", interrupted_once)
    spec = SweepSpec("frozen", "ave", {"train.lr": ["1e-3"]}, "smoke", objectives=[("accuracy", "maximize")])
    storage = make_storage(None, tmp_path)
    with pytest.raises(RunInterrupted):
        run_worker(spec, storage, tmp_path, Console(quiet=True))
    study = run_worker(spec, storage, tmp_path, Console(quiet=True))
    assert calls[0] == calls[1] and len(calls) == 2
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]


@pytest.mark.slow
def test_sigterm_to_a_command_with_two_workers_stops_it_cleanly_and_the_rerun_completes_it(tmp_path, capsys) -> None:
    """Once a run has saved its first epoch, SIGTERM to the command, as Ctrl-C: exit 143 with the
    command that resumes, no traceback, its workers save and stop, nothing is recorded for
    unfinished runs, and the rerun ends with an uninterrupted run's records (records do not
    depend on the worker count: the uninterrupted run and the rerun use one)."""
    args = ["run", "--methods", "frozen,lavish", "--tasks", "ave", "--preset", "smoke"]
    args += ["--set", "train.epochs=4", "--set", "measure.enabled=false"]
    assert main([*args, "--workers", "1", "--out", str(tmp_path / "whole")]) == 0
    cut = [*args, "--out", str(tmp_path / "cut")]
    process = BenchProcess([*cut, "--workers", "2"], tmp_path / "stderr.txt", Path.cwd())  # tests/commands.py
    deadline = time.monotonic() + 300
    while not list((tmp_path / "cut" / "checkpoints").glob("*/checkpoint.pt")) and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    code, err = process.wait(timeout=120), process.stderr()
    assert code == 128 + signal.SIGTERM, err
    rerun = shlex.join(["python", "-m", "bench", *cut, "--workers", "2"])
    assert f"interrupted by SIGTERM: finished runs are kept; rerun `{rerun}` to resume" in " ".join(err.split())
    assert "Traceback" not in err
    unfinished = {p.parent.name for p in (tmp_path / "cut" / "checkpoints").glob("*/checkpoint.pt")}
    report = ResultsStore(tmp_path / "cut").load()
    assert unfinished and not unfinished & {r["key"] for r in report.records} and not report.bad_lines
    capsys.readouterr()
    assert main([*cut, "--workers", "1"]) == 0 and "resume" in capsys.readouterr().err
    want = {r["key"]: r for r in ResultsStore(tmp_path / "whole").load().records}
    got = {r["key"]: r for r in ResultsStore(tmp_path / "cut").load().records}
    assert got.keys() == want.keys() and len(got) == 2
    for key, record in got.items():
        assert (record["metrics"], record["val_history"], record["best_epoch"]) == (
            want[key]["metrics"], want[key]["val_history"], want[key]["best_epoch"]
        )  # fmt: skip
    assert not list((tmp_path / "cut" / "checkpoints").glob("*/checkpoint.pt"))
