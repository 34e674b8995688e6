"""Scale-out: one run per GPU (with a fake GPU count on a CPU: each worker process is born seeing
only its own GPU, and CUDA is never initialised here), records naming the GPU, and the cluster
launcher: `--launcher slurm` hands submitit the array it asked for and says how to follow it,
and `--launcher local` writes the records a plain `bench run` writes."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.progress import Progress

from bench.cli import main
from bench.config import ConfigError
from bench.device import check_workers
from bench.gpus import VISIBLE, gpu_of, worker_gpus
from bench.jobs import Context, Display, Job
from bench.plan import RunPlan, resolve
from bench.results import ResultsStore
from bench.workers import run_in_processes

PLAN = ["run", "--methods", "frozen,full", "--tasks", "ave", "--preset", "smoke", "--seeds", "0,1", "--device", "cpu"]
PLAN += ["--workers", "1", "--set", "train.epochs=1", "--set", "measure.enabled=false"]


@pytest.fixture
def four_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node with 4 GPUs, as its scheduler lists them: nothing asks the driver."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv(VISIBLE, "3,5,6,7")


def test_on_cuda_auto_is_one_worker_per_visible_gpu_and_n_takes_the_first_n(four_gpus: None) -> None:
    assert check_workers(None, "cuda") == 4 and check_workers(None, "auto") == 4
    assert check_workers(2, "cuda") == 2 and worker_gpus("cuda", 2) == ["3", "5"]
    assert worker_gpus("cuda", 4) == ["3", "5", "6", "7"]
    assert worker_gpus("cuda", 1) is None and worker_gpus("cpu", 4) is None  # one run here, or the CPU's cores
    with pytest.raises(ConfigError, match=r"--workers 5: one run per GPU, and 4 GPU\(s\) are visible here \(CUDA_VIS"):
        check_workers(5, "cuda")
    assert gpu_of(torch.device("cuda", 1)) == {"gpu": "5"} and gpu_of(torch.device("cpu")) == {}
    assert not torch.cuda.is_initialized()


def test_each_gpu_worker_process_sees_only_its_own_gpu(four_gpus: None) -> None:
    """Two workers, on the first two GPUs (their runs on the CPU), read from each process's
    birth environment once both are given a run; the command's own environment is left as it was."""
    seen: dict[int, str] = {}

    class Seen(Exception):
        """Enough: the workers are stopped, as when a command is interrupted."""

    class Spy(Display):
        def start(self, slot: int, label: str) -> None:
            if slot == 1:
                children = multiprocessing.active_children()
                seen.update({p.pid: birth_environment(p.pid).get(VISIBLE, "") for p in children})
                raise Seen

    runs = resolve(RunPlan(["frozen"], ["ave"], "smoke", seeds=[0, 1], device="cpu"))
    jobs = [Job(i, run, f"key{i}") for i, run in enumerate(runs)]
    with Progress(disable=True) as progress, pytest.raises(Seen):
        list(run_in_processes(jobs, Context("smoke", {}, None, 2), Spy(progress), 2, gpus=worker_gpus("cuda", 2)))
    assert sorted(seen.values()) == ["3", "5"]  # one process per GPU, each seeing its own only
    assert os.environ[VISIBLE] == "3,5,6,7" and not torch.cuda.is_initialized()
    assert not multiprocessing.active_children()


def birth_environment(pid: int) -> dict[str, str]:
    """The environment a spawned process was started with, once it runs its own program (until
    its exec, a forked child shows its parent's)."""
    deadline = time.monotonic() + 60
    while b"spawn_main" not in Path(f"/proc/{pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().split("=", 1) for e in entries if b"=" in e)


class FakeJob:
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id


class FakeExecutor:
    """submitit.AutoExecutor as a login node sees it: takes the array, runs nothing."""

    made: list[FakeExecutor] = []

    def __init__(self, folder: Path, cluster: str) -> None:
        self.folder, self.cluster, self.parameters = folder, cluster, {}
        self.calls: list[tuple[Any, ...]] = []
        FakeExecutor.made.append(self)

    def update_parameters(self, **parameters: Any) -> None:
        self.parameters.update(parameters)

    def map_array(self, fn: Any, *iterables: list[Any]) -> list[FakeJob]:
        self.calls = list(zip(*iterables, strict=True))
        return [FakeJob(f"4242_{i}") for i in range(len(self.calls))]


@pytest.mark.skipif(sys.platform == "win32", reason="submitit runs on POSIX")
def test_slurm_submits_an_array_of_workers_and_says_how_to_follow_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--device cuda on a login node without a GPU: the plan is checked, not its device."""
    import submitit

    FakeExecutor.made.clear()
    monkeypatch.setattr(submitit, "AutoExecutor", FakeExecutor)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plan = [a if a != "cpu" else "cuda" for a in PLAN]
    cluster = ["--launcher", "slurm", "--partition", "gpu", "--time", "1-12:00:00", "--array-parallelism", "3"]
    assert main([*plan, "--out", str(tmp_path), *cluster]) == 0
    (executor,) = FakeExecutor.made
    assert executor.cluster == "slurm" and executor.folder == tmp_path.resolve() / "submitit"
    assert executor.parameters == {
        "name": "bench-run",
        "timeout_min": 36 * 60,
        "gpus_per_node": 1,
        "tasks_per_node": 1,
        "slurm_array_parallelism": 3,
        "slurm_partition": "gpu",
    }
    assert executor.calls == [([*plan, "--out", str(tmp_path), *cluster, "--launcher", "none"], os.getcwd())] * 3
    err = " ".join(capsys.readouterr().err.split())
    assert "submitted job array 4242: 3 task(s)" in err and "follow it: squeue -j 4242" in err
    assert not (tmp_path / "runs.jsonl").exists()


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--time", "12h", "--time expects minutes, MM:SS, HH:MM:SS or D-HH:MM:SS, got '12h'"),
        ("--array-parallelism", "0", "expected a positive integer, got '0'"),
        ("--claim-timeout", "-1", "expected a positive number of seconds, got '-1'"),
    ],
)
def test_bad_launcher_values_exit_2(flag: str, value: str, expected: str, tmp_path: Path, capsys) -> None:
    assert main([*PLAN, "--out", str(tmp_path), "--launcher", "slurm", flag, value]) == 2
    assert expected in capsys.readouterr().err


@pytest.mark.slow
def test_the_local_launcher_writes_the_records_of_a_plain_run(tmp_path: Path, capsys) -> None:
    assert main([*PLAN, "--out", str(tmp_path / "launched"), "--launcher", "local", "--array-parallelism", "2"]) == 0
    assert "2 of 2 local task(s) done" in " ".join(capsys.readouterr().err.split())
    assert main([*PLAN, "--out", str(tmp_path / "plain")]) == 0

    def metrics(out: str) -> dict[str, str]:
        records = ResultsStore(tmp_path / out).load().records
        assert len(records) == 4 and all(r["status"] == "ok" for r in records)
        return {r["key"]: json.dumps(r["metrics"], sort_keys=True) for r in records}

    assert metrics("launched") == metrics("plain")
    logs = list((tmp_path / "launched" / "submitit").glob("*_log.err"))
    assert len(logs) == 2  # each task's own log, where a task's runs say what they did
