"""Command line: `python -m bench run|sweep|table|plot|list|profile|check-budgets|data|pretrain`.

Exit codes: 0 success, 2 bad usage (unknown name, bad key or value), 1 failure, 130
interrupted (Ctrl-C), 143 terminated (SIGTERM, stopped as Ctrl-C stops it). Each subcommand
is a `Command` in a module of its own; this module builds the parser from them and dispatches.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape

from bench.cli import check_budgets, data, listing, pretrain, profile, results, run, sweep
from bench.cli.args import DEFAULT_OUT, UsageError, check_folders
from bench.cli.command import Command
from bench.cli.console import console_warnings, print_profile
from bench.cli.sweep import sweep_spec
from bench.config import ConfigError
from bench.data.errors import DataError
from mettle_core.interface import UnknownNameError

__all__ = ["DEFAULT_OUT", "build_parser", "main", "print_profile", "sweep_spec"]  # what callers and tests import

COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        run.COMMAND,
        sweep.COMMAND,
        results.TABLE,
        results.PLOT,
        data.COMMAND,
        pretrain.COMMAND,
        listing.COMMAND,
        profile.COMMAND,
        check_budgets.COMMAND,
    )
}  # in the order `--help` lists them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_arguments(sub.add_parser(command.name, help=command.help))
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever the command is: every cleanup that Ctrl-C runs runs for it too
    (a run that is training saves its checkpoint first: bench.checkpoint)."""

    signum = signal.SIGTERM


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def stop(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:  # argparse has printed the usage error (2) or the help (0)
        return int(exit.code or 0)
    args.argv = list(argv)  # `sweep --workers N` reruns itself
    args.command_line = shlex.join(["python", "-m", "bench", *argv])
    console = Console(stderr=True, soft_wrap=True)  # messages: a long path stays whole, for the terminal to wrap
    try:
        with sigterm_as_interrupt(), warnings.catch_warnings():
            warnings.showwarning = console_warnings(console, warnings.showwarning)
            check_folders(args)
            return COMMANDS[args.command].execute(args, console)
    except (UsageError, ConfigError, DataError, UnknownNameError) as err:
        console.print(f"[red]error:[/] {escape(str(err))}")  # a message's brackets are its own (e.g. an extra)
        return 2
    except KeyboardInterrupt as stopped:  # Ctrl-C, SIGTERM, or bench.checkpoint.RunInterrupted
        signum = signal.Signals(getattr(stopped, "signum", signal.SIGINT))
        console.print(
            f"[red]interrupted[/] by {signum.name}: finished runs are kept; rerun `{args.command_line}` to resume",
            soft_wrap=True,
        )
        return 128 + signum
