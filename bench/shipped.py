"""The preset towers' shipped weights: which files they are, the recipe that makes them, and
where a rebuild of that recipe lives when they are missing (a checkout without them, or a
preset that ships none yet). Reading this never trains; `bench.pretrain.ensure_shipped` is
the one explicit step that builds missing weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from bench.presets import Preset

WEIGHTS_DIR = Path(__file__).parent / "weights"
CORPORA = ("audio", "visual")
# tower role -> the corpora it is pretrained on (one head per corpus)
PRETRAIN_ROLES: dict[str, tuple[str, ...]] = {"audio": ("audio",), "visual": ("visual",), "shared": CORPORA}


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
    """Where `bench pretrain` writes: one tower file per role, the heads, the card."""
    files = {role: out / f"{preset_name}_{role}.safetensors" for role in PRETRAIN_ROLES}
    return files | {"heads": out / f"{preset_name}_heads.safetensors", "card": out / f"{preset_name}_card.json"}


def recipe(preset: Preset, seed: int, cfg: PretrainConfig) -> dict[str, Any]:
    """Everything the weights depend on (the cache key of rebuilt weights)."""
    towers = {
        role: asdict(getattr(preset, role)) | {"corpora": list(corpora)} for role, corpora in PRETRAIN_ROLES.items()
    }
    return dict(preset=preset.name, towers=towers, shape=asdict(preset.shape), seed=seed, config=asdict(cfg))


def cache_dir() -> Path:
    """Where rebuilt weights go: $METTLE_BENCH_CACHE, else ~/.cache/mettle-bench."""
    env = os.environ.get("METTLE_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mettle-bench"


def rebuild_dir(preset: Preset) -> Path:
    """The cache folder of `preset`'s recipe (seed 0, the default config)."""
    blob = json.dumps(recipe(preset, 0, PretrainConfig()), sort_keys=True).encode()
    return cache_dir() / f"{preset.name}-{hashlib.sha256(blob).hexdigest()[:12]}"


def shipped_files(preset: Preset) -> tuple[dict[str, Path], Literal["shipped", "cache"]]:
    """({role: file}, origin): the shipped files when all are there, else where the rebuild of
    the same recipe lives (which may not exist yet: `bench.pretrain.ensure_shipped` builds it)."""
    shipped = weight_files(preset.name, WEIGHTS_DIR)
    if all(shipped[role].is_file() for role in PRETRAIN_ROLES):
        return {role: shipped[role] for role in PRETRAIN_ROLES}, "shipped"
    files = weight_files(preset.name, rebuild_dir(preset))
    return {role: files[role] for role in PRETRAIN_ROLES}, "cache"
