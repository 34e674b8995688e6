"""Command line: `python -m bench run|sweep|table|plot|list|profile|check-budgets|data|pretrain`.

Exit codes: 0 success, 2 bad usage (unknown name, bad key or value), 1 failure.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from bench.config import ConfigError
from bench.data.errors import DataWarning
from bench.presets import PRESETS, get_preset
from bench.weights import WEIGHTS_DIR
from mettle_core.interface import UnknownNameError

DEFAULT_OUT = Path("runs")  # git-ignored: a newcomer's first run really runs (results/ holds the committed ones)
PRESET_HELP = f"one of {', '.join(PRESETS.names())}"


class UsageError(Exception):
    """Bad usage: exit code 2."""


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds expects comma-separated integers, got {text!r}") from None


def _run_workers(text: str) -> int | None:
    """auto (None: one run per core on a CPU, see bench.workers) or a count, checked later."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers expects auto or a number of processes, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train, select on val, test and measure methods on tasks")
    run.add_argument(
        "--plan", type=Path, default=None, help="an experiment file (e.g. bench/plans/reference.toml); flags win"
    )
    run.add_argument("--methods", type=_csv, default=None, help="comma-separated method names (default: mettle,lavish)")
    run.add_argument("--tasks", type=_csv, default=None, help="comma-separated task names (default: all)")
    run.add_argument("--preset", default=None, help=PRESET_HELP + " (default: tiny)")
    run.add_argument("--seeds", type=_seeds, default=None, help="comma-separated seeds (default: 0)")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
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
    run.add_argument("--force", action="store_true", help="rerun runs that already finished")
    run.add_argument(
        "--workers",
        type=_run_workers,
        default=None,
        metavar="N",
        help="runs at once, each in its own process with its share of the cores; timing passes run alone "
        "(default: auto, one per core on a CPU, 1 on a GPU)",
    )

    sweep = sub.add_parser("sweep", help="ablation grids and multi-objective studies (optuna), one run per trial")
    sweep.add_argument("--study-file", type=Path, default=None, help="a ready-made study, e.g. bench/studies/*.toml")
    sweep.add_argument("--method", default=None)
    sweep.add_argument("--task", default=None)
    sweep.add_argument("--preset", default=None, help=PRESET_HELP + " (default: tiny)")
    sweep.add_argument("--seeds", type=_seeds, default=None, help="seeds per trial (default: 0)")
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
    sweep.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    sweep.add_argument("--out", type=Path, default=DEFAULT_OUT)
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    for name, text in (("table", "write tables from OUT/runs.jsonl"), ("plot", "write figures from OUT/runs.jsonl")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--out", type=Path, default=DEFAULT_OUT)
        p.add_argument("--reference", default=None, help="method the ratios are relative to")
        p.add_argument("--study", default=None, help="the ablation of one sweep study instead of the method table")
        if name == "plot":
            p.add_argument("--storage", default=None, help="the study's storage, for parameter importance")

    data = sub.add_parser("data", help="prepare real datasets").add_subparsers(dest="data_command", required=True)
    prep = data.add_parser("prepare", help="decode raw videos into the layout the loaders read (resumable)")
    prep.add_argument("dataset", choices=["ave", "llp", "avsbench"])
    prep.add_argument("--src", type=Path, required=True, help="raw dataset directory")
    prep.add_argument("--dst", type=Path, required=True, help="prepared output directory")
    prep.add_argument("--size", type=int, default=224, help="frame side in pixels")
    prep.add_argument(
        "--sample-rate",
        type=int,
        default=32000,
        help="audio stored as waveform at this rate (default 32000, HTS-AT's; loaders resample to a preset's)",
    )
    prep.add_argument(
        "--workers",
        type=int,
        default=1,
        help="clips decoded at once, one process each (default 1: every worker holds its own decoder, "
        "and os.cpu_count() counts a host's cores, not a container's or a shared machine's share)",
    )

    pre = sub.add_parser("pretrain", help="pretrain a preset's towers on synthetic primitives (ships for tiny)")
    pre.add_argument("--preset", default="tiny", help=PRESET_HELP)
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="folder for the weights, heads and card")

    sub.add_parser("list", help="list methods, tasks and presets")
    _add_profile(sub)
    _add_check_budgets(sub)
    return parser


def _add_profile(sub) -> None:
    prof = sub.add_parser("profile", help="memory, time and FLOPs of one training step per method (random weights)")
    prof.add_argument("--methods", type=_csv, default=None, help="comma-separated method names (default: all)")
    prof.add_argument("--preset", default="tiny", help=PRESET_HELP)
    prof.add_argument("--task", default="ave", help="task whose head and data shape the step")
    prof.add_argument("--batch-size", type=int, default=1)
    prof.add_argument("--segments", type=int, default=10, help="T, segments per video")
    prof.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    prof.add_argument("--reference", default="lavish", help="method the ratios are relative to")
    prof.add_argument("--out", type=Path, default=DEFAULT_OUT / "profile")
    prof.add_argument("--sweep", default=None, metavar="KEY=V1,V2", help="batch-size=1,2,4,8 or segments=1,5,10")
    prof.add_argument("--budget", default=None, metavar="SIZE", help="report the largest batch that fits, e.g. 24GiB")
    prof.add_argument("--warmup", type=int, default=2, help="timed-step warm-up iterations")
    prof.add_argument("--repeats", type=int, default=5, help="timed steps (median)")
    prof.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def _add_check_budgets(sub) -> None:
    chk = sub.add_parser("check-budgets", help="fail (exit 1) when a method's memory exceeds results/budgets.toml")
    chk.add_argument("--budgets", type=Path, default=None, help="budgets file (default: results/budgets.toml)")
    chk.add_argument("--presets", type=_csv, default=["smoke", "tiny"])
    chk.add_argument("--methods", type=_csv, default=None, help="comma-separated method names (default: all)")
    chk.add_argument("--update", action="store_true", help="rewrite the budgets with the measured figures")
    chk.add_argument("--tolerance", type=float, default=None, help="relative slack (default: the file's, or 0.05)")


def _data_sources(items: list[str], tasks: list[str]) -> dict[str, str]:
    sources = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--data {item!r}: expected TASK=PATH")
        task, path = item.split("=", 1)
        if task not in tasks:
            raise UsageError(f"--data {item!r}: task {task!r} is not among the tasks run ({', '.join(tasks)})")
        sources[task] = path
    return sources


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from bench.device import distributed, is_main_process
    from bench.plan import PlanFile, RunPlan, load_plan, resolve
    from bench.registry import task_names
    from bench.report import write_figures, write_tables
    from bench.runner import execute

    file = load_plan(args.plan) if args.plan else PlanFile(Path())
    preset = args.preset or file.preset or "tiny"
    get_preset(preset)
    tasks = args.tasks or file.tasks or task_names()
    if args.tune and file.candidates:
        raise UsageError("--tune and a plan's [candidates] both give candidates: use one")
    plan = RunPlan(
        methods=args.methods or file.methods or ["mettle", "lavish"],
        tasks=tasks,
        preset=preset,
        seeds=args.seeds or file.seeds or [0],
        device=args.device,
        source=_data_sources(args.data, tasks),
        overrides=[*file.overrides, *args.overrides],
        force=args.force,
        tags={"plan": str(args.plan)} if args.plan else {},
        candidates=file.candidates,
        tune=args.tune,
        command=args.command_line,
        workers=args.workers,
    )
    resolve(plan)  # usage errors surface before any work
    with distributed(args.device):
        records = execute(plan, args.out, console if is_main_process() else Console(quiet=True))
    if not is_main_process():
        return 0
    table = write_tables(records, args.out)
    figures = write_figures(records, args.out)
    print_summary(table, console)
    console.print(
        f"records: {args.out / 'runs.jsonl'}; tables: {args.out / 'tables'}; "
        f"figures: {', '.join(str(f) for f in figures) or 'none'}"
    )
    failed = [r for r in records if r["status"] != "ok"]
    for r in failed:
        console.print(f"[red]{r['status']}[/] {r['method']} / {r['task']} / seed {r['seed']}: {r['error']}")
    return 1 if failed else 0


def sweep_spec(args: argparse.Namespace):
    """The study file gives defaults; flags given on the command line win (`--set` adds)."""
    from bench.sweep import SweepSpec, load_study_file, parse_grid, parse_objectives

    data = load_study_file(args.study_file) if args.study_file else {}
    method, task = args.method or data.get("method"), args.task or data.get("task")
    if not method or not task:
        raise UsageError("sweep needs --method and --task (or --study-file)")
    preset = args.preset or data.get("preset", "tiny")
    get_preset(preset)
    objectives = args.objectives or data.get("objectives")
    return SweepSpec(
        method=method,
        task=task,
        grid=parse_grid(args.grid) if args.grid else data.get("grid", {}),
        preset=preset,
        overrides=[*data.get("set", []), *args.overrides],
        seeds=args.seeds or data.get("seeds", [0]),
        trials=args.trials or data.get("trials"),
        objectives=parse_objectives(objectives) if objectives else [],
        max_memory=args.max_memory,
        study=args.study or study_name(data, task, preset),
        device=args.device,
        command=args.command_line,
    )


def study_name(data: dict, task: str, preset: str) -> str:
    """A study file's study, suffixed with the task and the preset where the command line
    changed them: the same grid on another task or preset is another study (sharing one would
    count the first task's trials as done). Without a named study, "" lets SweepSpec name it."""
    if not data.get("study"):
        return ""
    changed = [v for v, given in ((task, data.get("task")), (preset, data.get("preset", "tiny"))) if v != given]
    return "_".join([data["study"], *changed])


def cmd_sweep(args: argparse.Namespace, console: Console) -> int:
    from optuna.trial import TrialState

    from bench.plan import RunPlan, resolve
    from bench.report import write_study_tables
    from bench.sweep import make_storage, open_study, run_worker, spawn_workers

    spec = sweep_spec(args)
    first = {k: v[0] for k, v in spec.grid.items()}
    resolve(RunPlan([spec.method], [spec.task], spec.preset, overrides=[*spec.overrides, *_pairs(first)]))
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
    table = write_study_tables(_load_records(args.out, console), args.out, spec.study)
    print_table(table, console)
    console.print(
        f"study {spec.study}: {sum(t.state == TrialState.COMPLETE for t in trials)} complete; tables in "
        f"{args.out / 'tables'}"
    )
    return code or int(any(t.state == TrialState.FAIL and "error" in t.user_attrs for t in trials))


def _pairs(values: dict) -> list[str]:
    return [f"{k}={v}" for k, v in values.items()]


def print_table(table, console: Console) -> None:
    if table is None or table.empty:
        console.print("no finished runs to tabulate")
        return
    rich_table = Table(show_lines=False)
    for col in table.columns:
        rich_table.add_column(str(col), justify="left" if col in ("task", "method") else "right")
    for row in table.itertuples(index=False):
        rich_table.add_row(*["" if str(v) == "nan" else str(v) for v in row])
    Console().print(rich_table)


SUMMARY_COLUMNS = {  # display-table column -> console header: what fits an 80-column terminal
    "method": "method",
    "config": "config",
    "value": "mean ± std",
    "train mem est. (MiB)": "mem MiB",
    "CUDA peak (MiB)": "CUDA MiB",
    "step (ms)": "step ms",
    "mem / ref": "mem/ref",
    "time / ref": "time/ref",
}


def print_profile(table, reference: str, console: Console) -> None:
    """`bench profile`'s points on the console, ratios to `reference`, within 80 columns."""
    if table.empty:
        console.print("no finished points to tabulate")
        return
    rich_table = Table(title=f"profile (ratios to {reference}; every column in profile.md)", box=box.SIMPLE_HEAD)
    for col in table.columns:  # each ratio right after its figure, headed "/ref" to fit
        header = "/ref" if col.endswith("/ref") else col
        rich_table.add_column(header, justify="left" if col == "method" else "right")
    for row in table.itertuples(index=False):
        rich_table.add_row(*map(str, row))
    Console().print(rich_table)


def print_summary(table, console: Console) -> None:
    """The method table on the console, one small table per task (its metric in the title),
    narrow enough for 80 columns; every column stays in the written tables."""
    if table is None or table.empty:
        console.print("no finished runs to tabulate")
        return
    out = Console()
    for task, part in table.groupby("task", sort=False):
        seeds = "/".join(sorted({str(v) for v in part["seeds"]}))
        shown = [c for c in SUMMARY_COLUMNS if c in part and part[c].astype(str).str.strip().ne("").any()]
        rich_table = Table(title=f"{task}: {part['metric'].iloc[0]}, {seeds} seed(s)", box=box.SIMPLE_HEAD)
        for col in shown:
            rich_table.add_column(SUMMARY_COLUMNS[col], justify="left" if col == "method" else "right")
        for _, row in part.iterrows():
            rich_table.add_row(*["" if str(row[c]) == "nan" else str(row[c]) for c in shown])
        out.print(rich_table)


def _load_records(out: Path, console: Console) -> list[dict]:
    from bench.report import load_usable
    from bench.results import ResultsStore

    store = ResultsStore(out)
    if not store.path.exists():
        raise UsageError(f"{store.path} does not exist; run `python -m bench run --out {out}` first")
    report = load_usable(store)
    for line, why in report.bad_lines:
        console.print(f"[yellow]warning:[/] {store.path} line {line}: {why}; ignored")
    return report.records


def cmd_table(args: argparse.Namespace, console: Console) -> int:
    from bench.report import write_study_tables, write_tables

    records = _load_records(args.out, console)
    if args.study:
        table = write_study_tables(records, args.out, args.study)
        if table.empty:
            raise UsageError(f"no records of study {args.study!r} in {args.out / 'runs.jsonl'}")
        print_table(table, console)
    else:
        print_summary(write_tables(records, args.out, reference=args.reference), console)
    console.print(f"tables written to {args.out / 'tables'}")
    return 0


def cmd_plot(args: argparse.Namespace, console: Console) -> int:
    from bench.report import write_figures, write_study_figures

    records = _load_records(args.out, console)
    if args.study:
        paths = write_study_figures(records, args.out, args.study, _importances(args, console))
    else:
        paths = write_figures(records, args.out)
    console.print("figures: " + (", ".join(map(str, paths)) or "none (no finished runs with efficiency)"))
    return 0


def _importances(args: argparse.Namespace, console: Console) -> dict[str, float] | None:
    """optuna's parameter importance for the first objective, when the study's storage is
    at hand and it has enough complete trials; None otherwise (said why)."""
    import optuna

    from bench.sweep import make_storage

    if args.storage is None and not (args.out / "optuna.journal").is_file():
        console.print("no study storage found (pass --storage); parameter importance skipped")
        return None
    try:
        study = optuna.load_study(study_name=args.study, storage=make_storage(args.storage, args.out))
        return optuna.importance.get_param_importances(study, target=lambda t: t.values[0])
    except (KeyError, ValueError, RuntimeError) as err:
        console.print(f"parameter importance skipped: {err}")
        return None


def cmd_list(args: argparse.Namespace, console: Console) -> int:
    from bench.registry import METHODS, get_task, task_names

    out = Console()
    methods = Table("method", "description", title="methods")
    for name in METHODS.names():
        methods.add_row(name, METHODS.get(name).description.splitlines()[0] if METHODS.get(name).description else "")
    tasks = Table("task", "selection metric", "metrics", title="tasks")
    for name in task_names():
        t = get_task(name)
        tasks.add_row(name, t.selection_metric, ", ".join(t.metric_keys))
    presets = Table("preset", "description", title="presets")
    for name in PRESETS.names():
        presets.add_row(name, get_preset(name).description)
    for table in (methods, tasks, presets):
        out.print(table)
    return 0


def cmd_data(args: argparse.Namespace, console: Console) -> int:
    from bench.data.prepare import prepare

    if not args.src.is_dir():
        raise UsageError(f"--src {args.src} is not a directory")
    _positive(args, "size", "sample_rate", "workers")
    try:
        report = prepare(
            args.dataset, args.src, args.dst, size=args.size, sample_rate=args.sample_rate, workers=args.workers,
            console=console,
        )  # fmt: skip
    except ValueError as e:  # a tree prepared with other settings
        raise UsageError(str(e)) from None
    return 1 if report.failed else 0


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")


def cmd_profile(args: argparse.Namespace, console: Console) -> int:
    from bench.device import resolve_device
    from bench.profile import (
        ProfileSpec,
        console_table,
        frame,
        parse_size,
        parse_sweep,
        run_profile,
        with_ratios,
        write_report,
    )
    from bench.registry import METHODS, get_method, get_task

    get_preset(args.preset)
    _positive(args, "batch_size", "segments", "repeats")
    if args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    args.methods = args.methods or METHODS.names()
    for name in [*args.methods, args.reference]:
        get_method(name)
    get_task(args.task)
    try:
        sweep = parse_sweep(args.sweep) if args.sweep else None
        budget = parse_size(args.budget) if args.budget else None
        resolve_device(args.device)
    except (ValueError, RuntimeError) as err:
        raise UsageError(str(err)) from None
    spec = ProfileSpec(
        methods=args.methods,
        preset=args.preset,
        task=args.task,
        batch_size=args.batch_size,
        segments=args.segments,
        device=args.device,
        warmup=args.warmup,
        repeats=args.repeats,
        reference=args.reference,
        sweep=sweep,
        budget=budget,
        overrides=args.overrides,
    )

    done: list[dict] = []

    def progress(r: dict) -> None:
        """Report after every point: an interrupted profile still leaves the table and
        figure of every point finished before it."""
        shown = f"{r['efficiency']['train_step_s']:.3f}s/step" if r["status"] == "ok" else r["error"]
        console.print(f"{r['status']} {r['method']} batch {r['batch_size']} T {r['segments']}: {shown}")
        done.append(r)
        write_report(done, spec, args.out, args.command_line)

    records = run_profile(spec, args.out, args.command_line, args.argv, on_record=progress)
    paths = write_report(records, spec, args.out, args.command_line)
    df = with_ratios(frame(records), spec.reference)
    print_profile(console_table(df, spec.reference), spec.reference, console)
    console.print(f"records: {args.out / 'profile.jsonl'}; report: {', '.join(map(str, paths))}")
    return 1 if any(r["status"] != "ok" for r in records) else 0


def cmd_check_budgets(args: argparse.Namespace, console: Console) -> int:
    from bench import budgets
    from bench.registry import METHODS, get_method

    args.methods = args.methods or METHODS.names()
    for name in args.methods:
        get_method(name)
    for name in args.presets:
        get_preset(name)
    path = args.budgets or budgets.BUDGETS_FILE  # not the parser's default: bench.budgets imports peft and timm
    if not args.update and not path.is_file():
        raise UsageError(f"--budgets {path} does not exist (create it with --update)")
    stored, tolerance = budgets.load(path) if path.is_file() else ({}, budgets.DEFAULT_TOLERANCE)
    tolerance = tolerance if args.tolerance is None else args.tolerance
    measured = budgets.measure(args.presets, args.methods)
    if args.update:
        for preset, methods in measured.items():
            stored.setdefault(preset, {}).update(methods)
        budgets.write(path, stored, tolerance)
        console.print(f"budgets written to {path} (tolerance {tolerance})")
        return 0
    excess = budgets.check(measured, stored, tolerance)
    if not excess:
        console.print(f"all within budget ({path}, tolerance {tolerance:.0%})")
        return 0
    table = Table("preset", "method", "figure", "measured", "budget", "limit", title="over budget")
    for e in excess:
        table.add_row(e.preset, e.method, e.key, str(e.measured), str(e.budget or "none"), str(e.limit or "-"))
    Console().print(table)
    methods = sorted({e.method for e in excess})
    console.print(f"[red]over budget:[/] {', '.join(methods)}; if the growth is intended, rerun with --update")
    return 1


def cmd_pretrain(args: argparse.Namespace, console: Console) -> int:
    from bench.pretrain import pretrain, weight_files

    card = pretrain(get_preset(args.preset), args.out, seed=args.seed, log=console.print)
    scores = ", ".join(f"{role} {r['accuracy']:.2f}%" for role, r in card["results"].items())
    console.print(f"held-out set accuracy: {scores}; card: {weight_files(args.preset, args.out)['card']}")
    return 0


COMMANDS = {
    "run": cmd_run,
    "sweep": cmd_sweep,
    "table": cmd_table,
    "plot": cmd_plot,
    "list": cmd_list,
    "data": cmd_data,
    "profile": cmd_profile,
    "check-budgets": cmd_check_budgets,
    "pretrain": cmd_pretrain,
}


def _console_warnings(console: Console, default: Callable[..., None]) -> Callable[..., None]:
    """A `warnings.showwarning` that prints dataset warnings through the console (above any
    progress bar, without a source line) and leaves every other warning to `default`."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, *rest: object) -> None:
        if issubclass(category, DataWarning):
            console.print(f"[yellow]warning:[/] {message}")
        else:
            default(message, category, filename, lineno, *rest)

    return show


def _check_folders(args: argparse.Namespace) -> None:
    """An output folder (--out, --dst) that is, or lies under, an existing file is a usage
    error before any work, not a traceback after the first measurement."""
    for flag in ("out", "dst"):
        path = getattr(args, flag, None)
        if not isinstance(path, Path):
            continue
        for folder in (path, *path.parents):
            if folder.exists() and not folder.is_dir():
                raise UsageError(f"--{flag} {path}: {folder} is a file, not a folder")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = list(argv)  # `sweep --workers N` reruns itself
    args.command_line = shlex.join(["python", "-m", "bench", *argv])
    console = Console(stderr=True)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _console_warnings(console, warnings.showwarning)
            _check_folders(args)
            return COMMANDS[args.command](args, console)
    except (UsageError, ConfigError, UnknownNameError) as err:
        console.print(f"[red]error:[/] {err}")
        return 2
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]: finished runs are kept; rerun the same command to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
