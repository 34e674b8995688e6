"""`bench run`: train, select on val, test and measure methods on tasks."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from rich.console import Console

from bench.claims import DEFAULT_TIMEOUT_S
from bench.cli.args import (
    DEFAULT_OUT,
    DEVICES,
    PRESET_HELP,
    UsageError,
    add_tracking_arguments,
    check_seeds,
    count,
    csv,
    positive_int,
    positive_seconds,
    preset_name,
    run_workers,
    seeds,
    time_limit,
    tracking_of,
)
from bench.cli.command import Command
from bench.cli.console import print_summary
from bench.launch import LAUNCHERS

DEFAULT_TASKS = 4  # array tasks of --launcher, unless --array-parallelism


def add_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--plan", type=Path, default=None, help="an experiment file (e.g. bench/plans/reference.toml); flags win"
    )
    run.add_argument("--methods", type=csv, default=None, help="comma-separated method names (default: mettle,lavish)")
    run.add_argument("--tasks", type=csv, default=None, help="comma-separated task names (default: all)")
    run.add_argument("--preset", type=preset_name, default=None, help=PRESET_HELP + " (default: tiny)")
    run.add_argument("--seeds", type=seeds, default=None, help="comma-separated seeds (default: 0)")
    run.add_argument("--device", default="auto", choices=DEVICES)
    run.add_argument("--out", type=Path, default=DEFAULT_OUT)
    run.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="TASK=PATH",
        help="real data for a task (prepared directory); synthetic otherwise",
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.lr=1e-3 or mettle.num_tokens=4",
    )
    run.add_argument(
        "--tune",
        default=None,
        metavar="KEY=V1,V2",
        help="give every method the same candidates (e.g. train.lr=3e-4,1e-3,3e-3); tables keep, per method, "
        "the candidate with the best mean rank of its val metric over the tasks",
    )
    run.add_argument(
        "--recipe",
        default=None,
        metavar="official|NAME",
        help="official: each method's published recipe for the task (bench/recipes/<method>_<task>.toml); NAME: "
        "that recipe (bench/recipes/NAME.toml) for every method; applied before --set, which wins",
    )
    run.add_argument("--force", action="store_true", help="rerun runs that already finished")
    run.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep each run's checkpoint (OUT/checkpoints/<run key>) after its record is written",
    )
    add_tracking_arguments(run)
    run.add_argument(
        "--workers",
        type=run_workers,
        default=None,
        metavar="N",
        help="runs at once, each in its own process with its share of the cores, or on CUDA its own GPU; "
        "timing passes run alone on their device (default: auto, one per core on a CPU, one per visible GPU)",
    )
    run.add_argument(
        "--claim-timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help="commands sharing OUT claim each run before they start it; a claim without a heartbeat "
        f"for S seconds (its command was killed, its machine lost) is taken over (default {DEFAULT_TIMEOUT_S:g})",
    )
    cluster = run.add_argument_group("cluster", "submit the plan as a job array whose tasks share its runs by claim")
    cluster.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="none",
        help="slurm: a Slurm job array through submitit; local: the same tasks as processes here, waited for; "
        "none: run here (default)",
    )
    cluster.add_argument("--partition", default=None, help="Slurm partition (default: the cluster's)")
    cluster.add_argument(
        "--gpus-per-task", type=count, default=None, help="GPUs per array task (default: 1 with slurm, 0 with local)"
    )
    cluster.add_argument("--cpus-per-task", type=positive_int, default=None, help="CPUs per array task")
    cluster.add_argument(
        "--time", type=time_limit, default="12:00:00", help="each task's time limit, [D-]HH:MM:SS (default 12:00:00)"
    )
    cluster.add_argument(
        "--array-parallelism",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"array tasks, all allowed to run at once (default: {DEFAULT_TASKS}, at most one per run)",
    )


def data_sources(items: list[str], tasks: list[str]) -> dict[str, str]:
    sources = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--data {item!r}: expected TASK=PATH")
        task, path = item.split("=", 1)
        if task not in tasks:
            raise UsageError(f"--data {item!r}: task {task!r} is not among the tasks run ({', '.join(tasks)})")
        sources[task] = path
    return sources


def execute(args: argparse.Namespace, console: Console) -> int:
    from bench.device import distributed, is_main_process
    from bench.plan import PlanFile, RunPlan, load_plan, resolve
    from bench.registry import task_names
    from bench.report import load_usable, write_figures, write_tables
    from bench.results import ResultsStore
    from bench.runner import execute as execute_plan

    tracking = tracking_of(args)
    file = load_plan(args.plan) if args.plan else PlanFile(Path())
    tasks = args.tasks or file.tasks or task_names()
    if args.tune and file.candidates:
        raise UsageError("--tune and a plan's [candidates] both give candidates: use one")
    plan = RunPlan(
        methods=args.methods or file.methods or ["mettle", "lavish"],
        tasks=tasks,
        preset=args.preset or file.preset or "tiny",  # a plan's preset is checked by resolve
        seeds=args.seeds or check_seeds(file.seeds or [0], f"--plan {args.plan}"),
        device=args.device,
        source=data_sources(args.data, tasks),
        overrides=[*file.overrides, *args.overrides],
        force=args.force,
        tags={"plan": str(args.plan)} if args.plan else {},
        candidates=file.candidates,
        tune=args.tune,
        command=args.command_line,
        workers=args.workers,
        claim_timeout=args.claim_timeout,
        keep_checkpoints=args.keep_checkpoints,
        recipe=args.recipe or file.recipe,
        tracking=tracking,
    )
    if args.launcher != "none":  # the plan is checked here, its device where the tasks run (a login node has no GPU)
        return launch(args, len(resolve(dataclasses.replace(plan, device="cpu", workers=1))), console)
    runs = resolve(plan)  # usage errors surface before any work
    with distributed(args.device):
        records = execute_plan(plan, args.out, console if is_main_process() else Console(quiet=True), runs=runs)
    if not is_main_process():
        return 0
    everything = load_usable(ResultsStore(args.out)).records  # OUT's tables hold every record in OUT
    table = write_tables(everything, args.out)
    figures = write_figures(everything, args.out)
    print_summary(table, console)
    console.print(
        f"records: {args.out / 'runs.jsonl'}; tables: {args.out / 'tables'}; "
        f"figures: {', '.join(str(f) for f in figures) or 'none'}"
    )
    failed = [r for r in records if r["status"] != "ok"]
    for r in failed:
        console.print(f"[red]{r['status']}[/] {r['method']} / {r['task']} / seed {r['seed']}: {r['error']}")
    return 1 if failed else 0


def launch(args: argparse.Namespace, runs: int, console: Console) -> int:
    from bench.launch import Resources, submit

    resources = Resources(
        tasks=min(args.array_parallelism or DEFAULT_TASKS, runs),
        minutes=args.time,
        gpus_per_task=args.gpus_per_task if args.gpus_per_task is not None else int(args.launcher == "slurm"),
        cpus_per_task=args.cpus_per_task,
        partition=args.partition,
    )
    return submit(args.launcher, args.argv, args.out, resources, console)


COMMAND = Command("run", "train, select on val, test and measure methods on tasks", add_arguments, execute)
