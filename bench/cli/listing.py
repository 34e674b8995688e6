"""`bench list`: the methods, tasks and presets there are."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from bench.cli.command import Command
from bench.presets import PRESETS, get_preset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No arguments."""


def execute(args: argparse.Namespace, console: Console) -> int:
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


COMMAND = Command("list", "list methods, tasks and presets", add_arguments, execute)
