"""Meta-Token Injection (MTI): top-layer meta-tokens guide the frozen visual pyramid.

Each frozen map F_s is the query of a single-head cross-attention over the same frame's
top-layer meta-tokens [M_a; M_v], projected to C_s as keys and values. Queries are the
frozen features themselves (no query projection) to keep the module light; the result
enters through a zero-initialised gate, so training starts from the frozen pyramid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class _Level(nn.Module):
    def __init__(self, audio_dim: int, visual_dim: int, channels: int) -> None:
        super().__init__()
        self.kv_a = nn.Linear(audio_dim, 2 * channels)
        self.kv_v = nn.Linear(visual_dim, 2 * channels)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, f: torch.Tensor, meta_a: torch.Tensor, meta_v: torch.Tensor) -> torch.Tensor:
        n, c, h, w = f.shape
        k, v = torch.cat([self.kv_a(meta_a), self.kv_v(meta_v)], dim=1).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(f.flatten(2).transpose(1, 2), k, v)  # [N, HW, C]
        return f + self.gate * out.transpose(1, 2).reshape(n, c, h, w)


class MTI(nn.Module):
    """Adapt maps [N, C_s, H_s, W_s] (finest first) with meta-tokens [N, K, D_a], [N, K, D_v]."""

    def __init__(self, audio_dim: int, visual_dim: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.levels = nn.ModuleList(_Level(audio_dim, visual_dim, c) for c in channels)

    def forward(self, maps: Sequence[torch.Tensor], meta_a: torch.Tensor, meta_v: torch.Tensor) -> list[torch.Tensor]:
        return [level(f, meta_a, meta_v) for level, f in zip(self.levels, maps, strict=True)]


def mti_param_count(audio_dim: int, visual_dim: int, channels: Sequence[int]) -> int:
    """Trainable parameters of `MTI` (closed form)."""
    return sum((audio_dim + 1) * 2 * c + (visual_dim + 1) * 2 * c + 1 for c in channels)
