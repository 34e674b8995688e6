"""Argument types and checks the subcommands share, and `UsageError` (exit code 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.presets import PRESETS

DEFAULT_OUT = Path("runs")  # git-ignored: a newcomer's first run really runs (results/ holds the committed ones)
PRESET_HELP = f"one of {', '.join(PRESETS.names())}"
DEVICES = ["auto", "cpu", "cuda"]


class UsageError(Exception):
    """Bad usage: exit code 2."""


def csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds expects comma-separated integers, got {text!r}") from None


def run_workers(text: str) -> int | None:
    """auto (None: one run per core on a CPU, see bench.workers) or a count, checked later."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers expects auto or a number of processes, got {text!r}") from None


def require_positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")


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
