"""`full`: every tower weight trains, at a scaled-down learning rate for the backbone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from baselines.pooled import PooledTowersEncoder
from mettle_core.backbone import Backbone
from mettle_core.interface import MethodEntry, TaskSpec, Towers, validate_config


@dataclass
class FullConfig:
    """backbone_lr_scale: tower lr = scale * the method lr (pretrained weights need small steps);
    0.3 at lr 1e-3 was chosen on val by bench/plans/reference.toml over 0.1 and 0.3 at several
    learning rates (results/tables/selection.md)."""

    backbone_lr_scale: float = 0.3

    def __post_init__(self) -> None:
        validate_config(self)
        if not self.backbone_lr_scale > 0:
            raise ValueError(f"FullConfig.backbone_lr_scale={self.backbone_lr_scale!r} must be > 0")


class FullEncoder(PooledTowersEncoder):
    """Pooled towers with all weights trainable; one param group at the scaled lr."""

    def __init__(self, audio_bb: Backbone, visual_bb: Backbone, spec: TaskSpec, backbone_lr_scale: float) -> None:
        super().__init__(audio_bb, visual_bb, spec, trainable=True)
        self.backbone_lr_scale = backbone_lr_scale
        for p in self.backbone_parameters():
            p.requires_grad_(True)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": list(self.backbone_parameters()), "lr": lr * self.backbone_lr_scale, "name": "backbone"}]


def build(towers: Towers, spec: TaskSpec, cfg: FullConfig) -> FullEncoder:
    return FullEncoder(towers.audio, towers.visual, spec, cfg.backbone_lr_scale)


METHOD = MethodEntry(
    "full",
    FullConfig,
    build,
    "Full fine-tuning of both separate towers (backbone lr scaled).",
    towers=("audio", "visual"),
    train_defaults={"lr": 1e-3},  # chosen on val with backbone_lr_scale (bench/plans/reference.toml)
)
