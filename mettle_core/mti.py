"""Meta-Token Injection (MTI): top-layer meta-tokens guide the frozen visual pyramid.

What the paper states: for segmentation, LCD runs on the top layer only and MTI uses the
top-layer audio and visual meta-tokens to guide the adaptation of earlier-layer features.

What is ours: how they guide it. Each level adds a gated term to the frozen map,
F_s' = F_s + g_s * out, with g_s zero-initialised so that training starts from the frozen
pyramid. `attention`: F_s is the query of a single-head cross-attention over the same
frame's [M_a; M_v], projected to C_s as keys and values. A learned query projection would add
nothing there: with one head, q^T k = F^T W_q^T W_k m, and W_q^T W_k is already any C_s x D
map, so the key projection absorbs it. `film`: the frame's mean meta-tokens set a per-channel
scale and shift of F_s (FiLM): guidance by channel instead of by pixel, with no map-sized
attention to keep.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

MTIKind = Literal["attention", "film", "off"]


class _AttentionLevel(nn.Module):
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


class _FiLMLevel(nn.Module):
    def __init__(self, audio_dim: int, visual_dim: int, channels: int) -> None:
        super().__init__()
        self.film = nn.Linear(audio_dim + visual_dim, 2 * channels)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, f: torch.Tensor, meta_a: torch.Tensor, meta_v: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(torch.cat([meta_a.mean(1), meta_v.mean(1)], dim=-1)).chunk(2, dim=-1)
        return f + self.gate * (f * scale[..., None, None] + shift[..., None, None])


LEVELS: dict[str, type[nn.Module]] = {"attention": _AttentionLevel, "film": _FiLMLevel}


class MTI(nn.Module):
    """Adapt maps [N, C_s, H_s, W_s] (finest first) with meta-tokens [N, K, D_a], [N, K, D_v]."""

    def __init__(self, audio_dim: int, visual_dim: int, channels: Sequence[int], kind: MTIKind = "attention") -> None:
        super().__init__()
        self.levels = nn.ModuleList(LEVELS[kind](audio_dim, visual_dim, c) for c in channels)

    def forward(self, maps: Sequence[torch.Tensor], meta_a: torch.Tensor, meta_v: torch.Tensor) -> list[torch.Tensor]:
        return [level(f, meta_a, meta_v) for level, f in zip(self.levels, maps, strict=True)]


def mti_param_count(audio_dim: int, visual_dim: int, channels: Sequence[int], kind: MTIKind = "attention") -> int:
    """Trainable parameters of `MTI` (closed form; 0 when off)."""
    per_level = {
        "attention": lambda c: (audio_dim + 1) * 2 * c + (visual_dim + 1) * 2 * c + 1,
        "film": lambda c: (audio_dim + visual_dim + 1) * 2 * c + 1,
        "off": lambda c: 0,
    }[kind]
    return sum(per_level(c) for c in channels)
