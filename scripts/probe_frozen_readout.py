"""Diagnostic: how much of `frozen`'s AVE accuracy on the tiny towers is their class token?

`frozen` reads each tower the way its pre-training head did: the class token after the final
norm. Mettle never reads that token alone: its meta-tokens attend over all of a layer's
tokens. This probe reruns `frozen` with the towers' readout replaced by the mean of the
final-normed patch tokens (timm's `avg` pooling), everything else unchanged, and writes
ordinary run records tagged `probe=frozen-avg-readout` into a folder of their own (the
replacement is not a config switch, so these records share the plain `frozen` run keys;
the script refuses a folder holding other records, and always reruns).

    python scripts/probe_frozen_readout.py --out results/diagnostics/readout [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from bench.results import ResultsStore
from bench.runner import RunPlan, execute
from mettle_core.backbone import Backbone

PROBE = "frozen-avg-readout"


def avg_readout(self: Backbone, x: torch.Tensor) -> torch.Tensor:
    """Final norm, then the mean over patch tokens (the tiny ViT's class token excluded)."""
    return self.final_norm(x)[:, self.num_prefix_tokens :].mean(dim=1)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    runs = args.out / "runs.jsonl"
    if runs.exists() and any(r.get("tags", {}).get("probe") != PROBE for r in ResultsStore(args.out).load().records):
        parser.error(f"{runs} holds records that are not this probe's; give the probe a folder of its own")
    Backbone.pool = avg_readout  # this process only
    plan = RunPlan(
        methods=["frozen"],
        tasks=["ave"],
        preset="tiny",
        seeds=[int(s) for s in args.seeds.split(",")],
        device=args.device,
        overrides=["measure.enabled=false"],
        tags={"probe": PROBE},
        force=True,
        command=shlex.join(["python", "scripts/probe_frozen_readout.py", *argv]),
    )
    records = execute(plan, args.out)
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
