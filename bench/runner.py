"""Plans runs (methods x tasks x seeds), skips finished ones, runs the rest and
appends one record each. A failure ends that run with a status, never the sweep."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.config import ResolvedRun
from bench.device import check_workers, is_main_process, threads_per_worker
from bench.jobs import Context, Display, Job, run_serially
from bench.plan import RunPlan, resolve
from bench.presets import Preset, get_preset
from bench.registry import get_method, get_task
from bench.results import ResultsStore, git_state, run_key
from bench.weights import resolve as resolve_weights
from bench.weights import shipped_files
from bench.workers import run_in_processes


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
