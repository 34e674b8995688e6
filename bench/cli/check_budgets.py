"""`bench check-budgets`: fail when a method's memory exceeds results/budgets.toml."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from rich.console import Console

from bench.cli.args import UsageError, csv, preset_names
from bench.cli.command import Command
from bench.cli.console import print_over_budget


def add_arguments(chk: argparse.ArgumentParser) -> None:
    chk.add_argument("--budgets", type=Path, default=None, help="budgets file (default: results/budgets.toml)")
    chk.add_argument("--presets", type=preset_names, default=["smoke", "tiny"])
    chk.add_argument("--methods", type=csv, default=None, help="comma-separated method names (default: all)")
    chk.add_argument("--update", action="store_true", help="rewrite the budgets with the measured figures")
    chk.add_argument("--tolerance", type=float, default=None, help="relative slack (default: the file's, or 0.05)")


def execute(args: argparse.Namespace, console: Console) -> int:
    from bench import budgets
    from bench.registry import METHODS, get_method

    if args.tolerance is not None and not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise UsageError(f"--tolerance must be a finite number >= 0, got {args.tolerance}")
    args.methods = args.methods or METHODS.names()
    for name in args.methods:
        get_method(name)
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
    print_over_budget(excess)
    methods = sorted({e.method for e in excess})
    console.print(f"[red]over budget:[/] {', '.join(methods)}; if the growth is intended, rerun with --update")
    return 1


COMMAND = Command(
    "check-budgets", "fail (exit 1) when a method's memory exceeds results/budgets.toml", add_arguments, execute
)
