"""Argument types and checks the subcommands share, and `UsageError` (exit code 2)."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from bench.presets import PRESETS
from bench.tracking import DEFAULT_EVERY, DEFAULT_PROJECT, Tracking, check_trackers, tracker_names
from mettle_core.interface import UnknownNameError

DEFAULT_OUT = Path("runs")  # git-ignored: a newcomer's first run really runs (results/ holds the committed ones)
PRESET_HELP = f"one of {', '.join(PRESETS.names())}"
DEVICES = ["auto", "cpu", "cuda"]
# torch takes seeds below 2**64, but a run derives seeds from its own (a tower's init: seed * 100
# + role; pretraining: seed * 1000 + corpus), and those must fit too.
SEED_LIMIT = 2**32
SLURM_TIME = re.compile(r"^(?:(?:(\d+)-)?(\d+):)?(\d+):(\d+)$")  # [D-]HH:MM:SS or MM:SS


class UsageError(Exception):
    """Bad usage: exit code 2."""


def csv(text: str) -> list[str]:
    """Comma-separated names. Given, the list must name something: an empty one is not the defaults."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def preset_name(text: str) -> str:
    """A preset's name, checked against the registry while the arguments are parsed."""
    try:
        return PRESETS.get(text).name
    except UnknownNameError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def preset_names(text: str) -> list[str]:
    return [preset_name(name) for name in csv(text)]


def seed(text: str) -> int:
    try:
        return _seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None


def seeds(text: str) -> list[int]:
    expected = argparse.ArgumentTypeError(f"--seeds expects comma-separated integers, got {text!r}")
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise expected from None
    if not values:
        raise expected
    return [_seed(value) for value in values]


def _seed(value: int) -> int:
    if (error := seed_error(value)) is not None:
        raise argparse.ArgumentTypeError(error)
    return value


def seed_error(value: object) -> str | None:
    """What is wrong with `value` as a seed, or None."""
    if type(value) is int and 0 <= value < SEED_LIMIT:
        return None
    return f"seeds are integers in [0, 2**32), got {value!r}"


def check_seeds(values: list[int], source: str) -> list[int]:
    """Seeds from a plan or study file (`source` names it), checked as --seeds is."""
    for value in values:
        if (error := seed_error(value)) is not None:
            raise UsageError(f"{source}: {error}")
    return values


def run_workers(text: str) -> int | None:
    """auto (None: one run per core on a CPU, see bench.workers) or a count, checked later."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers expects auto or a number of processes, got {text!r}") from None


def require_positive(args: argparse.Namespace, *names: str) -> None:
    """Each flag given (not None) must be a finite number > 0."""
    for name in names:
        value = getattr(args, name)
        if value is not None and (value <= 0 or not math.isfinite(value)):
            raise UsageError(f"--{name.replace('_', '-')} must be {'> 0' if value <= 0 else 'finite'}, got {value}")


def check_folders(args: argparse.Namespace) -> None:
    """An output folder (--out, --dst) that is, or lies under, an existing file is a usage
    error before any work, not a traceback after the first measurement."""
    for flag in ("out", "dst"):
        path = getattr(args, flag, None)
        if not isinstance(path, Path):
            continue
        for folder in (path, *path.parents):
            if folder.exists() and not folder.is_dir():
                raise UsageError(f"--{flag} {path}: {folder} is a file, not a folder")


def time_limit(text: str) -> int:
    """A Slurm time limit (`12:00:00`, `1-00:00:00`, `30:00`, or minutes: `90`) in whole minutes."""
    if text.isdigit() and int(text) > 0:
        return int(text)
    match = SLURM_TIME.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"--time expects minutes, MM:SS, HH:MM:SS or D-HH:MM:SS, got {text!r}")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return max(days * 1440 + hours * 60 + minutes + math.ceil(seconds / 60), 1)


def count(text: str) -> int:
    """A whole number >= 0."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def trackers(text: str) -> tuple[str, ...]:
    try:
        return tracker_names(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    """`--log` and its settings, for the commands that train runs."""
    parser.add_argument(
        "--log",
        type=trackers,
        default=(),
        metavar="TRACKERS",
        help="experiment trackers, comma-separated: tensorboard (OUT/tensorboard/<run key>), wandb "
        "(optional extras of the same names); default none",
    )
    parser.add_argument("--wandb-project", default=DEFAULT_PROJECT, help="the W&B project of --log wandb's runs")
    parser.add_argument(
        "--log-every",
        type=int,
        default=DEFAULT_EVERY,
        metavar="N",
        help=f"batches between two train-loss points of the trackers (each reads the loss; default {DEFAULT_EVERY})",
    )


def tracking_of(args: argparse.Namespace) -> Tracking:
    """The trackers asked for, each checked to be installed before any work."""
    require_positive(args, "log_every")
    check_trackers(args.log)
    return Tracking(args.log, project=args.wandb_project, every=args.log_every)
