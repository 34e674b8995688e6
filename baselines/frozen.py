"""`frozen`: both towers frozen under no_grad; only the task head trains (the floor)."""

from __future__ import annotations

from dataclasses import dataclass

from baselines.pooled import PooledTowersEncoder
from mettle_core.interface import MethodEntry, TaskSpec, Towers, validate_config


@dataclass
class FrozenConfig:
    """No hyper-parameters: the encoder has nothing to train."""

    def __post_init__(self) -> None:
        validate_config(self)


def build(towers: Towers, spec: TaskSpec, cfg: FrozenConfig) -> PooledTowersEncoder:
    return PooledTowersEncoder(towers.audio, towers.visual, spec, trainable=False)


METHOD = MethodEntry(
    "frozen",
    FrozenConfig,
    build,
    "Frozen separate towers, pooled features; only the head trains.",
    towers=("audio", "visual"),
)
