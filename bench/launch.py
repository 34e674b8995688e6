"""Submitting a plan to a scheduler (`bench run --launcher slurm|local`) through submitit.

The plan goes out as a job array whose tasks are all the same command, `bench run` of the plan
into the same OUT, run where the task lands: each is a worker that takes runs by claim
(bench.claims), so together they do every run once, and a task that dies (preempted, its node
lost) leaves its runs to the others once their claims go stale. `local` runs the tasks as
processes on this machine through submitit's local executor and waits for them (the tests use
it); `slurm` submits a Slurm job array and returns with its job id.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.config import ConfigError

LAUNCHERS = ("none", "local", "slurm")  # none: this command does the runs itself
LOGS_DIR = "submitit"  # under OUT: submitit's pickles and each task's stdout and stderr


@dataclass(frozen=True)
class Resources:
    """What each array task asks of the scheduler."""

    tasks: int  # array tasks, all allowed to run at once
    minutes: int
    gpus_per_task: int
    cpus_per_task: int | None = None
    partition: str | None = None


def run_task(argv: list[str], cwd: str) -> int:
    """One array task: the plan's command, run here from the folder it was submitted from, in a
    process of its own (its exit code is the task's result)."""
    return subprocess.run([sys.executable, "-m", "bench", *argv], cwd=cwd, check=False).returncode


def task_argv(argv: list[str]) -> list[str]:
    """The command each task runs: the submitting one with `--launcher none` last (argparse keeps
    the last value), so that the task does the runs instead of submitting again."""
    return [*argv, "--launcher", "none"]


def submit(launcher: str, argv: list[str], out: Path, resources: Resources, console: Console) -> int:
    """Submit the array; `local` waits for its tasks. The exit code: 0, or 1 when a task failed."""
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"--launcher {launcher} needs submitit: pip install 'mettle-bench[slurm]'") from None
    folder = out.resolve() / LOGS_DIR
    executor = submitit.AutoExecutor(folder=folder, cluster=launcher)
    parameters: dict[str, Any] = {
        "name": "bench-run",
        "timeout_min": resources.minutes,
        "gpus_per_node": resources.gpus_per_task,
        "tasks_per_node": 1,
        "slurm_array_parallelism": resources.tasks,
    }
    if resources.cpus_per_task is not None:
        parameters["cpus_per_task"] = resources.cpus_per_task
    if resources.partition is not None:
        parameters["slurm_partition"] = resources.partition
    executor.update_parameters(**parameters)
    command = task_argv(argv)
    jobs = executor.map_array(run_task, [command] * resources.tasks, [os.getcwd()] * resources.tasks)
    if launcher == "slurm":
        array = jobs[0].job_id.split("_")[0]
        console.print(
            f"submitted job array {array}: {resources.tasks} task(s) of {' '.join(command)}\n"
            f"follow it: squeue -j {array}; logs: {folder}/{array}_<task>_0_log.out and .err; "
            f"records: {out / 'runs.jsonl'} (python -m bench table --out {out})"
        )
        return 0
    return wait_locally(jobs, folder, console)


def wait_locally(jobs: list[Any], folder: Path, console: Console) -> int:
    """Wait for the local tasks (stopping them if this command is interrupted); 1 if one failed."""
    console.print(f"started {len(jobs)} local task(s) ({', '.join(j.job_id for j in jobs)}); logs: {folder}")
    failed = 0
    try:
        for job in jobs:
            try:
                code = job.result()
            except Exception as err:  # submitit's FailedJobError: the task raised; its log has the traceback
                console.print(f"[red]task {job.job_id} failed[/]: {str(err).splitlines()[0]} (log: {job.paths.stderr})")
                failed += 1
                continue
            if code != 0:
                console.print(f"[red]task {job.job_id} exited with {code}[/] (log: {job.paths.stderr})")
                failed += 1
    except KeyboardInterrupt:
        for job in jobs:
            job.cancel(check=False)
        raise
    console.print(f"{len(jobs) - failed} of {len(jobs)} local task(s) done")
    return 1 if failed else 0
