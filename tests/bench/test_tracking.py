"""Experiment trackers and the progress line (bench.tracking): `--log tensorboard,wandb` writes
one run per record, which reads back as the record's curves and figures; the loss is read from
the device only every `--log-every` batches and at epoch ends; a resumed run replaces what its
interrupted attempt logged from its checkpoint on; a terminal's progress line shows each run's
epoch, loss and time left."""

from __future__ import annotations

import io
import json
import math
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bench.cli import main
from bench.config import TrainConfig
from bench.jobs import Display, progress_bars
from bench.plan import RunPlan, resolve
from bench.results import Kind, ResultsStore, RunRecord, Status
from bench.schedule import lr_factor
from bench.tracking import RunObserver, TensorBoardTracker, Tracker, Tracking, tracker_names

SMOKE = ["--tasks", "ave", "--preset", "smoke", "--device", "cpu"]
# 16 samples in batches of 4: 4 batches an epoch, 2 epochs, the rate on a cosine over the 8 steps
RECIPE = ["train.epochs=2", "train.batch_size=4", "train.schedule=cosine", "measure.warmup=0", "measure.repeats=1"]


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard shows for a run, as (step, value) pairs."""
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def texts(folder: Path) -> dict[str, list[str]]:
    """Every text TensorBoard shows for a run."""
    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [e.tensor_proto.string_val[0].decode() for e in events.Tensors(tag)] for tag in events.Tags()["tensors"]
    }


def wandb_records(path: Path) -> list[Any]:
    """The records of an offline W&B run file: a LevelDB-style log (32 KiB blocks of chunks with a
    7-byte header: checksum, length, type; full = 1, last = 4) after a 7-byte W&B header."""
    from wandb.proto import wandb_internal_pb2

    data, pos, chunk, records = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if (room := 32768 - pos % 32768) < 7:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


@pytest.mark.slow
def test_log_tensorboard_holds_each_records_curves_and_figures(tmp_path: Path, capsys) -> None:
    """Two runs at once in worker processes: each writes its own TensorBoard run, named by its
    record's key, whose scalars are the record's: a loss and each group's scheduled rate at
    every batch, the val history, the test metrics and the measured figures."""
    out = tmp_path / "out"
    sets = [arg for item in RECIPE for arg in ("--set", item)]
    argv = ["run", "--methods", "frozen,lora", *SMOKE, *sets, "--workers", "2", "--out", str(out)]
    assert main([*argv, "--log", "tensorboard", "--log-every", "1"]) == 0
    err = capsys.readouterr().err
    assert "epoch" not in err and "eta" not in err  # no progress line off a terminal
    records = ResultsStore(out).load().records
    assert sorted(r["method"] for r in records) == ["frozen", "lora"]
    cfg = TrainConfig(epochs=2, batch_size=4, schedule="cosine")
    for r in records:
        shown = scalars(out / "tensorboard" / r["key"])
        steps = r["budget"]["steps"]
        assert steps == 8 and [s for s, _ in shown["train/loss"]] == list(range(1, 9))
        assert all(math.isfinite(v) for _, v in shown["train/loss"])
        bases = {"head": r["config"]["train"]["head_lr"]}
        if r["method"] == "lora":  # frozen trains the head alone
            bases["adapter"] = r["config"]["train"]["lr"]
        assert {t for t in shown if t.startswith("train/lr/")} == {f"train/lr/{g}" for g in bases}
        for group, base in bases.items():
            expected = [base * lr_factor(cfg, s, 4, 8) for s in range(8)]
            assert [v for _, v in shown[f"train/lr/{group}"]] == pytest.approx(expected, rel=1e-6)
        assert shown["val/accuracy"] == [
            (4, pytest.approx(r["val_history"][0])),
            (8, pytest.approx(r["val_history"][1])),
        ]
        for key, value in r["metrics"].items():
            assert shown[f"metrics/{key}"] == [(8, pytest.approx(value))]
        for key in ("activation_bytes", "train_mem_bytes_est", "train_step_s", "data_wait_fraction"):
            assert shown[f"efficiency/{key}"] == [(8, pytest.approx(r["efficiency"][key], rel=1e-6))]
        assert shown["run/wall_s"] == [(8, pytest.approx(r["wall_s"]))]


@pytest.mark.slow
def test_log_wandb_holds_the_records_key_config_and_summary(tmp_path: Path, monkeypatch) -> None:
    """W&B, offline (never the network): the run is named by the record's key and holds its
    config and, as its summary, its status and figures. wandb is an optional extra that the
    test environment leaves out (timm imports it whenever it is installed, which slows every
    process that imports timm); this runs wherever it is installed."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    out = tmp_path / "out"
    sets = [arg for item in RECIPE for arg in ("--set", item)]
    argv = ["run", "--methods", "frozen", *SMOKE, *sets, "--workers", "1", "--out", str(out), "--log", "wandb"]
    assert main(argv) == 0
    (r,) = ResultsStore(out).load().records
    (run_dir,) = (tmp_path / "wandb-dir" / "wandb").glob(f"offline-run-*-{r['key']}")
    wandb_run = wandb_records(run_dir / f"run-{r['key']}.wandb")
    (start,) = [x.run for x in wandb_run if x.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in start.config.update}
    assert (start.run_id, start.display_name, start.project) == (r["key"], r["key"], "mettle-bench")
    assert config["key"] == r["key"] and config["train"] == r["config"]["train"]
    summary = {}
    for x in wandb_run:
        if x.WhichOneof("record_type") == "summary":
            summary |= {item.key: json.loads(item.value_json) for item in x.summary.update if item.key}
    assert summary["status"] == "ok" and summary["metrics/accuracy"] == pytest.approx(r["metrics"]["accuracy"])
    assert summary["efficiency/activation_bytes"] == r["efficiency"]["activation_bytes"]
    (end,) = [x.exit for x in wandb_run if x.WhichOneof("record_type") == "exit"]
    assert end.exit_code == 0


class Recorder(Tracker):
    """A tracker that keeps what it is given."""

    module, extra = "json", "none"

    def start(self, key: str, config: dict[str, Any], step: int) -> None:
        self.calls = [("start", key, step)]

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.calls.append(("scalars", step, values))

    def finish(self, step: int, summary: dict[str, float], status: str) -> None:
        self.calls.append(("finish", step, status))


def test_the_loss_is_read_from_the_device_every_n_batches_and_at_each_epoch_end(monkeypatch) -> None:
    """Every 3 batches and at the end of each 4-batch epoch, the mean loss since the last read;
    one `.item()` per read and none in between. Learning rates are logged at every batch."""
    (run,) = resolve(RunPlan(["frozen"], ["ave"], "smoke", device="cpu"))
    recorder = Recorder(Tracking())
    observer = RunObserver([recorder], "k", run, every=3)
    reads = []
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: reads.append(1) or item(self))
    observer.start(0)
    for step in range(1, 9):
        observer.step(step, (step - 1) // 4, torch.tensor(float(step)), {"head": 0.1 * step})
        if step % 4 == 0:
            observer.epoch_end(50.0 + step)
    logged = [(c[1], c[2]) for c in recorder.calls if c[0] == "scalars"]
    losses = [(step, values["train/loss"]) for step, values in logged if "train/loss" in values]
    assert losses == [(3, 2.0), (4, 4.0), (6, 5.5), (8, 7.5)]  # means of 1-3, 4, 5-6, 7-8
    assert len(reads) == len(losses)
    assert [values["train/lr/head"] for _, values in logged if "train/lr/head" in values] == pytest.approx(
        [0.1 * s for s in range(1, 9)]
    )
    assert [(step, values["val/accuracy"]) for step, values in logged if "val/accuracy" in values] == [
        (4, 54.0), (8, 58.0)
    ]  # fmt: skip
    assert (observer.epoch, observer.loss) == (2, 7.5)


def test_a_run_has_an_observer_only_when_a_tracker_or_a_terminal_reads_its_loss() -> None:
    (run,) = resolve(RunPlan(["frozen"], ["ave"], "smoke", device="cpu"))
    assert Tracking().observer("k", run) is None
    shown = Tracking(display=True).observer("k", run)
    assert shown is not None and shown.trackers == []
    (tracker,) = Tracking(("tensorboard",)).observer("k", run).trackers  # type: ignore[union-attr]
    assert isinstance(tracker, TensorBoardTracker)


def test_an_interrupted_run_closes_its_trackers_and_its_resumption_replaces_what_followed_its_checkpoint(
    tmp_path: Path,
) -> None:
    """The first attempt logs 4 steps and stops; the second resumes after step 2 (its checkpoint):
    TensorBoard shows the scalars of steps 1-2 from the first attempt and 3-4 from the second."""
    (run,) = resolve(RunPlan(["frozen"], ["ave"], "smoke", device="cpu"))
    tracking = Tracking(("tensorboard",), out=tmp_path, every=1)
    with pytest.raises(KeyboardInterrupt), tracking.observer("k", run) as first:  # type: ignore[union-attr]
        first.start(0)  # every batch's loss is read: `every` is 1
        for step in range(1, 5):
            first.step(step, 0, torch.tensor(1.0), {"head": 1.0})
        raise KeyboardInterrupt
    assert texts(tmp_path / "tensorboard" / "k")["status/text_summary"] == ["interrupted"]
    second = tracking.observer("k", run)
    assert second is not None
    second.start(2)
    for step in range(3, 5):
        second.step(step, 0, torch.tensor(2.0), {"head": 1.0})
    second.finish(RunRecord(Kind.RUN, "frozen", "ave", "smoke", Status.OK, {}, metrics={"accuracy": 50.0}))
    shown = scalars(tmp_path / "tensorboard" / "k")
    assert shown["train/lr/head"] == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0)]
    assert shown["train/loss"] == [(1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0)]
    assert shown["metrics/accuracy"] == [(4, 50.0)]
    assert texts(tmp_path / "tensorboard" / "k")["status/text_summary"] == ["interrupted", "ok"]  # texts stay


def test_the_progress_line_shows_epoch_loss_and_time_left_on_a_terminal() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=160, color_system=None)
    progress = progress_bars(console)
    now = [0.0]
    progress.get_time = lambda: now[0]
    display = Display(progress)
    display.start(0, "lora / ave / seed 0")
    display.step(0, 1, 8)
    now[0] = 10.0
    display.step(0, 3, 8, 1, 0.693147)  # two batches in 10 s: 25 s for the other 5
    console.print(progress.get_renderable())
    line = console.file.getvalue().splitlines()[0]  # type: ignore[attr-defined]
    assert line.startswith("lora / ave / seed 0")
    assert "3/8 epoch 1 loss 0.6931 0:00:10 eta 0:00:25" in " ".join(line.split())


@pytest.mark.parametrize(
    "text, expected",
    [("none", ()), ("tensorboard", ("tensorboard",)), ("wandb, tensorboard,wandb", ("wandb", "tensorboard"))],
)
def test_log_names_none_or_trackers(text: str, expected: tuple[str, ...]) -> None:
    assert tracker_names(text) == expected


def test_an_unknown_tracker_exits_2_naming_the_choices(capsys) -> None:
    assert main(["run", "--methods", "frozen", *SMOKE, "--log", "tensorboard,mlflow"]) == 2
    assert "--log expects none or a comma-separated list of tensorboard, wandb, got 'tensorboard,mlflow'" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_a_missing_tracker_package_exits_2_naming_its_extra(name: str, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, name, None)  # what an environment without it gives on import
    assert main(["run", "--methods", "frozen", *SMOKE, "--out", str(tmp_path), "--log", name]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--log {name} needs the {name} package: pip install 'mettle-bench[{name}]'" in err
    assert not (tmp_path / "runs.jsonl").exists()


def test_wandb_online_without_an_account_exits_2_before_any_run(tmp_path: Path, monkeypatch, capsys) -> None:
    """No login prompt in the middle of a run: without WANDB_MODE=offline an account must be set up."""
    pytest.importorskip("wandb")
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    assert main(["run", "--methods", "frozen", *SMOKE, "--out", str(tmp_path / "out"), "--log", "wandb"]) == 2
    assert "--log wandb is not logged in to W&B: run `wandb login`" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "out").exists()
