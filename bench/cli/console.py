"""Everything the subcommands print as tables, and dataset warnings routed through the console.

Tables go to stdout (what a user may pipe); messages, progress and warnings go to the
stderr console the subcommands are given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.table import Table

from bench.data.errors import DataWarning

if TYPE_CHECKING:  # bench.budgets imports peft and timm
    from bench.budgets import Excess

SUMMARY_COLUMNS = {  # display-table column -> console header: what fits an 80-column terminal
    "method": "method",
    "config": "config",
    "value": "mean ± 95% CI",
    "train mem est. (MiB)": "mem MiB",
    "CUDA peak (MiB)": "CUDA MiB",
    "step (ms)": "step ms",
    "mem / ref": "mem/ref",
    "time / ref": "time/ref",
}


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


def print_over_budget(excess: list[Excess]) -> None:
    """`check-budgets`' figures above their limit."""
    table = Table("preset", "method", "figure", "measured", "budget", "limit", title="over budget")
    for e in excess:
        table.add_row(e.preset, e.method, e.key, str(e.measured), str(e.budget or "none"), str(e.limit or "-"))
    Console().print(table)


def console_warnings(console: Console, default: Callable[..., None]) -> Callable[..., None]:
    """A `warnings.showwarning` that prints dataset warnings through the console (above any
    progress bar, without a source line) and leaves every other warning to `default`."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, *rest: object) -> None:
        if issubclass(category, DataWarning):
            console.print(f"[yellow]warning:[/] {message}")
        else:
            default(message, category, filename, lineno, *rest)

    return show
