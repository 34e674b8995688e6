"""Presets: tower architectures, input geometry and training defaults per scale.

`smoke` runs in seconds (tests), `tiny` in minutes on a laptop CPU (the
default), `base` is a ViT-B/16 setting and `paper` the Mettle paper's setting:
a Swin-V2-L visual tower and an HTS-AT-shaped audio tower. HTS-AT is not in
timm, so `paper` approximates it with a Swin-V2 of HTS-AT's shape (embed 96,
depths 2-2-6-2, window 8, 256 x 256 input, 1 channel); memory and time depend on
that shape, not on the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.tasks.base import DataShape

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class TowerSpec:
    """A timm architecture with the arguments that shape it."""

    model: str
    in_chans: int
    img_size: tuple[int, int]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    audio: TowerSpec
    visual: TowerSpec
    shape: DataShape
    train: dict[str, Any]
    data: dict[str, Any]  # applied to every task config that has the field
    default_weights: dict[str, Path] = field(default_factory=dict)  # role -> shipped checkpoint

    @property
    def shared(self) -> TowerSpec:
        """LAVisH's single tower: the visual architecture, fed log-mels as 3-channel images
        (`tiny` ships it pretrained on both of its synthetic corpora, see bench/pretrain.py)."""
        return self.visual


def _vit(embed: int, depth: int, heads: int, patch: int, size: tuple[int, int], chans: int) -> TowerSpec:
    kwargs = dict(embed_dim=embed, depth=depth, num_heads=heads, patch_size=patch)
    return TowerSpec("vit_tiny_patch16_224", chans, size, kwargs)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "smoke",
            "seconds per run, for tests: 2-block ViT towers (width 32) on 16x16 inputs",
            audio=_vit(32, 2, 2, 4, (16, 16), 1),
            visual=_vit(32, 2, 2, 4, (16, 16), 3),
            shape=DataShape(image_size=16, mel_bins=16, mel_frames=16),
            train=dict(epochs=1, batch_size=8),
            data=dict(num_train=16, num_val=8, num_test=8),
        ),
        Preset(
            "tiny",
            "laptop CPU default: 4-block ViT towers (width 64) on 32x32 inputs, project-pretrained; "
            "5 segments per AVE / AVVP video so that the default command stays within minutes",
            audio=_vit(64, 4, 2, 4, (32, 32), 1),
            visual=_vit(64, 4, 2, 4, (32, 32), 3),
            shape=DataShape(image_size=32, mel_bins=32, mel_frames=32),
            train=dict(epochs=5, batch_size=16),
            data=dict(num_train=400, num_val=100, num_test=200, segments=5),
            default_weights={
                "audio": WEIGHTS_DIR / "tiny_audio.safetensors",
                "visual": WEIGHTS_DIR / "tiny_visual.safetensors",
                "shared": WEIGHTS_DIR / "tiny_shared.safetensors",
            },
        ),
        Preset(
            "base",
            "ViT-B/16 towers (224x224 frames, 128x96 log-mel per segment)",
            audio=TowerSpec("vit_base_patch16_224", 1, (128, 96)),
            visual=TowerSpec("vit_base_patch16_224", 3, (224, 224)),
            shape=DataShape(image_size=224, mel_bins=128, mel_frames=96),
            train=dict(epochs=10, batch_size=2),
            data=dict(),
        ),
        Preset(
            "paper",
            "Swin-V2-L visual (192x192) + HTS-AT-shaped Swin-V2 audio (256x256, 1 channel)",
            audio=TowerSpec(
                "swinv2_tiny_window8_256",
                1,
                (256, 256),
                dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=8),
            ),
            visual=TowerSpec("swinv2_large_window12_192", 3, (192, 192)),
            shape=DataShape(image_size=192, mel_bins=256, mel_frames=256),
            train=dict(epochs=10, batch_size=1),
            data=dict(),
        ),
    )
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r} (valid: {', '.join(PRESETS)})")
    return PRESETS[name]
