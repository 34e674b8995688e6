"""Procedural audio-visual primitives shared by every synthetic task.

Visual classes are analytic shapes x colours drawn over a textured, noisy
background; audio classes are harmonic stacks (pitch) x temporal patterns drawn
over noise with non-harmonic distractor tones. Everything is vectorised over
samples and deterministic given a `torch.Generator`.
"""

from __future__ import annotations

import math

import torch

SHAPES = ("disk", "square", "diamond", "ring", "cross", "hbar", "triangle")
COLOURS = torch.tensor([[1.0, 0.15, 0.1], [0.1, 0.85, 0.2], [0.15, 0.3, 1.0], [0.95, 0.85, 0.1]])
PATTERNS = ("steady", "pulsed", "rising", "falling")
MAX_CLASSES = len(SHAPES) * len(COLOURS)


def _shape_mask(kind: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Boolean masks [N, H, W] of each sample's shape `kind` [N] with radius r [N, 1, 1]."""
    ay, ax = dy.abs(), dx.abs()
    dist = torch.sqrt(dy**2 + dx**2)
    masks = torch.stack(
        [
            dist < r,
            torch.maximum(ay, ax) < 0.8 * r,
            ay + ax < r,
            (dist < r) & (dist > 0.55 * r),
            ((ay < 0.3 * r) & (ax < r)) | ((ax < 0.3 * r) & (ay < r)),
            (ay < 0.35 * r) & (ax < r),
            (dy < 0.7 * r) & (dy > -r) & (ax < (dy + r) * 0.55),
        ]
    )  # [S, N, H, W]
    return masks[kind, torch.arange(kind.shape[0])]


def render_visual(
    gen: torch.Generator, classes: torch.Tensor, size: int, noise: float = 0.15, clutter: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw frames [N, 3, size, size] with objects `classes` [N, M] (-1: slot empty).

    Returns the frames and the visible mask of each slot [N, M, size, size]
    (later slots occlude earlier ones). `clutter` grey blobs per frame act as
    class-free distractors.
    """
    n, m = classes.shape
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = coords.view(1, size, 1), coords.view(1, 1, size)
    # low-frequency background texture
    base = torch.rand(n, 3, 4, 4, generator=gen) * 0.35
    frames = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    for _ in range(clutter):
        cy, cx = torch.rand(2, n, 1, 1, generator=gen) * 0.8 + 0.1
        r = torch.rand(n, 1, 1, generator=gen) * 0.1 + 0.08
        kind = torch.randint(len(SHAPES), (n,), generator=gen)
        blob = _shape_mask(kind, yy - cy, xx - cx, r).unsqueeze(1)
        frames = torch.where(blob, torch.full_like(frames, 0.5), frames)
    masks = torch.zeros(n, m, size, size, dtype=torch.bool)
    for j in range(m):
        cls = classes[:, j]
        present = cls >= 0
        c = cls.clamp(min=0)
        cy, cx = torch.rand(2, n, 1, 1, generator=gen) * 0.5 + 0.25
        r = torch.rand(n, 1, 1, generator=gen) * 0.08 + 0.17
        mask = _shape_mask(c % len(SHAPES), yy - cy, xx - cx, r) & present.view(n, 1, 1)
        colour = COLOURS[c // len(SHAPES)].view(n, 3, 1, 1)
        frames = torch.where(mask.unsqueeze(1), colour, frames)
        masks[:, :j] &= ~mask.unsqueeze(1)
        masks[:, j] = mask
    frames = frames + noise * torch.randn(frames.shape, generator=gen)
    return (frames - 0.45) / 0.3, masks


def render_audio(
    gen: torch.Generator, classes: torch.Tensor, mel_bins: int, frames: int, noise: float = 0.3, distractors: int = 1
) -> torch.Tensor:
    """Draw log-mel-like spectrograms [N, 1, mel_bins, frames] of the sounding
    `classes` [N, M] (-1: silent slot), mixed additively over noise and
    `distractors` pure tones that belong to no class."""
    n, m = classes.shape
    f = torch.arange(mel_bins, dtype=torch.float32).view(1, mel_bins, 1)
    t = torch.linspace(0.0, 1.0, frames).view(1, 1, frames)
    sigma = max(0.6, mel_bins / 64)
    spec = torch.zeros(n, mel_bins, frames)
    pitches = len(SHAPES)
    for j in range(m):
        cls = classes[:, j]
        c = cls.clamp(min=0)
        pattern = (c // pitches).view(n, 1, 1)
        f0 = (0.06 + 0.035 * (c % pitches).float()).view(n, 1, 1) * mel_bins
        slope = torch.where(pattern == 2, 0.7 + 0.6 * t, torch.where(pattern == 3, 1.3 - 0.6 * t, torch.ones_like(t)))
        env = torch.where(pattern == 1, 0.5 + 0.5 * torch.cos(2 * math.pi * 4 * t), torch.ones_like(t))
        level = (cls >= 0).float().view(n, 1, 1) * (0.7 + 0.3 * torch.rand(n, 1, 1, generator=gen))
        for h in (1, 2, 3):
            spec = spec + level * env * torch.exp(-((f - h * f0 * slope) ** 2) / (2 * sigma**2)) / h**0.5
    for _ in range(distractors):
        tone = torch.rand(n, 1, 1, generator=gen) * mel_bins
        on = (torch.rand(n, 1, 1, generator=gen) < 0.5).float()
        spec = spec + 0.6 * on * torch.exp(-((f - tone) ** 2) / (2 * sigma**2))
    spec = spec + noise * torch.rand(n, mel_bins, frames, generator=gen)
    return ((torch.log1p(4 * spec) - 0.5) / 0.5).unsqueeze(1)
