"""Ablation grids and multi-objective studies on optuna.

Each trial is one bench run (all its seeds) whose records land in OUT/runs.jsonl tagged
with the study, so tables and plots see them. The study lives in shared storage (a journal
file by default, PostgreSQL for many machines) so workers join it by name; a worker killed
mid-trial stops its heartbeat, and the next worker to look fails that trial and retries it.
"""

from __future__ import annotations

import math
import time
import tomllib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, get_type_hints

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, Trial, TrialState
from rich.console import Console

from bench.checkpoint import RunInterrupted
from bench.config import ConfigError, parse_value
from bench.device import threads_per_worker
from bench.forkserver import context as forkserver_context
from bench.forkserver import same_command
from bench.plan import RunPlan, all_sections
from bench.registry import get_task
from bench.runner import execute
from bench.tracking import Tracking

HEARTBEAT_ATTR = "bench:heartbeat"
MAX_RETRY = 3  # a trial that keeps killing its worker is given up after this many retries
POLL_S = 1.0
# BruteForceSampler, the retry callback and fail_stale_trials are stable in use, but still
# marked experimental; say so once here rather than on every trial.
warnings.filterwarnings("ignore", category=ExperimentalWarning, module=__name__)


class TrialFailed(Exception):
    """A run ended as oom / nan / error: the trial is FAIL with the reason, the study goes on."""


@dataclass
class SweepSpec:
    """What a study runs. `grid` maps config paths (`mettle.num_tokens`) to choices; without
    `trials` every combination runs once (BruteForceSampler), with it `trials` points of that
    space are sampled towards the objectives (NSGA-II, or TPE for one objective)."""

    method: str
    task: str
    grid: dict[str, list[Any]]
    preset: str = "tiny"
    overrides: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    trials: int | None = None
    objectives: list[tuple[str, str]] = field(default_factory=list)  # (record key, maximize|minimize)
    max_memory: float | None = None  # bytes of train_mem_bytes_est; a constraint of the sampler
    study: str = ""
    device: str = "auto"
    command: str | None = None  # the sweep's command line, kept in every run record
    tracking: Tracking = field(default_factory=Tracking)  # each trial's runs' trackers (`--log`)

    def __post_init__(self) -> None:
        if not self.grid:
            raise ConfigError("a sweep needs at least one swept key (--grid section.key=v1,v2)")
        self.grid = {key: typed_choices(key, values) for key, values in self.grid.items()}
        if not self.objectives:
            self.objectives = [(get_task(self.task).selection_metric, "maximize"), ("train_mem_bytes_est", "minimize")]
        self.study = self.study or "_".join([self.method, self.task, self.preset, *(k for k in self.grid)])

    def points(self) -> set[tuple[Any, ...]]:
        return set(product(*self.grid.values()))


def typed_choices(key: str, values: Sequence[Any]) -> list[Any]:
    """Choices parsed by the config field's type, so `4` from the command line and `4` from
    TOML are the same trial parameter and bad keys or values fail before any trial."""
    section, _, name = key.partition(".")
    sections = all_sections()
    if section not in sections or name not in get_type_hints(sections[section]):
        raise ConfigError(f"swept key {key!r} is not a section.key of the config (see `python -m bench list`)")
    hint = get_type_hints(sections[section])[name]
    return list(dict.fromkeys(parse_value(str(v), hint, key) for v in values))


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ConfigError(f"--grid {item!r}: expected section.key=v1,v2")
        grid[key] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def parse_objectives(text: str) -> list[tuple[str, str]]:
    out = []
    for item in text.split(","):
        key, _, way = item.strip().partition(":")
        if way not in ("max", "min"):
            raise ConfigError(f"--objectives {item!r}: expected key:max or key:min")
        out.append((key, "maximize" if way == "max" else "minimize"))
    return out


def load_study_file(path: Path) -> dict[str, Any]:
    """A ready-made study (bench/studies/*.toml): method, task, preset, grid, set, seeds."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"--study-file {path}: {err}") from None
    allowed = {"study", "description", "method", "task", "preset", "grid", "set", "seeds", "trials", "objectives"}
    if unknown := set(data) - allowed:
        raise ConfigError(f"--study-file {path}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")
    return data


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """optuna's journal storage has no heartbeat (only RDB has one); this adds it as a trial
    system attribute so a killed worker's trial is failed and retried exactly as on RDB.
    Staleness compares wall clocks: machines sharing a journal need synchronised clocks."""

    def __init__(self, path: Path, interval: int, grace: int, callback: Callable[..., None]) -> None:
        super().__init__(JournalFileBackend(str(path)))
        self._interval, self._grace, self._callback = interval, grace, callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except UpdateFinishedTrialError:
            pass  # another worker already judged this trial stale

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return [t._trial_id for t in running if now - _last_beat(t) > self._grace]

    def get_heartbeat_interval(self) -> int:
        return self._interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[..., None]:
        return self._callback


def _last_beat(trial: FrozenTrial) -> float:
    """A retried trial inherits its original's heartbeat attribute, hence the start time too."""
    started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
    return max(float(trial.system_attrs.get(HEARTBEAT_ATTR, 0.0)), started)


def make_storage(url: str | None, out: Path, heartbeat: int = 30) -> BaseStorage:
    """`postgresql://` / `sqlite://` URLs: RDB storage; anything else a journal file path
    (default OUT/optuna.journal). Both fail trials silent for 3 heartbeats and retry them."""
    retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
    if url and "://" in url:
        if url.startswith("postgresql://"):  # the driver of the `postgres` extra, whatever SQLAlchemy's default
            url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")
        return RDBStorage(
            url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat, heartbeat_stale_trial_callback=retry
        )
    path = Path(url) if url else out / "optuna.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    return HeartbeatJournalStorage(path, heartbeat, 3 * heartbeat, retry)


def open_study(spec: SweepSpec, storage: BaseStorage) -> optuna.Study:
    directions = [way for _, way in spec.objectives]
    if spec.trials is None:
        sampler: optuna.samplers.BaseSampler = optuna.samplers.BruteForceSampler()
    elif len(directions) > 1:
        sampler = optuna.samplers.NSGAIISampler()
    else:
        sampler = optuna.samplers.TPESampler()
    return optuna.create_study(
        study_name=spec.study, storage=storage, directions=directions, sampler=sampler, load_if_exists=True
    )


def _key(params: dict[str, Any], spec: SweepSpec) -> tuple[Any, ...]:
    return tuple(params.get(k) for k in spec.grid)


def duplicate_of(trial: Trial, params: dict[str, Any]) -> int | None:
    """Two workers asking at once may be handed the same point (the sampler's view is a
    moment old). The earlier trial keeps it: wait until every earlier running trial has its
    parameters, then yield to one with ours that is earlier, queued or already complete."""
    deadline = time.monotonic() + 30
    while True:
        others = [t for t in trial.study.get_trials(deepcopy=False) if t.number != trial.number]
        if time.monotonic() > deadline or not any(
            t.state == TrialState.RUNNING and t.number < trial.number and len(t.params) < len(params) for t in others
        ):
            break
        time.sleep(0.2)
    for t in others:
        earlier = t.state == TrialState.RUNNING and t.number < trial.number
        if t.params == params and (earlier or t.state in (TrialState.COMPLETE, TrialState.WAITING)):
            return t.number
    return None


def record_value(record: dict[str, Any], key: str) -> float:
    value = record["metrics"].get(key, record["efficiency"].get(key))
    if not isinstance(value, int | float):
        raise TrialFailed(f"objective {key!r} is not in the run's metrics or efficiency")
    return float(value)


def make_objective(spec: SweepSpec, out: Path, console: Console) -> Callable[[Trial], list[float]]:
    def objective(trial: Trial) -> list[float]:
        params = {key: trial.suggest_categorical(key, choices) for key, choices in spec.grid.items()}
        if (dup := duplicate_of(trial, params)) is not None:
            trial.set_user_attr("duplicate_of", dup)
            raise optuna.TrialPruned(f"trial {dup} runs the same point")
        plan = RunPlan(
            methods=[spec.method],
            tasks=[spec.task],
            preset=spec.preset,
            seeds=spec.seeds,
            device=spec.device,
            overrides=[*spec.overrides, *(f"{k}={v}" for k, v in params.items())],
            force=True,  # a point shared with another study or an earlier run is rerun and tagged here
            tags={"study": spec.study, "trial": str(trial.number), "swept": ",".join(spec.grid)},
            command=spec.command,
            tracking=spec.tracking,
        )
        try:
            records = execute(plan, out, console)
        except RunInterrupted:  # optuna fails the trial; its point is queued again, for the rerun to resume
            trial.study.enqueue_trial(params)
            raise
        trial.set_user_attr("run_ids", [r["run_id"] for r in records])
        if failed := [r for r in records if r["status"] != "ok"]:
            trial.set_user_attr("status", failed[0]["status"])
            trial.set_user_attr("error", failed[0]["error"])
            raise TrialFailed(f"{failed[0]['status']}: {failed[0]['error']}")
        values = [sum(record_value(r, key) for r in records) / len(records) for key, _ in spec.objectives]
        if spec.max_memory is not None:
            mem = max(record_value(r, "train_mem_bytes_est") for r in records)
            trial.set_constraint("train_mem_bytes_est", mem - spec.max_memory)  # feasible when <= 0
        return values

    return objective


def work_left(study: optuna.Study, spec: SweepSpec) -> tuple[bool, bool]:
    """(unfinished, startable): the study still has trials to finish or run, and one of them
    can start now (a queued retry, or an unclaimed point / trial budget)."""
    trials = study.get_trials(deepcopy=False)
    active = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    waiting = any(t.state == TrialState.WAITING for t in trials)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    if spec.trials is None:
        points = spec.points()
        done = {_key(t.params, spec) for t in finished} & points
        claimed = done | {_key(t.params, spec) for t in active}
        return bool(active) or len(done) < len(points), waiting or bool(points - claimed)
    budget = min(spec.trials, math.prod(len(v) for v in spec.grid.values()))
    return bool(active) or len(finished) < budget, waiting or len(finished) + len(active) < budget


def run_worker(spec: SweepSpec, storage: BaseStorage, out: Path, console: Console) -> optuna.Study:
    """Run trials until the study is complete: also waits for other workers' trials, so a
    stale one (its worker died) is failed and retried here once its heartbeat is old."""
    study = open_study(spec, storage)
    objective = make_objective(spec, out, console)
    while True:
        optuna.storages.fail_stale_trials(study)
        unfinished, startable = work_left(study, spec)
        if not unfinished:
            return study
        if startable:
            study.optimize(objective, n_trials=1, catch=(TrialFailed,))
        else:
            time.sleep(POLL_S)


def spawn_workers(argv: list[str], workers: int) -> int:
    """`--workers N`: N processes of this same command joining one study (the appended
    `--workers 1` wins over the earlier value), each with its share of the cores unless
    OMP_NUM_THREADS says otherwise. They fork from the command's forkserver (bench.forkserver),
    which has imported torch and timm once, instead of each importing them again."""
    ctx = forkserver_context()
    args = ([*argv, "--workers", "1"], threads_per_worker(workers))
    procs = [ctx.Process(target=same_command, args=args) for _ in range(workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    return max(proc.exitcode or 0 for proc in procs)  # joined: each has one
