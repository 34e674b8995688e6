"""`bench sweep`: ablation grids and multi-objective studies (optuna), one run per trial."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from bench.cli.args import (
    DEFAULT_OUT,
    DEVICES,
    PRESET_HELP,
    UsageError,
    add_tracking_arguments,
    check_seeds,
    preset_name,
    require_positive,
    seeds,
    tracking_of,
)
from bench.cli.command import Command
from bench.cli.console import print_table
from bench.cli.results import load_records


def add_arguments(sweep: argparse.ArgumentParser) -> None:
    sweep.add_argument("--study-file", type=Path, default=None, help="a ready-made study, e.g. bench/studies/*.toml")
    sweep.add_argument("--method", default=None)
    sweep.add_argument("--task", default=None)
    sweep.add_argument("--preset", type=preset_name, default=None, help=PRESET_HELP + " (default: tiny)")
    sweep.add_argument("--seeds", type=seeds, default=None, help="seeds per trial (default: 0)")
    sweep.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2", help="swept values, e.g. mettle.num_tokens=1,2"
    )
    sweep.add_argument("--trials", type=int, default=None, help="sample N points of the grid instead of all of them")
    sweep.add_argument(
        "--objectives", default=None, help="key:max|min,... from metrics/efficiency (default: metric:max,memory:min)"
    )
    sweep.add_argument("--max-memory", type=float, default=None, metavar="BYTES", help="cap on train_mem_bytes_est")
    sweep.add_argument("--study", default=None, help="study name; workers with the same name and storage join it")
    sweep.add_argument(
        "--storage", default=None, help="postgresql://... or a journal file (default OUT/optuna.journal)"
    )
    sweep.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    sweep.add_argument("--heartbeat", type=int, default=30, help="seconds; a trial silent for 3 is failed and retried")
    sweep.add_argument("--device", default="auto", choices=DEVICES)
    sweep.add_argument("--out", type=Path, default=DEFAULT_OUT)
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    add_tracking_arguments(sweep)


def sweep_spec(args: argparse.Namespace):
    """The study file gives defaults; flags given on the command line win (`--set` adds)."""
    from bench.sweep import SweepSpec, load_study_file, parse_grid, parse_objectives

    require_positive(args, "workers", "heartbeat", "trials", "max_memory")
    data = load_study_file(args.study_file) if args.study_file else {}
    method, task = args.method or data.get("method"), args.task or data.get("task")
    if not method or not task:
        raise UsageError("sweep needs --method and --task (or --study-file)")
    preset = args.preset or data.get("preset", "tiny")  # a study file's preset is checked by resolve
    trials = args.trials or data.get("trials")
    if trials is not None and not (type(trials) is int and trials > 0):
        raise UsageError(f"--study-file {args.study_file}: trials must be an integer > 0, got {trials!r}")
    objectives = args.objectives or data.get("objectives")
    return SweepSpec(
        method=method,
        task=task,
        grid=parse_grid(args.grid) if args.grid else data.get("grid", {}),
        preset=preset,
        overrides=[*data.get("set", []), *args.overrides],
        seeds=args.seeds or check_seeds(data.get("seeds", [0]), f"--study-file {args.study_file}"),
        trials=trials,
        objectives=parse_objectives(objectives) if objectives else [],
        max_memory=args.max_memory,
        study=args.study or study_name(data, task, preset),
        device=args.device,
        command=args.command_line,
        tracking=tracking_of(args),
    )


def study_name(data: dict, task: str, preset: str) -> str:
    """A study file's study, suffixed with the task and the preset where the command line
    changed them: the same grid on another task or preset is another study (sharing one would
    count the first task's trials as done). Without a named study, "" lets SweepSpec name it."""
    if not data.get("study"):
        return ""
    changed = [v for v, given in ((task, data.get("task")), (preset, data.get("preset", "tiny"))) if v != given]
    return "_".join([data["study"], *changed])


def execute(args: argparse.Namespace, console: Console) -> int:
    from optuna.trial import TrialState

    from bench.plan import RunPlan, resolve
    from bench.report import write_study_tables
    from bench.sweep import make_storage, open_study, run_worker, spawn_workers

    spec = sweep_spec(args)
    first = [f"{k}={v[0]}" for k, v in spec.grid.items()]
    resolve(RunPlan([spec.method], [spec.task], spec.preset, overrides=[*spec.overrides, *first]))
    storage = make_storage(args.storage, args.out, args.heartbeat)
    if args.workers > 1:
        open_study(spec, storage)  # created once, before the workers race to create it
        code = spawn_workers(args.argv, args.workers)
        study = open_study(spec, storage)
    else:
        study = run_worker(spec, storage, args.out, console)
        code = 0
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.state == TrialState.FAIL:
            console.print(f"[red]failed[/] trial {t.number} {t.params}: {t.user_attrs.get('error', 'worker lost')}")
    table = write_study_tables(load_records(args.out, console), args.out, spec.study)
    print_table(table, console)
    console.print(
        f"study {spec.study}: {sum(t.state == TrialState.COMPLETE for t in trials)} complete; tables in "
        f"{args.out / 'tables'}"
    )
    return code or int(any(t.state == TrialState.FAIL and "error" in t.user_attrs for t in trials))


COMMAND = Command(
    "sweep", "ablation grids and multi-objective studies (optuna), one run per trial", add_arguments, execute
)
