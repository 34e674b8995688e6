"""What every data source yields and every task consumes: the input geometry, the batch
type, the split names and the in-memory dataset of the synthetic sources. Data-level, so
that loaders need not import the task layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

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


def split_sizes(datasets: dict[str, Dataset]) -> dict[str, dict[str, int]]:
    """Per split, the samples it holds and the listed videos it left out for want of prepared
    media (a real dataset's `missing`; the synthetic sources miss none): what records keep."""
    return {split: {"samples": len(ds), "missing": len(getattr(ds, "missing", ()))} for split, ds in datasets.items()}
