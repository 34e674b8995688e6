"""AVVP: weakly supervised audio-visual video parsing (LLP: 25 classes, 10 segments).

Training sees only video-level labels; evaluation parses every segment into
audible and visible events (bench.metrics.avvp). The selection metric is the
segment-level Type@AV, the figure the reference AVVP code selects checkpoints by.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from bench.config import keyed_when_set, unkeyed
from bench.data.llp import NUM_CLASSES, load_llp
from bench.data.missing import MissingMedia
from bench.data.synthetic import render_audio, render_visual
from bench.metrics.avvp import METRIC_KEYS, avvp_scores, avvp_video_scores, parse_predictions
from bench.tasks.base import Batch, DataShape, Task, TensorAVDataset
from bench.tasks.heads.han import HanHead, HanOutput, han_loss
from mettle_core.interface import AdaptedEncoder, AVFeatures, TaskSpec, validate_config


@dataclass
class AvvpConfig:
    """Synthetic AVVP sizes and difficulty (real data ignores the sizes), the head, and what
    real data does with listed videos that have no prepared media (bench.data.missing).
    `head`: the harness's own (`head_hidden` wide, `head_heads` heads) or HAN as its paper
    released it (bench.tasks.heads.han, its own widths)."""

    num_train: int = 400
    num_val: int = 100
    num_test: int = 200
    segments: int = 10
    data_seed: int = 0
    max_events: int = 3  # events per video: 1..max_events, distinct classes
    audio_only: float = 0.3  # share of events only heard
    visual_only: float = 0.3  # share of events only seen (the rest are audio-visual)
    noise: float = 0.15
    head_hidden: int = 128
    head_heads: int = 4
    head: Literal["harness", "han"] = keyed_when_set("harness")
    missing_media: MissingMedia = unkeyed("skip")  # real data: listed videos without prepared media

    def __post_init__(self) -> None:
        validate_config(self)
        for name in ("num_train", "num_val", "num_test", "segments", "head_hidden", "head_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"AvvpConfig.{name} must be > 0, got {getattr(self, name)}")
        if not 1 <= self.max_events <= NUM_CLASSES:
            raise ValueError(f"AvvpConfig.max_events must be in [1, {NUM_CLASSES}], got {self.max_events}")
        for name in ("audio_only", "visual_only", "noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"AvvpConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.audio_only + self.visual_only > 1.0:
            raise ValueError(
                f"AvvpConfig.audio_only + AvvpConfig.visual_only must be <= 1, got {self.audio_only + self.visual_only}"
            )
        if self.head_hidden % self.head_heads:
            raise ValueError(
                f"AvvpConfig.head_hidden ({self.head_hidden}) must be divisible by head_heads ({self.head_heads})"
            )


def make_synthetic_avvp(cfg: AvvpConfig, n: int, shape: DataShape, seed: int, weak: bool) -> TensorAVDataset:
    """`n` videos with 1..max_events events of distinct classes, each audio-only,
    visual-only or audio-visual over its own interval. `weak` (train) keeps only
    the video-level labels; otherwise the segment ground truth [n, 25, T] too."""
    gen = torch.Generator().manual_seed(seed)
    t, m = cfg.segments, cfg.max_events
    cls = torch.rand(n, NUM_CLASSES, generator=gen).argsort(-1)[:, :m]  # [n, m] distinct
    present = torch.arange(m).view(1, m) < torch.randint(1, m + 1, (n, 1), generator=gen)
    kind = torch.rand(n, m, generator=gen)
    heard = present & (kind >= cfg.visual_only)
    seen = present & ((kind < cfg.visual_only) | (kind >= cfg.visual_only + cfg.audio_only))
    length = torch.randint(1, t + 1, (n, m), generator=gen)
    start = (torch.rand(n, m, generator=gen) * (t - length + 1)).long()
    seg = torch.arange(t).view(1, 1, t)
    on = (seg >= start[..., None]) & (seg < (start + length)[..., None])  # [n, m, t]
    aud_on, vis_on = on & heard[..., None], on & seen[..., None]
    slot = lambda active: torch.where(active, cls[..., None], -1).permute(0, 2, 1).reshape(n * t, m)  # noqa: E731
    frames, _ = render_visual(gen, slot(vis_on), shape.image_size, cfg.noise)
    audio = render_audio(gen, slot(aud_on), shape.sample_rate)
    gt_a = torch.zeros(n, NUM_CLASSES, t, dtype=torch.bool)
    gt_v = torch.zeros_like(gt_a)
    gt_a.scatter_(1, cls[..., None].expand(n, m, t), aud_on)  # classes are distinct: no overwrite
    gt_v.scatter_(1, cls[..., None].expand(n, m, t), vis_on)
    targets = {"label": (gt_a | gt_v).any(-1).float()}
    if not weak:
        targets |= {"gt_audio": gt_a, "gt_visual": gt_v}
    return TensorAVDataset(
        audio.view(n, t, shape.sample_rate),
        frames.view(n, t, 3, shape.image_size, shape.image_size),
        targets,
    )


class HanLayer(nn.Module):
    """One hybrid attention layer (after HAN): each modality attends to itself and
    to the other modality across segments, then a feed-forward block."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.self_attn(x, x, x, need_weights=False)[0]
                       + self.cross_attn(x, other, other, need_weights=False)[0])  # fmt: skip
        return self.norm2(x + self.ffn(x))


class AvvpHead(nn.Module):
    """HAN-like parser shared by every method: cross-modal + temporal attention,
    per-segment per-modality class probabilities, and attentive multiple-instance
    pooling over time and modality into video-level probabilities."""

    def __init__(self, audio_dim: int, visual_dim: int, hidden: int, heads: int) -> None:
        super().__init__()
        self.audio = nn.Linear(audio_dim, hidden)
        self.visual = nn.Linear(visual_dim, hidden)
        self.layer_a = HanLayer(hidden, heads)
        self.layer_v = HanLayer(hidden, heads)
        self.classify = nn.Linear(hidden, NUM_CLASSES)
        self.time_attn = nn.Linear(hidden, NUM_CLASSES)
        self.modality_attn = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, feats: AVFeatures) -> dict[str, torch.Tensor]:
        a, v = self.audio(feats.a), self.visual(feats.v)
        a, v = self.layer_a(a, v), self.layer_v(v, a)
        x = torch.stack([a, v], dim=2)  # [B, T, 2, D]
        seg_prob = torch.sigmoid(self.classify(x))  # [B, T, 2, C]
        w_time = torch.softmax(self.time_attn(x), dim=1)
        w_modality = torch.softmax(self.modality_attn(x), dim=2)
        video = (seg_prob * w_time * w_modality).sum(dim=(1, 2))  # [B, C]
        return {"video": video, "audio": seg_prob[:, :, 0], "visual": seg_prob[:, :, 1]}


def video_bce(output: dict[str, torch.Tensor], label: torch.Tensor) -> torch.Tensor:
    """BCE on the video-level labels only (the weak supervision of LLP)."""
    return F.binary_cross_entropy(output["video"].clamp(1e-6, 1 - 1e-6), label)


HEADS: dict[str, Callable[[AvvpConfig, AdaptedEncoder], nn.Module]] = {
    "harness": lambda cfg, encoder: AvvpHead(encoder.audio_dim, encoder.visual_dim, cfg.head_hidden, cfg.head_heads),
    "han": lambda cfg, encoder: HanHead(encoder.audio_dim, encoder.visual_dim, NUM_CLASSES),
}
# Each head's weak loss, by the type of its output (the harness head's is a plain dict).
LOSSES: dict[type, Callable[[Any, torch.Tensor], torch.Tensor]] = {dict: video_bce, HanOutput: han_loss}


class AvvpTask(Task):
    name = "avvp"
    config_cls = AvvpConfig
    selection_metric = "seg_type_av"
    metric_keys = METRIC_KEYS
    chance = "predicting nothing scores 0 on videos with events"
    real_fixes = {"segments": 10}  # LLP clips: ten 1 s segments

    def spec(self, cfg: AvvpConfig) -> TaskSpec:
        return TaskSpec(self.name, cfg.segments)

    def synthetic(self, cfg: AvvpConfig, shape: DataShape) -> dict[str, Dataset]:
        sizes = {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}
        return {
            split: make_synthetic_avvp(cfg, n, shape, cfg.data_seed * 1000 + i, weak=split == "train")
            for i, (split, n) in enumerate(sizes.items())
        }

    def real(self, cfg: AvvpConfig, root: Path, shape: DataShape) -> dict[str, Dataset]:
        return load_llp(root, shape, cfg.missing_media)

    def head(self, cfg: AvvpConfig, encoder: AdaptedEncoder) -> nn.Module:
        return HEADS[cfg.head](cfg, encoder)

    def loss(self, output: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """The weak loss of the head that gave `output`: video-level labels only."""
        return LOSSES[type(output)](output, batch["label"].float())

    def predictions(self, output: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        """Every head gives video-level and per-segment probabilities per modality; the metric
        thresholds them at 0.5 as the official evaluation does (bench.metrics.avvp)."""
        preds = {
            "video_prob": output["video"].detach(),
            "audio_prob": output["audio"].detach().transpose(1, 2),  # [B, C, T]
            "visual_prob": output["visual"].detach().transpose(1, 2),
        }
        preds |= {k: batch[k] for k in ("gt_audio", "gt_visual") if k in batch}
        return preds

    def score(self, cfg: AvvpConfig, preds: dict[str, torch.Tensor]) -> dict[str, float]:
        _require_ground_truth(preds)
        return avvp_scores(
            preds["video_prob"], preds["audio_prob"], preds["visual_prob"], preds["gt_audio"], preds["gt_visual"]
        )

    def per_item(self, cfg: AvvpConfig, preds: dict[str, torch.Tensor]) -> dict[str, list[float]]:
        """Per-video segment-level Type@AV: the dataset score is their mean."""
        _require_ground_truth(preds)
        pred_a, pred_v = parse_predictions(preds["video_prob"], preds["audio_prob"], preds["visual_prob"])
        per_video = avvp_video_scores(pred_a, pred_v, preds["gt_audio"], preds["gt_visual"])
        return {self.selection_metric: (100.0 * per_video[self.selection_metric]).tolist()}


def _require_ground_truth(preds: dict[str, torch.Tensor]) -> None:
    if "gt_audio" not in preds:
        raise ValueError("AVVP scoring needs segment ground truth (gt_audio, gt_visual); the train split has none")


TASK = AvvpTask()
