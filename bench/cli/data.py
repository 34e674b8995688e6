"""`bench data prepare`: decode a raw dataset into the layout the loaders read.
`bench data bench`: samples/s of a prepared training split, read as a run reads it, per
number of loader workers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from bench.cli.args import PRESET_HELP, UsageError, preset_name, require_positive
from bench.cli.command import Command

if TYPE_CHECKING:
    from torch.utils.data import Dataset


def worker_counts(text: str) -> list[int]:
    """Comma-separated loader-worker counts, each an integer >= 0."""
    expected = argparse.ArgumentTypeError(f"--loader-workers expects comma-separated integers >= 0, got {text!r}")
    try:
        counts = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise expected from None
    if not counts or any(c < 0 for c in counts):
        raise expected
    return counts


def add_arguments(data: argparse.ArgumentParser) -> None:
    sub = data.add_subparsers(dest="data_command", required=True)
    prep = sub.add_parser("prepare", help="decode raw videos into the layout the loaders read (resumable)")
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
    bench = sub.add_parser(
        "bench", help="samples/s of a prepared training split read as a run reads it, per loader-worker count"
    )
    bench.add_argument("--task", required=True, help="the task whose prepared data is read (e.g. ave)")
    bench.add_argument("--data", required=True, metavar="TASK=PATH", help="the prepared directory, as `run --data`")
    bench.add_argument("--preset", type=preset_name, default="tiny", help=PRESET_HELP + " (default: tiny)")
    bench.add_argument(
        "--loader-workers", type=worker_counts, default=[0, 2], metavar="N,M", help="counts to compare (default 0,2)"
    )
    bench.add_argument("--batches", type=int, default=20, help="batches timed after one warm-up batch (default 20)")


def execute(args: argparse.Namespace, console: Console) -> int:
    return prepare(args, console) if args.data_command == "prepare" else loader_bench(args)


def prepare(args: argparse.Namespace, console: Console) -> int:
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


def train_split(task_name: str, root: Path, preset_name: str) -> tuple[Dataset, int]:
    """The training split of the prepared tree `root` as a run of `preset_name` reads it
    (the preset's image size, audio rate and task settings), and the preset's batch size."""
    from bench.config import TrainConfig, build_section
    from bench.plan import for_source
    from bench.presets import get_preset
    from bench.registry import get_task

    preset, task = get_preset(preset_name), get_task(task_name)
    cfg = for_source(task, str(root), build_section(task.config_cls, task_name, preset.data, []), [])
    batch_size = build_section(TrainConfig, "train", preset.train, []).batch_size
    return task.datasets(cfg, preset.shape, str(root))["train"], batch_size


def loader_bench(args: argparse.Namespace) -> int:
    from bench.data.throughput import measure_throughput
    from bench.registry import get_task

    get_task(args.task)  # an unknown name exits 2 with its hint
    task, _, path = args.data.partition("=")
    if task != args.task or not path:
        raise UsageError(f"--data {args.data!r}: expected {args.task}=PATH")
    if not Path(path).is_dir():
        raise UsageError(f"--data {args.data!r}: {path} is not a directory")
    require_positive(args, "batches")
    ds, batch_size = train_split(args.task, Path(path), args.preset)
    print(
        f"{args.task} / {args.preset}: train split of {len(ds)} samples in {path}, batch {batch_size}, "
        f"{args.batches} batches timed after 1 warm-up batch",
        flush=True,
    )
    base = None
    for workers in args.loader_workers:
        result = measure_throughput(ds, batch_size, workers, args.batches)
        base = base or result.samples_per_s
        print(
            f"loader_workers {workers}: {result.samples_per_s:.2f} samples/s, "
            f"{1000 * result.seconds_per_batch:.1f} ms/batch ({result.samples_per_s / base:.2f} x the first)",
            flush=True,
        )
    return 0


COMMAND = Command("data", "prepare real datasets, and time their loading", add_arguments, execute)
