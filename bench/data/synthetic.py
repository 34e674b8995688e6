"""Procedural audio-visual primitives shared by every synthetic task.

Visual classes are analytic shapes x colours drawn over a textured, noisy
background; audio classes are one-second waveforms of harmonic stacks (pitch) x
temporal patterns over noise with non-harmonic distractor tones, so that every
audio tower computes its own input features with its own front-end, as on real
data. Everything is vectorised over samples and deterministic given a
`torch.Generator`.

`render_scene` and `render_sources` draw the towers' pre-training data from a
vocabulary DISJOINT from the downstream one: other shapes (over oriented grey
gratings), free hues and sizes; another pitch grid, and temporal patterns that
none of the downstream classes use (no glides, no 4 Hz pulse). Pre-training thus
teaches generic primitives, and the downstream tasks need adaptation the way real
target domains do.
"""

from __future__ import annotations

import math

import torch

SHAPES = ("disk", "square", "diamond", "ring", "cross", "hbar", "triangle")
COLOURS = torch.tensor([[1.0, 0.15, 0.1], [0.1, 0.85, 0.2], [0.15, 0.3, 1.0], [0.95, 0.85, 0.1]])
PATTERNS = ("steady", "pulsed", "rising", "falling")
MAX_CLASSES = len(SHAPES) * len(COLOURS)
SCENE_SHAPES = ("vbar", "ellipse", "frame", "xcross", "half_disk", "lshape", "hourglass", "chevron")
SCENE_HUES = 8
SCENE_ORIENTATIONS = 4  # background grating orientation bins over 180 degrees
SOURCE_PITCHES = 10
SOURCE_PATTERNS = ("steady", "fast_pulsed", "decaying", "vibrato", "swell")


def _shape_mask(
    kind: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, r: torch.Tensor, vocab: tuple[str, ...] = SHAPES
) -> torch.Tensor:
    """Boolean masks [N, H, W] of each sample's shape `vocab[kind]` ([N] indices) with
    radius r [N, 1, 1], centred at offsets (dy, dx) from the pixel grid."""
    ay, ax = dy.abs(), dx.abs()
    dist = torch.sqrt(dy**2 + dx**2)
    au, av = (dy + dx).abs() / math.sqrt(2), (dy - dx).abs() / math.sqrt(2)
    box = torch.maximum(ay, ax)
    draw = {
        "disk": lambda: dist < r,
        "square": lambda: box < 0.8 * r,
        "diamond": lambda: ay + ax < r,
        "ring": lambda: (dist < r) & (dist > 0.55 * r),
        "cross": lambda: ((ay < 0.3 * r) & (ax < r)) | ((ax < 0.3 * r) & (ay < r)),
        "hbar": lambda: (ay < 0.35 * r) & (ax < r),
        "triangle": lambda: (dy < 0.7 * r) & (dy > -r) & (ax < (dy + r) * 0.55),
        "vbar": lambda: (ax < 0.35 * r) & (ay < r),
        "ellipse": lambda: (dy / (0.55 * r)) ** 2 + (dx / r) ** 2 < 1,
        "frame": lambda: (box < 0.9 * r) & (box > 0.55 * r),
        "xcross": lambda: ((au < 0.3 * r) & (av < r)) | ((av < 0.3 * r) & (au < r)),
        "half_disk": lambda: (dist < r) & (dy > -0.1 * r),
        "lshape": lambda: (box < r) & ((dx < -0.35 * r) | (dy > 0.35 * r)),
        "hourglass": lambda: (ay < r) & (ax < 0.9 * ay),
        "chevron": lambda: (ax < r) & ((dy + 0.6 * ax - 0.3 * r).abs() < 0.3 * r),
    }
    masks = torch.stack([draw[name]() for name in vocab])  # [S, N, H, W]
    return masks[kind, torch.arange(kind.shape[0])]


def _background(
    gen: torch.Generator, n: int, size: int, clutter: int, min_radius: float, vocab: tuple[str, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Low-frequency textured frames [N, 3, size, size] with `clutter` grey class-free
    blobs, and the pixel-centre grids (yy, xx) the shapes are drawn on."""
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = coords.view(1, size, 1), coords.view(1, 1, size)
    base = torch.rand(n, 3, 4, 4, generator=gen) * 0.35
    frames = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    for _ in range(clutter):
        cy, cx = torch.rand(2, n, 1, 1, generator=gen) * 0.8 + 0.1
        r = torch.rand(n, 1, 1, generator=gen) * 0.1 + min_radius
        kind = torch.randint(len(vocab), (n,), generator=gen)
        blob = _shape_mask(kind, yy - cy, xx - cx, r, vocab).unsqueeze(1)
        frames = torch.where(blob, torch.full_like(frames, 0.5), frames)
    return frames, yy, xx


def render_visual(
    gen: torch.Generator, classes: torch.Tensor, size: int, noise: float = 0.15, clutter: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw frames [N, 3, size, size] with objects `classes` [N, M] (-1: slot empty).

    Returns the frames and the visible mask of each slot [N, M, size, size]
    (later slots occlude earlier ones). `clutter` grey blobs per frame act as
    class-free distractors.
    """
    n, m = classes.shape
    frames, yy, xx = _background(gen, n, size, clutter, min_radius=0.08, vocab=SHAPES)
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


def _tones(
    gen: torch.Generator, n: int, samples: int, sample_rate: int, low: float, high: float, level: float
) -> torch.Tensor:
    """Pure tones [N, samples], half of them silent, at log-uniform frequencies in [low, high]
    Hz and random phase: sounds that belong to no class."""
    freq = low * (high / low) ** torch.rand(n, 1, generator=gen)
    phase = torch.rand(n, 1, generator=gen) * 2 * math.pi
    on = (torch.rand(n, 1, generator=gen) < 0.5).float()
    t = torch.arange(samples, dtype=torch.float32) / sample_rate
    return level * on * torch.sin(2 * math.pi * freq * t + phase)


def _harmonic(
    f0: torch.Tensor, cycles: torch.Tensor, phase: torch.Tensor, weights: list[torch.Tensor], sample_rate: int
) -> torch.Tensor:
    """Sum over harmonics h of weights[h-1] * sin(2 pi h f0 * cycles(t) + h * phase): a source
    whose instantaneous pitch is f0 times the derivative of `cycles` [1 or N, samples] (seconds
    of a steady tone), kept below the Nyquist frequency."""
    out = torch.zeros(f0.shape[0], cycles.shape[-1])
    for h, w in enumerate(weights, start=1):
        audible = (h * f0 < 0.45 * sample_rate).float()
        out = out + w * audible * torch.sin(2 * math.pi * h * f0 * cycles + h * phase)
    return out


def render_audio(
    gen: torch.Generator, classes: torch.Tensor, sample_rate: int, noise: float = 0.3, distractors: int = 1
) -> torch.Tensor:
    """One-second mono waveforms [N, sample_rate] of the sounding `classes` [N, M] (-1: silent
    slot), mixed over white noise and `distractors` pure tones that belong to no class.

    A class is a pitch (`c % 7`: f0 on a log grid from 180 to 800 Hz, three harmonics at
    1/sqrt(h)) with a temporal pattern (`c // 7`): steady, pulsed at 4 Hz, rising or falling
    glide (f0 x 0.7 -> 1.3 or 1.3 -> 0.7 over the second). Amplitudes stay within [-1, 1]
    like decoded audio, so every tower's front-end sees what it would see on real data."""
    n, m = classes.shape
    t = torch.arange(sample_rate, dtype=torch.float32).view(1, -1) / sample_rate
    glide = {2: 0.7 * t + 0.3 * t**2, 3: 1.3 * t - 0.3 * t**2}  # seconds of steady tone elapsed
    wave = torch.zeros(n, sample_rate)
    pitches = len(SHAPES)
    for j in range(m):
        cls = classes[:, j]
        c = cls.clamp(min=0)
        pattern = (c // pitches).view(n, 1)
        f0 = (180.0 * (800.0 / 180.0) ** ((c % pitches).float() / (pitches - 1))).view(n, 1)
        cycles = torch.where(pattern == 2, glide[2], torch.where(pattern == 3, glide[3], t))
        env = torch.where(pattern == 1, 0.5 + 0.5 * torch.cos(2 * math.pi * 4 * t), torch.ones_like(t))
        level = (cls >= 0).float().view(n, 1) * (0.7 + 0.3 * torch.rand(n, 1, generator=gen))
        phase = torch.rand(n, 1, generator=gen) * 2 * math.pi
        weights = [torch.tensor(h**-0.5) for h in (1, 2, 3)]
        wave = wave + 0.15 * level * env * _harmonic(f0, cycles, phase, weights, sample_rate)
    for _ in range(distractors):
        wave = wave + _tones(gen, n, sample_rate, sample_rate, 100.0, 0.4 * sample_rate, 0.09)
    wave = wave + 0.05 * noise * torch.randn(n, sample_rate, generator=gen)
    return wave


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[N] hue, saturation, value in [0, 1] -> [N, 3] RGB."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + 6 * h[:, None]) % 6
    return v[:, None] - v[:, None] * s[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1))


def render_scene(
    gen: torch.Generator, n: int, size: int, max_objects: int = 3, clutter: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pre-training frames [N, 3, size, size]: a grey sinusoidal grating of one of
    SCENE_ORIENTATIONS orientations (random phase and frequency) over a textured
    background, and 1..max_objects (<= 4) objects, one per image quadrant so none hides
    another: a kind from SCENE_SHAPES, a hue from one of SCENE_HUES bins (jittered, random
    saturation and value), a random size. Noise level varies per frame. Returns frames and
    labels: shapes present [N, len(SCENE_SHAPES)], hue bins present [N, SCENE_HUES], the
    grating orientation one-hot [N, SCENE_ORIENTATIONS]."""
    frames, yy, xx = _background(gen, n, size, clutter, min_radius=0.06, vocab=SCENE_SHAPES)
    orient = torch.randint(SCENE_ORIENTATIONS, (n,), generator=gen)
    angle = (orient.float() / SCENE_ORIENTATIONS * math.pi).view(n, 1, 1)
    cycles = (2.5 + 2.5 * torch.rand(n, 1, 1, generator=gen)) * 2 * math.pi
    phase = torch.rand(n, 1, 1, generator=gen) * 2 * math.pi
    amp = 0.12 + 0.12 * torch.rand(n, 1, 1, 1, generator=gen)
    wave = torch.sin(cycles * (yy * torch.sin(angle) + xx * torch.cos(angle)) + phase)
    frames = frames + amp * wave.unsqueeze(1)
    count = torch.randint(1, max_objects + 1, (n,), generator=gen)
    cells = torch.rand(n, 4, generator=gen).argsort(-1)
    shapes = torch.zeros(n, len(SCENE_SHAPES))
    hues = torch.zeros(n, SCENE_HUES)
    rows = torch.arange(n)
    for j in range(max_objects):
        present = j < count
        kind = torch.randint(len(SCENE_SHAPES), (n,), generator=gen)
        hue_bin = torch.randint(SCENE_HUES, (n,), generator=gen)
        jitter, sat, val = torch.rand(3, n, generator=gen)
        colour = _hsv_to_rgb((hue_bin + 0.6 * jitter - 0.3) / SCENE_HUES % 1, 0.7 + 0.3 * sat, 0.75 + 0.25 * val)
        cy = 0.25 + 0.5 * (cells[:, j] // 2).float() + (torch.rand(n, generator=gen) - 0.5) * 0.12
        cx = 0.25 + 0.5 * (cells[:, j] % 2).float() + (torch.rand(n, generator=gen) - 0.5) * 0.12
        r = torch.rand(n, 1, 1, generator=gen) * 0.09 + 0.11
        mask = _shape_mask(kind, yy - cy.view(n, 1, 1), xx - cx.view(n, 1, 1), r, SCENE_SHAPES)
        mask &= present.view(n, 1, 1)
        frames = torch.where(mask.unsqueeze(1), colour.view(n, 3, 1, 1), frames)
        shapes[rows[present], kind[present]] = 1.0
        hues[rows[present], hue_bin[present]] = 1.0
    noise = 0.05 + 0.2 * torch.rand(n, 1, 1, 1, generator=gen)
    frames = frames + noise * torch.randn(frames.shape, generator=gen)
    orientation = torch.nn.functional.one_hot(orient, SCENE_ORIENTATIONS).float()
    return (frames - 0.45) / 0.3, shapes, hues, orientation


def render_sources(
    gen: torch.Generator, n: int, sample_rate: int, max_sources: int = 2, distractors: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pre-training waveforms [N, sample_rate] (one second) with 0..max_sources harmonic
    sources (0: noise only): a pitch from SOURCE_PITCHES steps on a log grid from 150 to
    900 Hz (another grid than the downstream one), a pattern from SOURCE_PATTERNS (steady,
    8 Hz pulse, decay, 3 Hz vibrato, swell), 2-4 harmonics with a random roll-off, over
    noise of random level and `distractors` pure tones. Returns waveforms and multi-hot
    labels: pitches present [N, SOURCE_PITCHES], patterns present [N, len(SOURCE_PATTERNS)]."""
    t = torch.arange(sample_rate, dtype=torch.float32).view(1, -1) / sample_rate
    vibrato = t + 0.06 / (2 * math.pi * 3) * (1 - torch.cos(2 * math.pi * 3 * t))  # f0 x (1 + 0.06 sin 6 pi t)
    wave = torch.zeros(n, sample_rate)
    count = torch.randint(0, max_sources + 1, (n,), generator=gen)
    pitches = torch.zeros(n, SOURCE_PITCHES)
    patterns = torch.zeros(n, len(SOURCE_PATTERNS))
    rows = torch.arange(n)
    one = torch.ones_like(t)
    for j in range(max_sources):
        present = j < count
        pitch = torch.randint(SOURCE_PITCHES, (n,), generator=gen)
        pattern = torch.randint(len(SOURCE_PATTERNS), (n,), generator=gen)
        harmonics = torch.randint(2, 5, (n, 1), generator=gen)
        rolloff = 0.3 + 0.7 * torch.rand(n, 1, generator=gen)
        level = present.float().view(n, 1) * (0.6 + 0.4 * torch.rand(n, 1, generator=gen))
        phase = torch.rand(n, 1, generator=gen) * 2 * math.pi
        f0 = (150.0 * 6.0 ** (pitch.float() / (SOURCE_PITCHES - 1))).view(n, 1)
        p = pattern.view(n, 1)
        cycles = torch.where(p == 3, vibrato, t)
        env = torch.where(p == 1, 0.5 + 0.5 * torch.cos(2 * math.pi * 8 * t), one)
        env = torch.where(p == 2, torch.exp(-4 * t), env)
        env = torch.where(p == 4, 0.2 + 0.8 * t, env)
        weights = [(harmonics >= h).float() / h**rolloff for h in (1, 2, 3, 4)]
        wave = wave + 0.15 * level * env * _harmonic(f0, cycles, phase, weights, sample_rate)
        pitches[rows[present], pitch[present]] = 1.0
        patterns[rows[present], pattern[present]] = 1.0
    for _ in range(distractors):
        wave = wave + _tones(gen, n, sample_rate, sample_rate, 100.0, 0.4 * sample_rate, 0.09)
    noise = 0.01 + 0.02 * torch.rand(n, 1, generator=gen)
    return wave + noise * torch.randn(n, sample_rate, generator=gen), pitches, patterns
