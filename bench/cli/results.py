"""`bench table` and `bench plot`: tables and figures from OUT/runs.jsonl, of the method
comparison or of one sweep study."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from bench.cli.args import DEFAULT_OUT, UsageError, require_positive
from bench.cli.command import Command
from bench.cli.console import print_summary, print_table


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--reference", default=None, help="method the ratios are relative to")
    parser.add_argument("--study", default=None, help="the ablation of one sweep study instead of the method table")


def add_table_and_bootstrap_arguments(parser: argparse.ArgumentParser) -> None:
    add_table_arguments(parser)
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=None,
        metavar="N",
        help="add, per row, a 95%% interval from N bootstrap resamples of one seed's test items",
    )


def add_plot_arguments(parser: argparse.ArgumentParser) -> None:
    add_table_arguments(parser)
    parser.add_argument("--storage", default=None, help="the study's storage, for parameter importance")


def load_records(out: Path, console: Console) -> list[dict]:
    from bench.report import load_usable
    from bench.results import ResultsStore

    store = ResultsStore(out)
    if not store.path.exists():
        raise UsageError(f"{store.path} does not exist; run `python -m bench run --out {out}` first")
    report = load_usable(store)
    for line, why in report.bad_lines:
        console.print(f"[yellow]warning:[/] {store.path} line {line}: {why}; ignored")
    return report.records


def table(args: argparse.Namespace, console: Console) -> int:
    from bench.report import write_study_tables, write_tables

    require_positive(args, "bootstrap")
    records = load_records(args.out, console)
    if args.study:
        study = write_study_tables(records, args.out, args.study)
        if study.empty:
            raise UsageError(f"no records of study {args.study!r} in {args.out / 'runs.jsonl'}")
        print_table(study, console)
    else:
        table = write_tables(records, args.out, reference=args.reference, bootstrap=args.bootstrap or 0)
        print_summary(table, console)
    console.print(f"tables written to {args.out / 'tables'}")
    return 0


def plot(args: argparse.Namespace, console: Console) -> int:
    from bench.report import write_figures, write_study_figures

    records = load_records(args.out, console)
    if args.study:
        paths = write_study_figures(records, args.out, args.study, importances(args, console))
    else:
        paths = write_figures(records, args.out)
    console.print("figures: " + (", ".join(map(str, paths)) or "none (no finished runs with efficiency)"))
    return 0


def importances(args: argparse.Namespace, console: Console) -> dict[str, float] | None:
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


TABLE = Command("table", "write tables from OUT/runs.jsonl", add_table_and_bootstrap_arguments, table)
PLOT = Command("plot", "write figures from OUT/runs.jsonl", add_plot_arguments, plot)
