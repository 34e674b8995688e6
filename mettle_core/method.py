"""Registers Mettle with the shared method registry."""

from __future__ import annotations

from mettle_core.encoder import MettleConfig, MettleEncoder
from mettle_core.interface import MethodEntry, TaskSpec, Towers


def build(towers: Towers, spec: TaskSpec, cfg: MettleConfig) -> MettleEncoder:
    return MettleEncoder(towers.audio, towers.visual, spec, cfg)


METHOD = MethodEntry(
    "mettle",
    MettleConfig,
    build,
    (
        "Mettle (Zhou et al., TPAMI 2025): frozen separate towers under no_grad, per-layer meta-tokens (LCD), "
        "meta-token injection into the visual pyramid for segmentation (MTI)."
    ),
    towers=("audio", "visual"),
    train_defaults={"lr": 3e-3},  # chosen on val with `pool` (bench/plans/reference.toml)
)
