"""AVE: audio-visual event localisation (28 events + background, 10 segments).

A segment carries the video's category only when the event is both seen and
heard; every other segment is background (index 28). Metric: segment accuracy
over all N x T segments, background included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from bench.config import keyed_when_set, unkeyed
from bench.data.missing import MissingMedia
from bench.data.synthetic import SHAPES, render_audio, render_visual
from bench.tasks.base import Batch, DataShape, Task, TensorAVDataset
from bench.tasks.heads.cmbs import CmbsHead, CmbsOutput, cmbs_loss, cmbs_segment_classes
from mettle_core.interface import AdaptedEncoder, AVFeatures, TaskSpec, validate_config

NUM_EVENTS = 28
BACKGROUND = NUM_EVENTS


@dataclass
class AveConfig:
    """Synthetic AVE sizes and difficulty (real data ignores the sizes), what real data
    does with listed videos that have no prepared media (bench.data.missing), and the head:
    the harness's own (`head_hidden` wide) or DG-SCT's published CMBS head (its own widths)."""

    num_train: int = 400
    num_val: int = 100
    num_test: int = 200
    segments: int = 10
    data_seed: int = 0
    disagree: float = 0.5  # chance that the heard and seen intervals differ
    distractor: float = 0.8  # chance per segment of an off-event sound or object
    near_miss: float = 1.0  # chance that a distractor shares the event's colour / pitch
    noise: float = 0.15
    head_hidden: int = 128
    head: Literal["harness", "cmbs"] = keyed_when_set("harness")
    missing_media: MissingMedia = unkeyed("skip")  # real data: listed videos without prepared media

    def __post_init__(self) -> None:
        validate_config(self)
        for name in ("num_train", "num_val", "num_test", "segments", "head_hidden"):
            if getattr(self, name) <= 0:
                raise ValueError(f"AveConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("disagree", "distractor", "near_miss"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"AveConfig.{name} must be in [0, 1], got {getattr(self, name)}")


def _intervals(gen: torch.Generator, n: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Event intervals [start, end) of 2..t segments (the whole clip when t = 1)."""
    length = torch.randint(min(2, t), t + 1, (n,), generator=gen)
    start = (torch.rand(n, generator=gen) * (t - length + 1)).long()
    return start, start + length


def _other(gen: torch.Generator, shape: tuple[int, ...], avoid: list[torch.Tensor]) -> torch.Tensor:
    """Random categories in [0, 28) different from every tensor in `avoid` (broadcast)."""
    x = torch.randint(NUM_EVENTS, shape, generator=gen)
    for _ in range(8):
        clash = torch.zeros(shape, dtype=torch.bool)
        for a in avoid:
            clash |= x == a
        if not clash.any():
            break
        x = torch.where(clash, torch.randint(NUM_EVENTS, shape, generator=gen), x)
    return x


def _near_miss(gen: torch.Generator, cat: torch.Tensor, share_row: bool) -> torch.Tensor:
    """Categories other than `cat` that render alike in one modality: the same
    colour with another shape (`share_row`: same `cat // 7`), or the same pitch
    with another temporal pattern (same `cat % 7`). Telling them apart takes the
    factor the towers were not pre-trained on (shape, pattern)."""
    rows, cols = NUM_EVENTS // len(SHAPES), len(SHAPES)
    if share_row:
        step = torch.randint(1, cols, cat.shape, generator=gen)
        return cat // cols * cols + (cat % cols + step) % cols
    step = torch.randint(1, rows, cat.shape, generator=gen)
    return (cat // cols + step) % rows * cols + cat % cols


def make_synthetic_ave(cfg: AveConfig, n: int, shape: DataShape, seed: int) -> TensorAVDataset:
    """`n` videos: an event category, a seen interval and a heard interval that
    agree or not, plus off-event distractor sounds and objects. Distractors are
    mostly near misses of the event (`near_miss`), so that a background segment
    differs from an event segment in shape or temporal pattern, the factors the
    towers' pre-training did not teach; frozen features then fall clearly short
    of adapted ones, as DESIGN section 7 asks of every synthetic task."""
    gen = torch.Generator().manual_seed(seed)
    t = cfg.segments
    cat = torch.randint(NUM_EVENTS, (n,), generator=gen)
    seg = torch.arange(t).view(1, t)
    s, e = _intervals(gen, n, t)
    seen = (seg >= s[:, None]) & (seg < e[:, None])
    s2, e2 = _intervals(gen, n, t)
    heard_alt = (seg >= s2[:, None]) & (seg < e2[:, None])
    heard = torch.where((torch.rand(n, 1, generator=gen) < cfg.disagree), heard_alt, seen)
    c = cat[:, None].expand(n, t)
    near = lambda: torch.rand(n, t, generator=gen) < cfg.near_miss  # noqa: E731
    d_vis = torch.where(near(), _near_miss(gen, c, share_row=True), _other(gen, (n, t), [c]))
    d_aud = torch.where(near(), _near_miss(gen, c, share_row=False), _other(gen, (n, t), [c, d_vis]))
    d_aud = torch.where(d_aud == d_vis, _other(gen, (n, t), [c, d_vis]), d_aud)  # no accidental AV pair
    extra = _other(gen, (n, t), [c, d_aud])
    off = lambda: torch.rand(n, t, generator=gen) < cfg.distractor  # noqa: E731
    vis0 = torch.where(seen, c, torch.where(off(), d_vis, -1))
    vis1 = torch.where(off(), extra, -1)
    aud0 = torch.where(heard, c, torch.where(off(), d_aud, -1))
    frames, _ = render_visual(gen, torch.stack([vis0, vis1], -1).view(n * t, 2), shape.image_size, cfg.noise)
    audio = render_audio(gen, aud0.reshape(n * t, 1), shape.sample_rate)
    label = torch.where(seen & heard, c, BACKGROUND)
    return TensorAVDataset(
        audio.view(n, t, shape.sample_rate),
        frames.view(n, t, 3, shape.image_size, shape.image_size),
        {"label": label},
    )


class AveHead(nn.Module):
    """Per-segment fusion of audio and visual embeddings, a temporal convolution
    and a 29-way classifier: the same head for every method."""

    def __init__(self, audio_dim: int, visual_dim: int, hidden: int) -> None:
        super().__init__()
        self.audio = nn.Linear(audio_dim, hidden)
        self.visual = nn.Linear(visual_dim, hidden)
        self.fuse = nn.Sequential(nn.LayerNorm(2 * hidden), nn.Linear(2 * hidden, hidden), nn.GELU())
        self.temporal = nn.Conv1d(hidden, hidden, kernel_size=3, padding=1)
        self.classify = nn.Linear(hidden, NUM_EVENTS + 1)

    def forward(self, feats: AVFeatures) -> torch.Tensor:
        x = self.fuse(torch.cat([self.audio(feats.a), self.visual(feats.v)], dim=-1))
        x = x + F.gelu(self.temporal(x.transpose(1, 2))).transpose(1, 2)
        return self.classify(x)  # [B, T, 29]


HEADS: dict[str, Callable[[AveConfig, AdaptedEncoder], nn.Module]] = {
    "harness": lambda cfg, encoder: AveHead(encoder.audio_dim, encoder.visual_dim, cfg.head_hidden),
    "cmbs": lambda cfg, encoder: CmbsHead(encoder.audio_dim, encoder.visual_dim, NUM_EVENTS),
}


class AveTask(Task):
    name = "ave"
    config_cls = AveConfig
    selection_metric = "accuracy"
    metric_keys = ("accuracy",)
    chance = "majority (background) share of segments"
    real_fixes = {"segments": 10}  # AVE clips: ten 1 s segments

    def spec(self, cfg: AveConfig) -> TaskSpec:
        return TaskSpec(self.name, cfg.segments, head_attends_time=cfg.head == "cmbs")

    def synthetic(self, cfg: AveConfig, shape: DataShape) -> dict[str, Dataset]:
        sizes = {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}
        return {
            split: make_synthetic_ave(cfg, n, shape, cfg.data_seed * 1000 + i)
            for i, (split, n) in enumerate(sizes.items())
        }

    def real(self, cfg: AveConfig, root: Path, shape: DataShape) -> dict[str, Dataset]:
        from bench.data.ave import load_ave

        return load_ave(root, shape, cfg.missing_media)

    def head(self, cfg: AveConfig, encoder: AdaptedEncoder) -> nn.Module:
        return HEADS[cfg.head](cfg, encoder)

    def loss(self, output: torch.Tensor | CmbsOutput, batch: Batch) -> torch.Tensor:
        if isinstance(output, CmbsOutput):
            return cmbs_loss(output, batch["label"], BACKGROUND)
        return F.cross_entropy(output.flatten(0, 1), batch["label"].flatten())

    def predictions(self, output: torch.Tensor | CmbsOutput, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-segment classes: the harness head's arg-max, or CMBS's decision from its
        segment relevance and its video category."""
        if isinstance(output, CmbsOutput):
            return {"pred": cmbs_segment_classes(output, BACKGROUND).detach(), "label": batch["label"]}
        return {"pred": output.argmax(-1).detach(), "label": batch["label"]}

    def score(self, cfg: AveConfig, preds: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"accuracy": segment_accuracy(preds["pred"], preds["label"])}

    def per_item(self, cfg: AveConfig, preds: dict[str, torch.Tensor]) -> dict[str, list[float]]:
        """Per-video segment accuracy: every video has the same T segments ([N, T] tensors),
        so their mean is the accuracy over all N x T segments."""
        return {"accuracy": (100.0 * (preds["pred"] == preds["label"]).double().mean(-1)).tolist()}


def segment_accuracy(pred: torch.Tensor, label: torch.Tensor) -> float:
    """Percentage of all N x T segments whose class is right, background included."""
    return 100.0 * (pred == label).float().mean().item()


TASK = AveTask()
