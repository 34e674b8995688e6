"""The task contract: data, head, loss and metric, identical for every method.

The head belongs to the task, not to the method, so that every method is compared
with the same head, as the papers do. The data types a task works with (DataShape,
Batch, SPLITS, TensorAVDataset) belong to the data layer, bench.data.core; they are
re-exported here for the task modules.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from bench.data.core import SPLITS, Batch, DataShape, TensorAVDataset
from mettle_core.interface import AdaptedEncoder, AVFeatures, TaskSpec

__all__ = ["SPLITS", "Batch", "DataShape", "Task", "TaskModel", "TensorAVDataset", "training_loss"]


class Task(ABC):
    """A registered task. Subclasses set the class attributes and implement the hooks."""

    name: ClassVar[str]
    config_cls: ClassVar[type]
    selection_metric: ClassVar[str]  # higher is better; chosen on val, never on test
    metric_keys: ClassVar[tuple[str, ...]]
    chance: ClassVar[str] = ""  # human-readable chance level, for reports
    real_fixes: ClassVar[dict[str, Any]] = {}  # config values the real data decides, whatever the preset says
    # bumped whenever what the task computes changes (data, head, loss, metric): run keys hold
    # it, so records of an older version are never taken as this one's
    version: ClassVar[int] = 1

    @abstractmethod
    def spec(self, cfg: Any) -> TaskSpec: ...

    @abstractmethod
    def synthetic(self, cfg: Any, shape: DataShape) -> dict[str, Dataset]:
        """Procedural train/val/test splits, deterministic by `cfg.data_seed`."""

    @abstractmethod
    def real(self, cfg: Any, root: Path, shape: DataShape) -> dict[str, Dataset]:
        """The real dataset read from a prepared directory."""

    @abstractmethod
    def head(self, cfg: Any, encoder: AdaptedEncoder) -> nn.Module:
        """AVFeatures -> task output. Identical for every method."""

    @abstractmethod
    def loss(self, output: Any, batch: Batch) -> torch.Tensor: ...

    @abstractmethod
    def predictions(self, output: Any, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-sample tensors (predictions and the targets the metric needs), detached."""

    @abstractmethod
    def score(self, cfg: Any, preds: dict[str, torch.Tensor]) -> dict[str, float]:
        """Metric values from the concatenated `predictions` of a whole split, in the
        split's order (a protocol may pool consecutive samples)."""

    def per_item(self, cfg: Any, preds: dict[str, torch.Tensor]) -> dict[str, list[float]] | None:
        """The selection metric per test item (a video, or a group the protocol pools), in the
        split's order, whose mean is that `score`: what a bootstrap over the test items of one
        seed resamples. None (the default) where the metric is no mean over items."""
        return None

    def datasets(self, cfg: Any, shape: DataShape, source: str) -> dict[str, Dataset]:
        if source == "synthetic":
            return self.synthetic(cfg, shape)
        root = Path(source)
        if not root.is_dir():
            raise FileNotFoundError(f"data directory {root} for task {self.name!r} does not exist")
        return self.real(cfg, root, shape)


class TaskModel(nn.Module):
    """Encoder + the task's head: (audio, visual) -> task output."""

    def __init__(self, encoder: AdaptedEncoder, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, audio: torch.Tensor, visual: torch.Tensor, with_aux: bool = False) -> Any:
        """The head's output; with `with_aux`, (that output, the encoder's auxiliary loss or None)."""
        feats: AVFeatures = self.encoder(audio, visual)
        output = self.head(feats)
        return (output, feats.aux_loss) if with_aux else output


def training_loss(task: Task, model: nn.Module, batch: Batch) -> torch.Tensor:
    """What a training step minimises: the task's loss on the model's output plus the auxiliary
    loss the method's encoder adds, if any. `model` is a TaskModel, or a wrapper (DDP) that
    passes `with_aux` on to it."""
    output, aux = model(batch["audio"], batch["visual"], with_aux=True)
    loss = task.loss(output, batch)
    return loss if aux is None else loss + aux
