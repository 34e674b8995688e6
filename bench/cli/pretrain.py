"""`bench pretrain`: a preset's towers pretrained on synthetic primitives."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from bench.cli.args import PRESET_HELP, preset_name, seed
from bench.cli.command import Command
from bench.presets import get_preset
from bench.weights import WEIGHTS_DIR


def add_arguments(pre: argparse.ArgumentParser) -> None:
    pre.add_argument("--preset", type=preset_name, default="tiny", help=PRESET_HELP)
    pre.add_argument("--seed", type=seed, default=0)
    pre.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="folder for the weights, heads and card")


def execute(args: argparse.Namespace, console: Console) -> int:
    from bench.pretrain import pretrain, weight_files

    card = pretrain(get_preset(args.preset), args.out, seed=args.seed, log=console.print)
    scores = ", ".join(f"{role} {r['accuracy']:.2f}%" for role, r in card["results"].items())
    console.print(f"held-out set accuracy: {scores}; card: {weight_files(args.preset, args.out)['card']}")
    return 0


COMMAND = Command(
    "pretrain", "pretrain a preset's towers on synthetic primitives (ships for tiny)", add_arguments, execute
)
