"""Plans runs (methods x tasks x seeds), skips finished ones, runs the rest and
appends one record each. A failure ends that run with a status, never the sweep."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.config import (
    BASE_SECTIONS,
    ConfigError,
    MeasureConfig,
    Override,
    ResolvedRun,
    TowersConfig,
    TrainConfig,
    build_section,
    parse_overrides,
)
from bench.device import is_main_process, resolve_device
from bench.jobs import Context, Display, Job, run_serially
from bench.plan import Candidate, candidate_label
from bench.presets import Preset, get_preset
from bench.registry import METHODS, TASKS, get_method, get_task, task_names
from bench.results import ResultsStore, git_state, run_key
from bench.tasks.base import Task
from bench.weights import resolve as resolve_weights
from bench.weights import shipped_files
from bench.workers import check_workers, run_in_processes, threads_per_worker


@dataclass
class RunPlan:
    methods: list[str]
    tasks: list[str]
    preset: str = "tiny"
    seeds: list[int] = field(default_factory=lambda: [0])
    device: str = "auto"
    source: dict[str, str] = field(default_factory=dict)  # task -> data path; synthetic when absent
    overrides: list[str] = field(default_factory=list)
    force: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    # per method, the candidate configurations (override lists) run on every task and seed;
    # the tables keep the one with the best mean val rank over the tasks (bench.report)
    candidates: dict[str, list[Candidate]] = field(default_factory=dict)
    tune: str | None = None  # "section.key=v1,v2,...": the same candidates for every method
    command: str | None = None  # the command line that asked for these runs; every record keeps it
    workers: int | None = 1  # runs at once, each in a process of its own (bench.workers); None: one per core

    def candidates_of(self, method: str) -> list[Candidate]:
        if self.tune:
            key, _, values = self.tune.partition("=")
            items = [v.strip() for v in values.split(",") if v.strip()]
            if not key or not items:
                raise ConfigError(f"--tune {self.tune!r}: expected section.key=v1,v2,...")
            return [(f"{key}={v}",) for v in items]
        return self.candidates.get(method, [()])


class Sections(Mapping[str, type]):
    """Config section name -> its dataclass: the base sections, then every method's and task's
    config, whose module is imported only when its section is looked up (an override names it)."""

    def __getitem__(self, name: str) -> type:
        if name in BASE_SECTIONS:
            return BASE_SECTIONS[name]
        if name in METHODS:
            return METHODS.get(name).config_cls
        if name in TASKS:
            return TASKS.get(name).config_cls
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter([*BASE_SECTIONS, *METHODS.names(), *task_names()])

    def __len__(self) -> int:
        return len(list(iter(self)))


def all_sections() -> Sections:
    return Sections()


def resolve(plan: RunPlan) -> list[ResolvedRun]:
    """Check every name and override before anything runs (bad usage exits 2)."""
    preset = get_preset(plan.preset)
    resolve_device(plan.device)
    check_workers(plan.workers, plan.device)
    for m in plan.methods:
        get_method(m)
    for t in plan.tasks:
        get_task(t)
    sections = all_sections()
    base = parse_overrides(plan.overrides, sections)
    tagged = bool(plan.tune or plan.candidates)
    for task_name, path in plan.source.items():
        if path != "synthetic" and not Path(path).is_dir():
            raise ConfigError(f"--data {task_name}={path}: not a directory")
    runs = []
    for task_name in plan.tasks:
        task = get_task(task_name)
        source = plan.source.get(task_name, "synthetic")
        for method in plan.methods:
            for seed in plan.seeds:
                for candidate in plan.candidates_of(method):
                    overrides = base + parse_overrides(list(candidate), sections)
                    tags = {"candidate": candidate_label(candidate)} if tagged else {}
                    task_cfg = build_section(task.config_cls, task_name, preset.data, overrides)
                    runs.append(
                        ResolvedRun(
                            method=method,
                            task=task_name,
                            preset=preset.name,
                            source=source,
                            seed=seed,
                            device=plan.device,
                            train=build_section(
                                TrainConfig, "train", {**preset.train, **get_method(method).train_defaults}, overrides
                            ),
                            measure=build_section(MeasureConfig, "measure", {}, overrides),
                            towers=build_section(TowersConfig, "towers", {}, overrides),
                            method_cfg=build_section(get_method(method).config_cls, method, {}, overrides),
                            task_cfg=for_source(task, source, task_cfg, overrides),
                            tags={**plan.tags, **tags},
                        )
                    )
    for run in runs:  # weights that cannot be found, or a budget reference that is no method, are usage errors too
        resolve_weights(preset, run.towers, get_method(run.method).towers, rebuild=False)
        if run.train.budget == "flops":  # loaded only when used: a run imports only its own plug-ins
            get_method(run.train.budget_reference)
    return runs


def for_source(task: Task, source: str, cfg: Any, overrides: list[Override]) -> Any:
    """`cfg` with the values real data decides (AVE and LLP clips have 10 segments,
    whatever the preset says), so that the record says what ran. Setting one of them to
    another value for real data is a usage error."""
    if source == "synthetic" or not task.real_fixes:
        return cfg
    for o in overrides:
        if o.section == task.name and o.key in task.real_fixes and getattr(cfg, o.key) != task.real_fixes[o.key]:
            raise ConfigError(f"{o.dotted}={o.value}: real {task.name} data has {o.key}={task.real_fixes[o.key]}")
    return dataclasses.replace(cfg, **task.real_fixes)


def execute(
    plan: RunPlan,
    out_dir: Path,
    console: Console | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the plan; return the records of this invocation in plan order (skipped ones
    included, read back)."""
    console = console or Console(stderr=True)
    runs = resolve(plan)
    store = ResultsStore(out_dir)
    report = store.load()
    for line, why in report.bad_lines:
        console.print(f"[yellow]warning:[/] {store.path} line {line}: {why}; ignored")
    finished = {r["key"]: r for r in report.records if r.get("status") == "ok" and "key" in r}
    preset = get_preset(plan.preset)
    if any(s.origin == "cache" for r in runs for s in _sources(preset, r, rebuild=False).values()):
        shipped_files(preset, log=console.print)  # a first-use rebuild happens here, outside any run's timing
    records: dict[int, dict[str, Any]] = {}
    todo = []
    for index, run in enumerate(runs):
        job = Job(index, run, run_key(run.method, run.task, run.preset, run.source, run.seed, run.to_dict()))
        changed = job.key in finished and weights_changed(finished[job.key], preset, run)
        if job.key in finished and not plan.force and not changed:
            console.print(f"skip {job.label}: already finished in {store.path} (use --force to rerun)")
            records[index] = finished[job.key]
            continue
        if changed:
            console.print(f"rerun {job.label}: its tower weights differ from those {store.path} recorded")
        todo.append(job)
    processes = min(check_workers(plan.workers, plan.device), len(todo)) or 1
    context = Context(plan.preset, git_state(out_dir), plan.command, processes)
    if processes > 1:
        threads = threads_per_worker(processes)
        console.print(f"{len(todo)} runs, {processes} at a time with {threads} thread(s) each; timing passes run alone")
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        overall = progress.add_task("runs", total=len(runs), completed=len(records))
        display = Display(progress)
        if processes == 1:
            done = run_serially(todo, context, display)
        else:
            done = run_in_processes(todo, context, display, processes)
        for job, record in done:
            if is_main_process():  # under torchrun every rank has the same record; one is kept
                store.append(record)
            records[job.index] = record
            if on_record is not None:
                on_record(record)
            status = record["status"]
            metric = get_task(job.run.task).selection_metric
            shown = f"{metric}={record['metrics'].get(metric, float('nan')):.2f}" if status == "ok" else record["error"]
            console.print(f"{'done' if status == 'ok' else status} {job.label}: {shown} ({record['wall_s']:.1f}s)")
            progress.advance(overall)
    return [records[i] for i in sorted(records)]


def _sources(preset: Preset, run: ResolvedRun, rebuild: bool = True):
    return resolve_weights(preset, run.towers, get_method(run.method).towers, rebuild=rebuild)


def weights_changed(record: dict[str, Any], preset: Preset, run: ResolvedRun) -> bool:
    """Whether a finished record's towers were built from other weights than this run's
    would be (same config, e.g. a checkpoint replaced in place or new shipped weights).
    Records written before weights were recorded cannot tell, and count as current."""
    recorded = record.get("weights")
    if not recorded:
        return False
    current = _sources(preset, run)
    return any(role not in current or current[role].sha256 != recorded[role]["sha256"] for role in recorded)
