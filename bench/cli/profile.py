"""`bench profile`: memory, time and FLOPs of one training step per method (random weights)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from bench.cli.args import DEFAULT_OUT, DEVICES, PRESET_HELP, UsageError, csv, preset_name, require_positive
from bench.cli.command import Command
from bench.cli.console import print_profile


def add_arguments(prof: argparse.ArgumentParser) -> None:
    prof.add_argument("--methods", type=csv, default=None, help="comma-separated method names (default: all)")
    prof.add_argument("--preset", type=preset_name, default="tiny", help=PRESET_HELP)
    prof.add_argument("--task", default="ave", help="task whose head and data shape the step")
    prof.add_argument("--batch-size", type=int, default=1)
    prof.add_argument("--segments", type=int, default=10, help="T, segments per video")
    prof.add_argument("--device", default="auto", choices=DEVICES)
    prof.add_argument("--reference", default="lavish", help="method the ratios are relative to")
    prof.add_argument("--out", type=Path, default=DEFAULT_OUT / "profile")
    prof.add_argument("--sweep", default=None, metavar="KEY=V1,V2", help="batch-size=1,2,4,8 or segments=1,5,10")
    prof.add_argument("--budget", default=None, metavar="SIZE", help="report the largest batch that fits, e.g. 24GiB")
    prof.add_argument("--warmup", type=int, default=2, help="timed-step warm-up iterations")
    prof.add_argument("--repeats", type=int, default=5, help="timed steps (median)")
    prof.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def execute(args: argparse.Namespace, console: Console) -> int:
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

    require_positive(args, "batch_size", "segments", "repeats")
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


COMMAND = Command(
    "profile", "memory, time and FLOPs of one training step per method (random weights)", add_arguments, execute
)
