"""`bench data prepare`: decode a raw dataset into the layout the loaders read."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from bench.cli.args import UsageError, require_positive
from bench.cli.command import Command


def add_arguments(data: argparse.ArgumentParser) -> None:
    prep = data.add_subparsers(dest="data_command", required=True).add_parser(
        "prepare", help="decode raw videos into the layout the loaders read (resumable)"
    )
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


def execute(args: argparse.Namespace, console: Console) -> int:
    from bench.data.prepare import prepare

    if not args.src.is_dir():
        raise UsageError(f"--src {args.src} is not a directory")
    require_positive(args, "size", "sample_rate", "workers")
    try:
        report = prepare(
            args.dataset, args.src, args.dst, size=args.size, sample_rate=args.sample_rate, workers=args.workers,
            console=console,
        )  # fmt: skip
    except ValueError as e:  # a tree prepared with other settings
        raise UsageError(str(e)) from None
    return 1 if report.failed else 0


COMMAND = Command("data", "prepare real datasets", add_arguments, execute)
