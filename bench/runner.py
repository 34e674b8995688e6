"""Plans runs (methods x tasks x seeds), skips finished ones, runs the rest and
appends one record each. A failure ends that run with a status, never the sweep."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.checkpoint import interrupts
from bench.claims import open_share
from bench.config import ResolvedRun
from bench.device import check_workers, is_main_process, threads_per_worker
from bench.gpus import worker_gpus
from bench.jobs import Context, Display, Job, job_checkpoint, job_key, progress_bars, run_serially
from bench.plan import RunPlan, resolve
from bench.presets import get_preset
from bench.pretrain import ensure_shipped
from bench.registry import get_task
from bench.results import ResultsStore, RunRecord, Status, git_state
from bench.workers import run_in_processes


def execute(
    plan: RunPlan,
    out_dir: Path,
    console: Console | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    runs: list[ResolvedRun] | None = None,
) -> list[dict[str, Any]]:
    """Run the plan (`runs`: the plan already resolved); return the records of this invocation
    in plan order, as their JSON form (skipped ones included, read back)."""
    console = console or Console(stderr=True, soft_wrap=True)
    runs = resolve(plan) if runs is None else runs
    store = ResultsStore(out_dir)
    report = store.load()
    for line, why in report.bad_lines:
        console.print(f"[yellow]warning:[/] {store.path} line {line}: {why}; ignored")
    finished = {r["key"]: r for r in report.records if r["status"] == Status.OK and "key" in r}
    preset = get_preset(plan.preset)
    if any(source.missing for run in runs for source in run.weights.values()):
        ensure_shipped(preset, log=console.print)  # the one explicit rebuild, outside any run's timing
        for run in runs:
            run.weights = {role: source.with_digest() for role, source in run.weights.items()}
    records: dict[int, dict[str, Any]] = {}
    todo = []
    for index, run in enumerate(runs):
        job = Job(index, run, job_key(run))
        changed = job.key in finished and weights_changed(finished[job.key], run)
        if job.key in finished and not plan.force and not changed:
            console.print(f"skip {job.label}: already finished in {store.path} (use --force to rerun)")
            records[index] = finished[job.key]
            continue
        if changed:
            console.print(f"rerun {job.label}: its tower weights differ from those {store.path} recorded")
        todo.append(job)
    processes = min(check_workers(plan.workers, plan.device), len(todo)) or 1
    gpus = worker_gpus(plan.device, processes)
    checkpoints = out_dir / "checkpoints"
    tracking = replace(plan.tracking, out=out_dir, display=console.is_terminal)  # a terminal's lines show the loss
    context = Context(plan.preset, git_state(out_dir), plan.command, processes, checkpoints, tracking)
    for job in todo:
        if (checkpoint := job_checkpoint(job, checkpoints)).exists():
            console.print(f"resume {job.label} from {checkpoint.path}")
    if gpus:
        console.print(f"{len(todo)} runs, one per GPU on GPUs {', '.join(gpus)}")
    elif processes > 1:
        threads = threads_per_worker(processes)
        console.print(f"{len(todo)} runs, {processes} at a time with {threads} thread(s) each; timing passes run alone")
    share = open_share(out_dir, plan.claim_timeout, report.records, console)  # other commands on this OUT
    with interrupts(plan.command), share.held(), progress_bars(console) as progress:
        overall = progress.add_task("runs", total=len(runs), completed=len(records), state="")
        display = Display(progress)

        def run(jobs: list[Job]) -> Iterator[tuple[Job, RunRecord]]:
            if processes == 1:
                return run_serially(jobs, context, display, share.take)
            return run_in_processes(jobs, context, display, processes, share.take, gpus)

        for job, record in share.rounds(todo, run):
            if is_main_process() and share.keep(job, record):  # under torchrun every rank has the same record
                store.append(record)
                if not plan.keep_checkpoints:
                    job_checkpoint(job, checkpoints).remove()
            share.release(job)
            records[job.index] = record.to_dict()
            if on_record is not None:
                on_record(records[job.index])
            metric = get_task(job.run.task).selection_metric
            shown = f"{metric}={record.metrics.get(metric, float('nan')):.2f}" if record.ok else record.error
            console.print(f"{'done' if record.ok else record.status} {job.label}: {shown} ({record.wall_s:.1f}s)")
            progress.advance(overall)
        for job, found in share.finished:  # runs that other commands did meanwhile
            records[job.index] = found
            if on_record is not None:
                on_record(found)
            console.print(f"{found['status']} {job.label}: recorded by another command")
            progress.advance(overall)
    return [records[i] for i in sorted(records)]


def weights_changed(record: dict[str, Any], run: ResolvedRun) -> bool:
    """Whether a finished record's towers were built from other weights than this run's
    would be (same config, e.g. a checkpoint replaced in place or new shipped weights).
    Records written before weights were recorded cannot tell, and count as current."""
    recorded = record.get("weights")
    if not recorded:
        return False
    current = run.weights
    return any(role not in current or current[role].sha256 != recorded[role]["sha256"] for role in recorded)
