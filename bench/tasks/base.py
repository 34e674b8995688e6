"""The task contract: data, head, loss and metric, identical for every method.

The head belongs to the task, not to the method, so that every method is compared
with the same head, as the papers do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from mettle_core.interface import AdaptedEncoder, AVFeatures, TaskSpec

Batch = dict[str, torch.Tensor]
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DataShape:
    """Input geometry a preset feeds its towers (per segment)."""

    image_size: int  # frames are image_size x image_size RGB
    sample_rate: int  # audio is a mono waveform of one second (sample_rate samples) per segment


class TensorAVDataset(Dataset):
    """Whole split held as tensors: audio [N, T, S] waveforms, visual [N, T, 3, H, W] and
    target tensors with leading dimension N. Used by every synthetic source."""

    def __init__(self, audio: torch.Tensor, visual: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        n = audio.shape[0]
        if visual.shape[0] != n or any(t.shape[0] != n for t in targets.values()):
            raise ValueError("audio, visual and targets must share the leading dimension")
        self.tensors: Batch = {"audio": audio, "visual": visual, **targets}

    def __len__(self) -> int:
        return self.tensors["audio"].shape[0]

    def __getitem__(self, i: int) -> Batch:
        return {k: v[i] for k, v in self.tensors.items()}

    def batches(self, batch_size: int, order: torch.Tensor | None = None) -> list[Batch]:
        """Slice whole batches at once: no per-sample Python work in the hot loop."""
        idx = order if order is not None else torch.arange(len(self))
        return [
            {k: v[idx[s : s + batch_size]] for k, v in self.tensors.items()} for s in range(0, len(idx), batch_size)
        ]


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

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> Any:
        feats: AVFeatures = self.encoder(audio, visual)
        return self.head(feats)
