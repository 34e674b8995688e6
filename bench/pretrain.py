"""Pre-training of a preset's towers on synthetic primitives.

Frozen random towers make adaptation methods look alike, while real users adapt
pretrained towers. So the `tiny` towers are pretrained here, on a task distinct
from the downstream ones, with a vocabulary disjoint from theirs: "which shapes /
which hues are in the frame, which way does the background grating run" (1-3
objects of shapes no downstream class uses) and "which pitches / which temporal
patterns are sounding" (0-2 harmonic sources on another pitch grid, with patterns
no downstream class uses), with a linear head on the pooled tower output.

Three towers come out: the audio specialist (sound corpus), the visual specialist
(scene corpus) and LAVisH's shared tower, which sees both corpora, batch for batch the
same data as the two specialists. A real shared tower (ImageNet-scale) has seen enough
varied structure to read spectrograms; a tiny tower trained on coloured shapes alone has
not, so without the shared tower LAVisH would be measuring a tower that cannot hear.
Everything is seeded, so the shipped weights can be rebuilt, and their card's held-out
accuracy re-checked.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from bench.data.core import DataShape
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
from bench.shipped import CORPORA, PretrainConfig, rebuild_dir, recipe, shipped_files, weight_files
from bench.shipped import PRETRAIN_ROLES as ROLES
from bench.towers import build_backbone
from mettle_core.backbone import Backbone

# corpus -> (factor name, number of multi-hot labels); each factor is one block of its head's outputs
FACTORS: dict[str, tuple[tuple[str, int], ...]] = {
    "audio": (("pitch", SOURCE_PITCHES), ("pattern", len(SOURCE_PATTERNS))),
    "visual": (("shape", len(SCENE_SHAPES)), ("hue", SCENE_HUES), ("orientation", SCENE_ORIENTATIONS)),
}
DATA = {
    "audio": f"one-second waveforms, heard through each tower's own front-end, with 0-2 harmonic sources "
    f"({SOURCE_PITCHES} pitch steps x "
    f"{', '.join(SOURCE_PATTERNS)}; 2-4 harmonics, random roll-off) over noise with a distractor tone; "
    "multi-hot labels: pitches present, patterns present (none: noise only)",
    "visual": f"frames with 1-3 objects, one per quadrant ({', '.join(SCENE_SHAPES)} x {SCENE_HUES} hue bins, "
    f"random size, saturation and value) over a grey grating ({SCENE_ORIENTATIONS} orientations, random "
    "frequency and phase) on a textured noisy background with a grey distractor; labels: shapes present, "
    "hue bins present (multi-hot), grating orientation (one-hot)",
}


def sample(corpus: str, gen: torch.Generator, n: int, shape: DataShape) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` inputs of `corpus` (one-second waveforms, or frames) and their concatenated
    multi-hot labels [n, sum of factor sizes]."""
    if corpus == "audio":
        x, *labels = render_sources(gen, n, shape.sample_rate)
    else:
        x, *labels = render_scene(gen, n, shape.image_size)
    return x, torch.cat(labels, dim=1)


def set_accuracy(logits: torch.Tensor, labels: torch.Tensor, corpus: str) -> dict[str, float]:
    """Per factor, the percentage of samples whose predicted set (logit > 0) is exactly
    right; `accuracy` is their mean."""
    scores, start = {}, 0
    for name, size in FACTORS[corpus]:
        hit = ((logits[:, start : start + size] > 0) == labels[:, start : start + size].bool()).all(1)
        scores[name] = 100.0 * hit.float().mean().item()
        start += size
    return {"accuracy": sum(scores.values()) / len(scores)} | scores


def corpus_seed(seed: int, corpus: str) -> int:
    """Seed of a corpus's training stream: every tower reading a corpus sees the same batches."""
    return seed * 1000 + CORPORA.index(corpus)


def heldout_seed(seed: int, corpus: str) -> int:
    return seed * 1000 + 10 + CORPORA.index(corpus)


@torch.no_grad()
def evaluate(tower: Backbone, head: nn.Module, corpus: str, shape: DataShape, seed: int, n: int) -> dict[str, float]:
    """Set accuracy of tower + head on `n` held-out samples of `corpus` regenerated from `seed`
    (a waveform goes through the tower's own front-end)."""
    tower.eval()
    gen = torch.Generator().manual_seed(heldout_seed(seed, corpus))
    x, y = sample(corpus, gen, n, shape)
    logits = torch.cat([head(tower.features(chunk, corpus)) for chunk in x.split(500)])
    return set_accuracy(logits, y, corpus)


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
) -> tuple[nn.Module, nn.ModuleDict, dict[str, Any]]:
    """Train one tower (timm layout, no classifier) with a linear head per corpus of its
    role; each step adds one batch of every corpus. Return both and the held-out scores:
    per corpus, and `accuracy` averaged over them."""
    start = time.perf_counter()
    corpora = ROLES[role]
    with torch.random.fork_rng():
        torch.manual_seed(seed * 1000 + list(ROLES).index(role))
        tower = build_backbone(spec, shape)
        model = tower.model.requires_grad_(True)
        heads = nn.ModuleDict({c: nn.Linear(tower.out_dim, sum(size for _, size in FACTORS[c])) for c in corpora})
    params = list(model.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * s / cfg.steps)),
    )
    gens = {c: torch.Generator().manual_seed(corpus_seed(seed, c)) for c in corpora}
    tower.train()
    for step in range(cfg.steps):
        loss = torch.zeros(())
        for c in corpora:
            x, y = sample(c, gens[c], cfg.batch_size, shape)
            loss = loss + F.binary_cross_entropy_with_logits(heads[c](tower.features(x, c)), y)
        if not torch.isfinite(loss):
            raise RuntimeError(f"pre-training the {role} tower diverged at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if (step + 1) % max(1, cfg.steps // 5) == 0:
            log(f"  {role} step {step + 1}/{cfg.steps}: loss {loss.item():.4f}")
    per_corpus = {c: evaluate(tower, heads[c], c, shape, seed, cfg.heldout) for c in corpora}
    scores: dict[str, Any] = {"accuracy": sum(r["accuracy"] for r in per_corpus.values()) / len(corpora)}
    scores |= per_corpus | {"train_s": round(time.perf_counter() - start, 1)}
    log(f"{role} tower: held-out set accuracy {scores['accuracy']:.2f}% ({scores['train_s']}s)")
    return model, heads, scores


def pretrain(
    preset: Preset, out: Path, seed: int = 0, cfg: PretrainConfig | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Pretrain every tower role of `preset`; write their weights (timm layout without a
    classifier, loadable by `build_backbone`), the heads and a JSON card into `out`."""
    cfg = cfg or PretrainConfig()
    files = weight_files(preset.name, out)
    out.mkdir(parents=True, exist_ok=True)
    heads, results = {}, {}
    with deterministic():
        for role in ROLES:
            model, role_heads, results[role] = train_tower(role, getattr(preset, role), preset.shape, cfg, seed, log)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(files[role]))
            heads |= {f"{role}.{k}": v.contiguous() for k, v in role_heads.state_dict().items()}
    save_file(heads, str(files["heads"]))
    card = recipe(preset, seed, cfg) | dict(
        data=DATA,
        factors={corpus: dict(FACTORS[corpus]) for corpus in CORPORA},
        metric="per factor: % of held-out samples whose predicted label set (logit > 0) is exactly right; "
        "per corpus: mean over its factors; accuracy: mean over the tower's corpora",
        heldout=dict(size=cfg.heldout, seeds={corpus: heldout_seed(seed, corpus) for corpus in CORPORA}),
        results=results,
        command=f"python -m bench pretrain --preset {preset.name} --seed {seed}",
        versions=dict(torch=torch.__version__, timm=timm.__version__),
    )
    files["card"].write_text(json.dumps(card, indent=2) + "\n")
    return card


def ensure_shipped(preset: Preset, log: Callable[[str], None] = print) -> bool:
    """Build `preset`'s shipped tower weights into the user cache when they are missing (a few
    minutes, once); True when it did. The runner calls this before any run, outside every
    run's timing: resolving weights never trains."""
    _, origin = shipped_files(preset)
    target = rebuild_dir(preset)
    if origin == "shipped" or weight_files(preset.name, target)["card"].is_file():
        return False
    log(f"shipped {preset.name} tower weights are missing: pre-training them into {target} (first use only)")
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    pretrain(preset, partial, log=log)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return True


def load_heads(path: Path) -> dict[tuple[str, str], nn.Linear]:
    """The pre-training heads saved next to the towers, per (role, corpus)."""
    state = load_file(str(path))
    heads = {}
    for role, corpora in ROLES.items():
        for corpus in corpora:
            weight = state[f"{role}.{corpus}.weight"]
            heads[role, corpus] = nn.Linear(weight.shape[1], weight.shape[0])
            heads[role, corpus].load_state_dict({"weight": weight, "bias": state[f"{role}.{corpus}.bias"]})
    return heads
