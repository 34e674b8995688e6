"""Runs in parallel processes: the same records as one run after another on one thread, in plan
order, a worker that dies costs only its run, usage errors still stop the command, a worker
is given runs on the datasets it already holds, and no worker outlives the command."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from rich.progress import Progress
from safetensors.torch import save_file

import bench.device
from bench.cli import main
from bench.config import ConfigError
from bench.device import check_workers, usable_cores
from bench.jobs import Context, Display, Job, data_key
from bench.plan import RunPlan, resolve
from bench.presets import get_preset
from bench.results import ResultsStore
from bench.runner import execute
from bench.workers import next_job, run_in_processes

QUICK = ["train.epochs=1", "measure.warmup=0", "measure.repeats=1"]
REPO = Path(__file__).resolve().parents[2]
PARALLEL = ["run", "--methods", "frozen,full", "--tasks", "ave", "--preset", "smoke", "--device", "cpu"]
PARALLEL += ["--seeds", "0,1", "--workers", "2", "--set", "measure.enabled=false"]


@contextmanager
def threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_two_processes_give_the_records_of_one_thread_in_turn_in_plan_order(tmp_path: Path) -> None:
    plan = dict(methods=["frozen", "mettle"], tasks=["ave", "avvp"], preset="smoke", device="cpu", overrides=QUICK)
    parallel = execute(RunPlan(**plan, workers=2), tmp_path / "parallel")
    with threads(1):
        serial = execute(RunPlan(**plan, workers=1), tmp_path / "serial")
    order = [(r["task"], r["method"]) for r in serial]
    assert [(r["task"], r["method"]) for r in parallel] == order == [
        ("ave", "frozen"), ("ave", "mettle"), ("avvp", "frozen"), ("avvp", "mettle")
    ]  # fmt: skip
    for p, s in zip(parallel, serial, strict=True):
        assert p["status"] == s["status"] == "ok"
        assert p["key"] == s["key"] and p["metrics"] == s["metrics"] and p["val_history"] == s["val_history"]
        assert p["efficiency"]["activation_bytes"] == s["efficiency"]["activation_bytes"]
        assert p["env"]["threads"] == 1 and p["env"]["workers"] == 2 and "workers" not in s["env"]
    assert len(ResultsStore(tmp_path / "parallel").load().records) == 4


def test_a_worker_that_dies_costs_its_run_only(tmp_path: Path) -> None:
    """The display's first step message kills the worker mid-run (as the OOM killer would):
    that run gets an error record, and a fresh worker does the next one."""
    killed: list[int] = []

    class Killer(Display):
        def step(self, slot: int, done: int, total: int, *observed: object) -> None:
            if not killed:
                (child,) = multiprocessing.active_children()
                os.kill(child.pid, signal.SIGKILL)
                killed.append(child.pid)

    runs = resolve(RunPlan(["frozen", "mettle"], ["ave"], "smoke", device="cpu", overrides=QUICK))
    jobs = [Job(i, run, f"key{i}") for i, run in enumerate(runs)]
    with Progress(disable=True) as progress:
        done = list(run_in_processes(jobs, Context("smoke", {}, None, 2), Killer(progress), processes=1))
    (first, died), (second, record) = done
    assert first.run.method == "frozen" and died.status == "error"
    assert died.error == f"its worker process died (exit code {-signal.SIGKILL})"
    assert second.run.method == "mettle" and record.status == "ok"


def test_a_usage_error_inside_a_worker_stops_the_command(tmp_path: Path) -> None:
    other = tmp_path / "other.safetensors"
    save_file({"head.weight": torch.zeros(2, 2)}, str(other))
    overrides = [f"towers.visual={other}"]
    plan = RunPlan(["frozen", "mettle"], ["ave"], "smoke", device="cpu", overrides=overrides, workers=2)
    with pytest.raises(ConfigError, match=r"tower checkpoint .*other.safetensors does not fit swinv2"):
        execute(plan, tmp_path / "out")
    assert not multiprocessing.active_children()


def test_a_worker_is_given_runs_on_the_data_it_holds_then_on_data_nobody_holds() -> None:
    runs = resolve(RunPlan(["frozen", "mettle"], ["ave", "avvp", "avs_s4"], "smoke"))
    shape = get_preset("smoke").shape
    pending = [Job(i, run, "") for i, run in enumerate(runs)]
    ave, avvp, s4 = (data_key(pending[i].run, shape) for i in (0, 2, 4))
    assert next_job(pending, ave, {avvp}, shape) is pending[0]
    assert next_job(pending, None, {ave}, shape) is pending[2]  # not the other worker's ave
    assert next_job(pending, None, {ave, avvp}, shape) is pending[4]
    assert next_job(pending[:2], None, {ave}, shape) is pending[0]  # only ave is left: share it


def test_auto_is_one_run_per_core_on_a_cpu_and_one_at_a_time_under_torchrun(monkeypatch) -> None:
    monkeypatch.setattr(bench.device, "usable_cores", lambda: 6)
    assert check_workers(None, "cpu") == 6 and check_workers(3, "cpu") == 3
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert check_workers(None, "cpu") == 1
    with pytest.raises(ConfigError, match="--workers 2: under torchrun the processes do one run together; use --w"):
        check_workers(2, "cpu")


@pytest.mark.parametrize(
    ("files", "cores"),
    [
        ({"cpu.max": "150000 100000\n"}, 1),  # v2, docker --cpus=1.5: one worker, not an oversubscribed two
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_a_containers_cpu_quota_caps_the_cores(files: dict[str, str], cores: int | None, tmp_path: Path) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert usable_cores(tmp_path) == (affinity if cores is None else min(cores, affinity))


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", "--workers 0: expected a positive number of processes, or auto"), ("two", "got 'two'")],
)
def test_a_bad_workers_value_exits_2(value: str, expected: str, tmp_path: Path, capsys) -> None:
    args = ["run", "--methods", "frozen", "--tasks", "ave", "--preset", "smoke", "--out", str(tmp_path)]
    try:
        code = main([*args, "--workers", value])
    except SystemExit as exit:  # argparse's own type check
        code = exit.code
    assert code == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "runs.jsonl").exists()


class Command:
    """`python -m bench` in a process of its own, its stderr read to the end in a thread: the end
    comes when every process holding it (the command, its workers) has exited."""

    def __init__(self, args: list[str]) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench", *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.err: list[bytes] = []
        self.reader = threading.Thread(target=lambda: self.err.append(self.proc.stderr.read()), daemon=True)
        self.reader.start()

    def wait_for_records(self, path: Path, count: int) -> None:
        deadline = time.monotonic() + 300
        while not (path.exists() and path.read_bytes().count(b"\n") >= count):
            assert self.proc.poll() is None and time.monotonic() < deadline, b"".join(self.err).decode()
            time.sleep(0.05)

    def descendants(self) -> list[int]:
        """Its children and theirs: the workers are forked from its forkserver."""
        parents = {pid: _stat(pid)[1] for pid in _pids()}
        found = [self.proc.pid]
        for pid in found:
            found += [child for child, parent in parents.items() if parent == pid]
        return found[1:]

    def stderr(self, timeout: float) -> str:
        """Everything written to stderr, once every process holding it has exited within `timeout`."""
        self.reader.join(timeout)
        assert not self.reader.is_alive(), "a process of the command is still running"
        return b"".join(self.err).decode()


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _stat(pid: int) -> tuple[str, int]:
    """(state, parent pid) of a process; ("X", 0) once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return "X", 0
    return fields[0], int(fields[1])


def _running(pids: list[int]) -> list[int]:
    return [pid for pid in pids if _stat(pid)[0] not in ("X", "Z")]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_killing_the_command_leaves_no_worker_behind(tmp_path: Path) -> None:
    """SIGKILL to `run --workers 2` mid-run: its workers exit at once, without a traceback
    (they used to finish their runs as orphans and die on a broken pipe)."""
    command = Command([*PARALLEL, "--out", str(tmp_path)])
    workers: list[int] = []
    try:
        command.wait_for_records(tmp_path / "runs.jsonl", 1)
        workers = command.descendants()
        assert len(workers) >= 4  # the two workers, the forkserver they fork from, multiprocessing's resource tracker
        command.proc.kill()
        command.proc.wait()
        err = command.stderr(timeout=5)
        deadline = time.monotonic() + 5  # multiprocessing's resource tracker ends once its pipe closes
        while _running(workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(workers)
        assert "Traceback" not in err and "BrokenPipeError" not in err
    finally:
        for pid in _running(workers):
            os.kill(pid, signal.SIGKILL)
