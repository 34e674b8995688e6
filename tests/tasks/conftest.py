"""A tiny fake encoder: AVFeatures with 4-level maps from the raw inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.tasks.base import DataShape
from mettle_core.interface import AdaptedEncoder, AVFeatures


class FakeEncoder(AdaptedEncoder):
    audio_dim = 12
    visual_dim = 10
    map_channels = (4, 6, 8, 16)

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(1, self.audio_dim)
        self.v = nn.Linear(3, self.visual_dim)
        self.maps = nn.ModuleList(nn.Conv2d(3, c, 1) for c in self.map_channels)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> AVFeatures:
        b, t = audio.shape[:2]
        a = self.a(audio.mean(-1, keepdim=True))  # [B, T, S] -> [B, T, 1] -> [B, T, Da]
        v = self.v(visual.mean((-2, -1)))
        flat = visual.flatten(0, 1)
        maps = [conv(F.avg_pool2d(flat, 2 ** (i + 2))) for i, conv in enumerate(self.maps)]
        return AVFeatures(a, v, maps)


@pytest.fixture
def encoder() -> FakeEncoder:
    torch.manual_seed(0)
    return FakeEncoder()


@pytest.fixture
def shape() -> DataShape:
    return DataShape(image_size=32, sample_rate=2000)
