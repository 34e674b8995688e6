"""Pre-training of a preset's towers on synthetic primitives.

Frozen random towers make adaptation methods look alike, while real users adapt
pretrained towers. So the `tiny` towers are pretrained here, on a task distinct
from the downstream ones, with a vocabulary disjoint from theirs: "which shapes /
which hues are in the frame, which way does the background grating run" (1-3
objects of shapes no downstream class uses) and "which pitches / which temporal
patterns are sounding" (0-2 harmonic sources on another pitch grid, with patterns
no downstream class uses), with a linear head on the pooled tower output. Everything is seeded, so the
shipped weights can be rebuilt, and their card's held-out accuracy re-checked.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from bench.data.synthetic import (
    SCENE_HUES,
    SCENE_ORIENTATIONS,
    SCENE_SHAPES,
    SOURCE_PATTERNS,
    SOURCE_PITCHES,
    render_scene,
    render_sources,
)
from bench.presets import Preset, TowerSpec
from bench.tasks.base import DataShape
from bench.towers import build_backbone

ROLES = ("audio", "visual")
# role -> (factor name, number of multi-hot labels); each factor is one block of the head's outputs
FACTORS: dict[str, tuple[tuple[str, int], ...]] = {
    "audio": (("pitch", SOURCE_PITCHES), ("pattern", len(SOURCE_PATTERNS))),
    "visual": (("shape", len(SCENE_SHAPES)), ("hue", SCENE_HUES), ("orientation", SCENE_ORIENTATIONS)),
}
DATA = {
    "audio": f"log-mel-like spectrograms with 0-2 harmonic sources ({SOURCE_PITCHES} pitch steps x "
    f"{', '.join(SOURCE_PATTERNS)}; 2-4 harmonics, random roll-off) over noise with a distractor tone; "
    "multi-hot labels: pitches present, patterns present (none: noise only)",
    "visual": f"frames with 1-3 objects, one per quadrant ({', '.join(SCENE_SHAPES)} x {SCENE_HUES} hue bins, "
    f"random size, saturation and value) over a grey grating ({SCENE_ORIENTATIONS} orientations, random "
    "frequency and phase) on a textured noisy background with a grey distractor; labels: shapes present, "
    "hue bins present (multi-hot), grating orientation (one-hot)",
}


@dataclass(frozen=True)
class PretrainConfig:
    """Recipe per tower: AdamW, linear warm-up then cosine decay, fresh batches each step."""

    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 100
    heldout: int = 2000


def weight_files(preset_name: str, out: Path) -> dict[str, Path]:
    """Where `pretrain` writes: one tower file per role, the heads, the card."""
    files = {role: out / f"{preset_name}_{role}.safetensors" for role in ROLES}
    return files | {"heads": out / f"{preset_name}_heads.safetensors", "card": out / f"{preset_name}_card.json"}


def sample(role: str, gen: torch.Generator, n: int, shape: DataShape) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` inputs and their concatenated multi-hot labels [n, sum of factor sizes]."""
    if role == "audio":
        x, *labels = render_sources(gen, n, shape.mel_bins, shape.mel_frames)
    else:
        x, *labels = render_scene(gen, n, shape.image_size)
    return x, torch.cat(labels, dim=1)


def set_accuracy(logits: torch.Tensor, labels: torch.Tensor, role: str) -> dict[str, float]:
    """Per factor, the percentage of samples whose predicted set (logit > 0) is exactly
    right; `accuracy` is their mean."""
    scores, start = {}, 0
    for name, size in FACTORS[role]:
        hit = ((logits[:, start : start + size] > 0) == labels[:, start : start + size].bool()).all(1)
        scores[name] = 100.0 * hit.float().mean().item()
        start += size
    return {"accuracy": sum(scores.values()) / len(scores)} | scores


def heldout_seed(seed: int, role: str) -> int:
    return seed * 1000 + 10 + ROLES.index(role)


@torch.no_grad()
def evaluate(model: nn.Module, head: nn.Module, role: str, shape: DataShape, seed: int, n: int) -> dict[str, float]:
    """Set accuracy of tower + head on `n` held-out samples regenerated from `seed`."""
    model.eval()
    gen = torch.Generator().manual_seed(heldout_seed(seed, role))
    x, y = sample(role, gen, n, shape)
    logits = torch.cat([head(model(chunk)) for chunk in x.split(500)])
    return set_accuracy(logits, y, role)


@contextmanager
def deterministic() -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def train_tower(
    role: str, spec: TowerSpec, shape: DataShape, cfg: PretrainConfig, seed: int, log: Callable[[str], None]
) -> tuple[nn.Module, nn.Linear, dict[str, float]]:
    """Train one tower (timm layout, no classifier) and its linear head; return both
    and the held-out scores."""
    start = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(seed * 1000 + ROLES.index(role))
        model = build_backbone(spec).model.requires_grad_(True)
        head = nn.Linear(model.num_features, sum(size for _, size in FACTORS[role]))
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * s / cfg.steps)),
    )
    gen = torch.Generator().manual_seed(seed * 1000 + ROLES.index(role))
    model.train()
    for step in range(cfg.steps):
        x, y = sample(role, gen, cfg.batch_size, shape)
        loss = F.binary_cross_entropy_with_logits(head(model(x)), y)
        if not torch.isfinite(loss):
            raise RuntimeError(f"pre-training the {role} tower diverged at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if (step + 1) % max(1, cfg.steps // 5) == 0:
            log(f"  {role} step {step + 1}/{cfg.steps}: loss {loss.item():.4f}")
    scores = evaluate(model, head, role, shape, seed, cfg.heldout)
    scores["train_s"] = round(time.perf_counter() - start, 1)
    log(f"{role} tower: held-out set accuracy {scores['accuracy']:.2f}% ({scores['train_s']}s)")
    return model, head, scores


def recipe(preset: Preset, seed: int, cfg: PretrainConfig) -> dict[str, Any]:
    """Everything the weights depend on (the cache key of rebuilt weights)."""
    towers = {role: asdict(getattr(preset, role)) for role in ROLES}
    return dict(preset=preset.name, towers=towers, shape=asdict(preset.shape), seed=seed, config=asdict(cfg))


def pretrain(
    preset: Preset, out: Path, seed: int = 0, cfg: PretrainConfig | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Pretrain both towers of `preset`; write their weights (timm layout without a
    classifier, loadable by `build_backbone`), the heads and a JSON card into `out`."""
    cfg = cfg or PretrainConfig()
    files = weight_files(preset.name, out)
    out.mkdir(parents=True, exist_ok=True)
    heads, results = {}, {}
    with deterministic():
        for role in ROLES:
            model, head, results[role] = train_tower(role, getattr(preset, role), preset.shape, cfg, seed, log)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(files[role]))
            heads |= {f"{role}.{k}": v.contiguous() for k, v in head.state_dict().items()}
    save_file(heads, str(files["heads"]))
    card = recipe(preset, seed, cfg) | dict(
        data=DATA,
        factors={role: dict(FACTORS[role]) for role in ROLES},
        metric="per factor: % of held-out samples whose predicted label set (logit > 0) is exactly right; "
        "accuracy: mean over the tower's factors",
        heldout=dict(size=cfg.heldout, seeds={role: heldout_seed(seed, role) for role in ROLES}),
        results=results,
        command=f"python -m bench pretrain --preset {preset.name} --seed {seed}",
        versions=dict(torch=torch.__version__, timm=timm.__version__),
    )
    files["card"].write_text(json.dumps(card, indent=2) + "\n")
    return card


def load_heads(path: Path) -> dict[str, nn.Linear]:
    """The pre-training heads saved next to the towers, per role."""
    state = load_file(str(path))
    heads = {}
    for role in ROLES:
        weight = state[f"{role}.weight"]
        heads[role] = nn.Linear(weight.shape[1], weight.shape[0])
        heads[role].load_state_dict({"weight": weight, "bias": state[f"{role}.bias"]})
    return heads


def cache_dir() -> Path:
    """Where rebuilt weights go: $METTLE_BENCH_CACHE, else ~/.cache/mettle-bench."""
    env = os.environ.get("METTLE_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mettle-bench"


def default_checkpoints(preset: Preset, log: Callable[[str], None] | None = None) -> dict[str, Path]:
    """The preset's shipped tower weights; when they are missing, weights rebuilt with
    the default recipe in the user cache, pre-training them there on first use."""
    shipped = dict(preset.default_weights)
    if all(path.is_file() for path in shipped.values()):
        return shipped
    key = hashlib.sha256(json.dumps(recipe(preset, 0, PretrainConfig()), sort_keys=True).encode()).hexdigest()[:12]
    target = cache_dir() / f"{preset.name}-{key}"
    files = weight_files(preset.name, target)
    if not files["card"].is_file():
        log = log or (lambda text: print(text, file=sys.stderr))
        log(f"shipped {preset.name} tower weights are missing: pre-training them into {target} (first use only)")
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        pretrain(preset, partial, log=log)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return {role: files[role] for role in shipped}
