"""AVS: audio-visual segmentation (AVSBench S4: one sounding object; MS3: several).

Every frame shows several objects; the mask covers the one(s) that sound. The
S4 train split supervises only the first frame (as AVSBench): a `frame_weight`
[N, T] target marks the supervised frames. One mask decoder serves every method,
chosen by `head`: the harness's own (`harness`, the default) or AVSBench's
(`avsbench`, bench.tasks.heads.avsbench, with its MS3 matching term in the loss).
A head returns logits at its own resolution; `loss` and `predictions` upsample
them to the mask (input frame) size, so the head needs no image size.
Metrics: mIoU (selection) and F-score, pooled as AVSBench's released test script
pools them (`protocol = avsbench`, batches of `eval_batch_size` consecutive videos) or
per video (`per_video`); see bench.metrics.avs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from bench.config import keyed_when_set, unkeyed
from bench.data.missing import MissingMedia
from bench.data.synthetic import MAX_CLASSES, render_audio, render_visual
from bench.metrics.avs import avsbench_batches, avsbench_scores, frame_iou, fscore, miou
from bench.tasks.base import Batch, DataShape, Task, TensorAVDataset
from bench.tasks.heads.avsbench import AvsbenchDecoder, AvsbenchOutput
from mettle_core.interface import AdaptedEncoder, AVFeatures, TaskSpec, validate_config

FRAMES = 5


@dataclass
class AvsConfig:
    """Synthetic AVS sizes and difficulty (real data ignores the sizes), the decoder, the
    scoring protocol, and what real data does with listed videos that have no prepared
    media (bench.data.missing)."""

    num_train: int = 300
    num_val: int = 100
    num_test: int = 100
    data_seed: int = 0
    objects: int = 3  # objects drawn per frame, the sounding one(s) included
    max_sources: int = 1  # sounding objects per video: 1 (S4) or 1..max_sources (MS3)
    offscreen: float = 0.0  # chance per frame that the sounding objects are out of view
    noise: float = 0.15
    head: Literal["harness", "avsbench"] = keyed_when_set("harness")  # the mask decoder (HEADS)
    head_width: int = 64  # the harness head's width (AVSBench's is 256, as published)
    protocol: Literal["avsbench", "per_video"] = "avsbench"  # how val/test frames are pooled (bench.metrics.avs)
    eval_batch_size: int = 4  # videos per pooled batch under `avsbench` (its test.sh: --test_batch_size 4)
    missing_media: MissingMedia = unkeyed("skip")  # real data: listed videos without prepared media

    def __post_init__(self) -> None:
        validate_config(self)
        for name in ("num_train", "num_val", "num_test", "objects", "max_sources", "head_width", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{type(self).__name__}.{name} must be > 0, got {getattr(self, name)}")
        if self.max_sources > self.objects:
            raise ValueError(
                f"{type(self).__name__}.max_sources ({self.max_sources}) must be <= objects ({self.objects})"
            )
        if self.objects > MAX_CLASSES:
            raise ValueError(f"{type(self).__name__}.objects must be <= {MAX_CLASSES}, got {self.objects}")
        for name in ("offscreen", "noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{type(self).__name__}.{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class AvsMs3Config(AvsConfig):
    max_sources: int = 3
    offscreen: float = 0.1


def make_synthetic_avs(cfg: AvsConfig, n: int, shape: DataShape, seed: int, first_frame_only: bool) -> TensorAVDataset:
    """`n` videos of T = 5 frames with `objects` distinct classes each; 1..max_sources
    of them sound through the whole clip and their visible pixels form the mask."""
    gen = torch.Generator().manual_seed(seed)
    t, m, s = FRAMES, cfg.objects, shape.image_size
    cls = torch.rand(n, MAX_CLASSES, generator=gen).argsort(-1)[:, :m]  # [n, m] distinct
    sounding = torch.arange(m).view(1, m) < torch.randint(1, cfg.max_sources + 1, (n, 1), generator=gen)
    order = torch.rand(n, t, m, generator=gen).argsort(-1)  # random depth order per frame
    frame_cls = cls[:, None].expand(n, t, m).gather(-1, order)
    frame_snd = sounding[:, None].expand(n, t, m).gather(-1, order)
    hidden = (torch.rand(n, t, 1, generator=gen) < cfg.offscreen) & frame_snd
    frames, vis = render_visual(gen, torch.where(hidden, -1, frame_cls).view(n * t, m), s, cfg.noise)
    mask = (vis & frame_snd.reshape(n * t, m, 1, 1)).any(1).view(n, t, s, s)
    sounds = torch.where(sounding, cls, -1)[:, None].expand(n, t, m).reshape(n * t, m)
    audio = render_audio(gen, sounds, shape.sample_rate)
    weight = torch.ones(n, t)
    if first_frame_only:
        weight[:, 1:] = 0
        mask[:, 1:] = False
    return TensorAVDataset(
        audio.view(n, t, shape.sample_rate),
        frames.view(n, t, 3, s, s),
        {"mask": mask, "frame_weight": weight},
    )


class AvsHead(nn.Module):
    """FPN-like mask decoder over the 4-level pyramid, FiLM-conditioned on the audio
    embedding of each frame: project every level to a common width, modulate it,
    add top-down (coarse upsampled into fine), fuse and predict one logit per pixel."""

    def __init__(self, map_channels: tuple[int, ...], audio_dim: int, width: int) -> None:
        super().__init__()
        if len(map_channels) != 4:
            raise ValueError(f"the AVS decoder needs 4 map levels, the encoder gives {len(map_channels)}")
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in map_channels)
        self.film = nn.Linear(audio_dim, 2 * width * len(map_channels))
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.smooth = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in map_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(8 if width % 8 == 0 else 1, width), nn.ReLU()
        )
        self.predict = nn.Conv2d(width, 1, 1)

    def forward(self, feats: AVFeatures) -> torch.Tensor:
        if feats.maps is None:
            raise ValueError("the AVS decoder needs AVFeatures.maps (TaskSpec.needs_maps)")
        b, t = feats.a.shape[:2]
        gamma_beta = self.film(feats.a.reshape(b * t, -1)).view(b * t, len(self.lateral), 2, -1, 1, 1)
        levels = [
            lat(x) * (1 + gamma_beta[:, i, 0]) + gamma_beta[:, i, 1]
            for i, (lat, x) in enumerate(zip(self.lateral, feats.maps, strict=True))
        ]
        y = self.smooth[-1](levels[-1])
        for i in range(len(levels) - 2, -1, -1):
            up = F.interpolate(y, size=levels[i].shape[-2:], mode="bilinear", align_corners=False)
            y = self.smooth[i](levels[i] + up)
        logits = self.predict(self.fuse(y))  # [B*T, 1, H_0, W_0]
        return logits.view(b, t, *logits.shape[-2:])


def harness_head(cfg: AvsConfig, encoder: AdaptedEncoder) -> nn.Module:
    return AvsHead(tuple(encoder.map_channels), encoder.audio_dim, cfg.head_width)


def avsbench_head(cfg: AvsConfig, encoder: AdaptedEncoder) -> nn.Module:
    return AvsbenchDecoder(tuple(encoder.map_channels), encoder.audio_dim)


HEADS: dict[str, Callable[[AvsConfig, AdaptedEncoder], nn.Module]] = {
    "harness": harness_head,
    "avsbench": avsbench_head,
}


def decoder_logits(output: torch.Tensor | AvsbenchOutput) -> torch.Tensor:
    """The [B, T, h, w] logits of either head's output."""
    return output.logits if isinstance(output, AvsbenchOutput) else output


def full_resolution(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Upsample [B, T, h, w] decoder logits to the frame size [B, T, H, W]."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class _AvsTask(Task):
    selection_metric = "miou"
    metric_keys = ("miou", "fscore")
    chance = "all-background masks"
    variant: ClassVar[str]
    # weight of the avsbench head's audio-visual matching term, as each train.sh sets it: S4 passes
    # no --sa_loss_flag (off); MS3 --masked_av_flag --lambda_1 0.5
    matching_weight: ClassVar[float]

    def spec(self, cfg: AvsConfig) -> TaskSpec:
        return TaskSpec(self.name, FRAMES, needs_maps=True, kind="segmentation")

    def synthetic(self, cfg: AvsConfig, shape: DataShape) -> dict[str, Dataset]:
        sizes = {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}
        return {
            split: make_synthetic_avs(
                cfg, n, shape, cfg.data_seed * 1000 + i, first_frame_only=self.variant == "s4" and split == "train"
            )
            for i, (split, n) in enumerate(sizes.items())
        }

    def real(self, cfg: AvsConfig, root: Path, shape: DataShape) -> dict[str, Dataset]:
        from bench.data.avsbench import load_avsbench

        return load_avsbench(root, self.variant, shape, cfg.missing_media)

    def head(self, cfg: AvsConfig, encoder: AdaptedEncoder) -> nn.Module:
        return HEADS[cfg.head](cfg, encoder)

    def loss(self, output: torch.Tensor | AvsbenchOutput, batch: Batch) -> torch.Tensor:
        """BCE with logits averaged over the pixels of the supervised frames only (AVSBench's
        S4 loss on the first frame, its MS3 loss on all five), plus the avsbench head's
        matching term at the task's `matching_weight`."""
        mask = batch["mask"]
        logits = full_resolution(decoder_logits(output), mask.shape[-2:])
        per_frame = F.binary_cross_entropy_with_logits(logits, mask.float(), reduction="none").mean((-2, -1))
        weight = batch["frame_weight"].float()
        bce = (per_frame * weight).sum() / weight.sum().clamp(min=1)
        if isinstance(output, AvsbenchOutput) and self.matching_weight:
            return bce + self.matching_weight * output.matching_loss()
        return bce

    def predictions(self, output: torch.Tensor | AvsbenchOutput, batch: Batch) -> dict[str, torch.Tensor]:
        logits = full_resolution(decoder_logits(output).detach(), batch["mask"].shape[-2:])
        return {"logits": logits, "mask": batch["mask"], "frame_weight": batch["frame_weight"]}

    def score(self, cfg: AvsConfig, preds: dict[str, torch.Tensor]) -> dict[str, float]:
        valid = preds["frame_weight"] > 0
        if cfg.protocol == "avsbench":
            return avsbench_scores(preds["logits"], preds["mask"], valid, cfg.eval_batch_size)
        return {
            "miou": miou(preds["logits"], preds["mask"], valid),
            "fscore": fscore(preds["logits"], preds["mask"], valid),
        }

    def per_item(self, cfg: AvsConfig, preds: dict[str, torch.Tensor]) -> dict[str, list[float]] | None:
        """mIoU per item. `avsbench`: per pooled batch of `eval_batch_size` videos, the score
        being the mean over batches (the last may hold fewer videos). `per_video`: per video,
        the mean IoU of its scored frames, whose mean is the mean over frames only where
        every video has as many scored frames (val and test: all five); None otherwise."""
        valid = preds["frame_weight"] > 0
        if cfg.protocol == "avsbench":
            batches = avsbench_batches(preds["logits"], preds["mask"], valid, cfg.eval_batch_size)
            return {"miou": [100.0 * v for v in batches["miou"]]}
        frames = valid.sum(-1)
        if (frames != frames[0]).any():
            return None
        iou = frame_iou(preds["logits"].flatten(0, 1), preds["mask"].flatten(0, 1)).view(valid.shape)
        return {"miou": (100.0 * (iou.double() * valid).sum(-1) / frames.clamp(min=1)).tolist()}


class AvsS4Task(_AvsTask):
    name = "avs_s4"
    variant = "s4"
    config_cls = AvsConfig
    matching_weight = 0.0


class AvsMs3Task(_AvsTask):
    name = "avs_ms3"
    variant = "ms3"
    config_cls = AvsMs3Config
    matching_weight = 0.5


S4_TASK = AvsS4Task()
MS3_TASK = AvsMs3Task()
