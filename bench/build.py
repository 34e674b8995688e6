"""Assembling a run's model: towers with their resolved weights, the method's encoder, the task's head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bench.config import ResolvedRun
from bench.presets import Preset
from bench.registry import get_method
from bench.tasks.base import Task, TaskModel
from bench.towers import build_towers
from bench.weights import WeightSource
from mettle_core.backbone import Backbone


@dataclass
class Built:
    """A run's model, the weights of each tower role the method reads, and those towers."""

    model: TaskModel
    weights: dict[str, WeightSource]
    towers: dict[str, Backbone]

    def tower_records(self) -> dict[str, dict[str, Any]]:
        """What each tower was: its weights, architecture and parameter count (front-end excluded)."""
        return {
            role: self.weights[role].record() | {"arch": tower.family, "params": tower.tower_params}
            for role, tower in self.towers.items()
        }


def build_model(run: ResolvedRun, preset: Preset, task: Task) -> Built:
    """The run's model, its towers built from the weights resolved with its plan (`run.weights`)."""
    torch.manual_seed(run.seed)
    method = get_method(run.method)
    if missing := [role for role in method.towers if role not in run.weights or run.weights[role].missing]:
        raise ValueError(f"run of {run.method} has no resolved weights for tower(s) {', '.join(missing)}")
    sources = {role: run.weights[role] for role in method.towers}
    towers = build_towers(preset, sources, run.seed)
    encoder = method.build(towers, task.spec(run.task_cfg), run.method_cfg)
    head = task.head(run.task_cfg, encoder)
    return Built(TaskModel(encoder, head), sources, towers.built)


def param_groups(model: TaskModel, run: ResolvedRun) -> list[dict[str, Any]]:
    """The encoder's groups (the method's own learning rates) and the task head's."""
    head = [p for p in model.head.parameters() if p.requires_grad]
    return [*model.encoder.param_groups(run.train.lr), {"params": head, "lr": run.train.head_lr, "name": "head"}]
