"""Command line: `python -m bench run|table|plot|list|data|pretrain`.

Exit codes: 0 success, 2 bad usage (unknown name, bad key or value), 1 failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.config import ConfigError
from bench.presets import PRESETS, WEIGHTS_DIR
from mettle_core.interface import UnknownNameError

DEFAULT_OUT = Path("results")


class UsageError(Exception):
    """Bad usage: exit code 2."""


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds expects comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train, select on val, test and measure methods on tasks")
    run.add_argument("--methods", type=_csv, default=["mettle", "lavish"], help="comma-separated method names")
    run.add_argument("--tasks", type=_csv, default=None, help="comma-separated task names (default: all)")
    run.add_argument("--preset", default="tiny", help=f"one of {', '.join(PRESETS)}")
    run.add_argument("--seeds", type=_seeds, default=[0])
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
    run.add_argument("--force", action="store_true", help="rerun runs that already finished")

    for name, text in (("table", "write tables from OUT/runs.jsonl"), ("plot", "write figures from OUT/runs.jsonl")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--out", type=Path, default=DEFAULT_OUT)
        p.add_argument("--reference", default=None, help="method the ratios are relative to")

    data = sub.add_parser("data", help="prepare real datasets").add_subparsers(dest="data_command", required=True)
    prep = data.add_parser("prepare", help="decode raw videos into the layout the loaders read (resumable)")
    prep.add_argument("dataset", choices=["ave", "llp", "avsbench"])
    prep.add_argument("--src", type=Path, required=True, help="raw dataset directory")
    prep.add_argument("--dst", type=Path, required=True, help="prepared output directory")
    prep.add_argument("--size", type=int, default=224, help="frame side in pixels")
    prep.add_argument("--mel-bins", type=int, default=64)

    pre = sub.add_parser("pretrain", help="pretrain a preset's towers on synthetic primitives (ships for tiny)")
    pre.add_argument("--preset", default="tiny", help=f"one of {', '.join(PRESETS)}")
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="folder for the weights, heads and card")

    sub.add_parser("list", help="list methods, tasks and presets")
    return parser


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
    from bench.registry import task_names
    from bench.report import write_figures, write_tables
    from bench.runner import RunPlan, execute, resolve

    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r} (valid: {', '.join(PRESETS)})")
    tasks = args.tasks or task_names()
    plan = RunPlan(
        methods=args.methods,
        tasks=tasks,
        preset=args.preset,
        seeds=args.seeds,
        device=args.device,
        source=_data_sources(args.data, tasks),
        overrides=args.overrides,
        force=args.force,
    )
    resolve(plan)  # usage errors surface before any work
    records = execute(plan, args.out, console)
    table = write_tables(records, args.out)
    figures = write_figures(records, args.out)
    print_table(table, console)
    console.print(
        f"records: {args.out / 'runs.jsonl'}; tables: {args.out / 'tables'}; "
        f"figures: {', '.join(str(f) for f in figures) or 'none'}"
    )
    failed = [r for r in records if r["status"] != "ok"]
    for r in failed:
        console.print(f"[red]{r['status']}[/] {r['method']} / {r['task']} / seed {r['seed']}: {r['error']}")
    return 1 if failed else 0


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


def _load_records(out: Path, console: Console) -> list[dict]:
    from bench.results import ResultsStore

    store = ResultsStore(out)
    if not store.path.exists():
        raise UsageError(f"{store.path} does not exist; run `python -m bench run --out {out}` first")
    report = store.load()
    for line, why in report.bad_lines:
        console.print(f"[yellow]warning:[/] {store.path} line {line}: {why}; ignored")
    return report.records


def cmd_table(args: argparse.Namespace, console: Console) -> int:
    from bench.report import write_tables

    table = write_tables(_load_records(args.out, console), args.out, reference=args.reference)
    print_table(table, console)
    console.print(f"tables written to {args.out / 'tables'}")
    return 0


def cmd_plot(args: argparse.Namespace, console: Console) -> int:
    from bench.report import write_figures

    paths = write_figures(_load_records(args.out, console), args.out)
    console.print("figures: " + (", ".join(map(str, paths)) or "none (no finished runs with efficiency)"))
    return 0


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
    for p in PRESETS.values():
        presets.add_row(p.name, p.description)
    for table in (methods, tasks, presets):
        out.print(table)
    return 0


def cmd_data(args: argparse.Namespace, console: Console) -> int:
    from bench.data.prepare import prepare

    if not args.src.is_dir():
        raise UsageError(f"--src {args.src} is not a directory")
    prepare(args.dataset, args.src, args.dst, size=args.size, mel_bins=args.mel_bins, console=console)
    return 0


def cmd_pretrain(args: argparse.Namespace, console: Console) -> int:
    from bench.pretrain import pretrain, weight_files

    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r} (valid: {', '.join(PRESETS)})")
    card = pretrain(PRESETS[args.preset], args.out, seed=args.seed, log=console.print)
    scores = ", ".join(f"{role} {r['accuracy']:.2f}%" for role, r in card["results"].items())
    console.print(f"held-out set accuracy: {scores}; card: {weight_files(args.preset, args.out)['card']}")
    return 0


COMMANDS = {
    "run": cmd_run,
    "table": cmd_table,
    "plot": cmd_plot,
    "list": cmd_list,
    "data": cmd_data,
    "pretrain": cmd_pretrain,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    try:
        return COMMANDS[args.command](args, console)
    except (UsageError, ConfigError, UnknownNameError) as err:
        console.print(f"[red]error:[/] {err}")
        return 2
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]: finished runs are kept; rerun the same command to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
