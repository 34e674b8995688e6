"""Presets: the towers, their front-ends and weights, the input geometry and training defaults.

Every scale uses the paper's tower families: a Swin-V2 visual tower, an HTS-AT audio tower,
and for LAVisH one Swin-V2 shared by both modalities that hears through LAVisH's Kaldi
fbank. `paper` is the Mettle paper's setting (Swin-V2-L at 192 px + HTS-AT); `tiny`, the
default, is the same families in miniature, pretrained by the project on synthetic data
and shipped (minutes on a laptop CPU); `smoke` is `tiny` untrained with a few samples
(tests, seconds). `base` keeps ViT-B/16 as a second family and `smoke_vit` is its
miniature. Memory and time depend on the architecture, not on the weight values, so
`bench profile` runs any preset with random weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from bench.data.core import DataShape
from mettle_core.interface import Registry


@dataclass(frozen=True)
class FrontendSpec:
    """How a tower hears: `kind` names the front-end of bench.frontends, `params` its arguments
    (it receives the preset's waveform rate and resamples to its own)."""

    kind: Literal["logmel", "fbank"]
    params: dict[str, Any]


@dataclass(frozen=True)
class TowerSpec:
    """An architecture (`htsat`, or a timm model name) with the arguments that shape it, and
    the front-end through which it reads a waveform (None: it only sees frames)."""

    arch: str
    kwargs: dict[str, Any]
    audio: FrontendSpec | None = None


@dataclass(frozen=True)
class Preset:
    """`weights` gives each role's default setting (see bench.weights); a role missing from it
    must be set on the command line, as `weights_hint` says."""

    name: str
    description: str
    audio: TowerSpec
    visual: TowerSpec
    shared: TowerSpec  # LAVisH's one tower for both modalities
    shape: DataShape
    train: dict[str, Any]
    data: dict[str, Any]  # applied to every task config that has the field
    weights: dict[str, str] = field(default_factory=dict)
    weights_hint: dict[str, str] = field(default_factory=dict)


def htsat_logmel(sample_rate: int, window: int, hop: int, mel_bins: int, fmax: float) -> FrontendSpec:
    """HTS-AT's torchlibrosa log-mel (fmin 50 Hz)."""
    params = dict(sample_rate=sample_rate, window=window, hop=hop, mel_bins=mel_bins, fmin=50.0, fmax=fmax)
    return FrontendSpec("logmel", params)


def lavish_fbank(rate: int, mel_bins: int, shift_ms: float, frames: int, mean: float, std: float) -> FrontendSpec:
    """LAVisH's Kaldi fbank, normalised as its AVE loader does and cut or padded to `frames`."""
    params = dict(sample_rate=rate, mel_bins=mel_bins, frame_shift_ms=shift_ms, frames=frames, mean=mean, std=std)
    return FrontendSpec("fbank", params)


# The tiny families: a 4-stage Swin-V2 of widths 16-128 on 32 px frames (4 px patches: grids of
# 8, 4, 2 and 1, windows of 4 clamped to the grid as in Swin-V2-L's last stage, a long third
# stage as Swin-V2-L's), and an HTS-AT of the same widths reading a 32-bin log-mel of 8 kHz
# audio folded into 64 x 64 (8 px patches, the same grids). SpecAugment widths are HTS-AT's
# scaled to a one-second, 32-bin log-mel. timm >= 1.0.31 runs a 1 x 1 Swin-V2 stage (1.0.29
# gave NaN there).
TINY_SWIN = dict(img_size=32, patch_size=4, in_chans=3, embed_dim=16, depths=(1, 1, 3, 1), num_heads=(1, 2, 4, 8),
                 window_size=4)  # fmt: skip
TINY_HTSAT = dict(mel_bins=32, spec_size=64, patch_size=8, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
                  window_size=4, time_drop_width=6, freq_drop_width=4)  # fmt: skip
TINY_LOGMEL = htsat_logmel(8000, 256, 80, 32, 4000.0)
# 32 frames of 32 bins per second. Normalised by the fbank statistics of the synthetic sound
# corpus the towers are pretrained on (bench.pretrain, 4000 clips of seed 0), as LAVisH
# normalises by AVE's; tests/bench/test_presets.py recomputes them.
TINY_FBANK = lavish_fbank(8000, 32, 31.25, 32, mean=-2.316, std=2.829)
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
SWINV2_L = "swinv2_large_window12_192"
SWINV2_L_WEIGHTS = "timm:swinv2_large_window12_192.ms_in22k"
VIT_B = "vit_base_patch16_224"
VIT_B_WEIGHTS = "timm:vit_base_patch16_224.augreg_in21k"
VIT_FBANK = lavish_fbank(16000, 128, 10.0, 96, -4.1426, 3.2001)  # LAVisH's ViT setting, 96 of its 102 frames
SHIPPED = {"audio": "shipped", "visual": "shipped", "shared": "shipped"}
RANDOM = {"audio": "random", "visual": "random", "shared": "random"}

PRESETS: Registry[Preset] = Registry("preset")


def _register(*presets: Preset) -> None:
    for preset in presets:
        PRESETS.add(preset.name, preset)


_register(
    Preset(
        "smoke",
        "tests, seconds: the tiny Swin-V2 / HTS-AT architectures, untrained, on a few samples",
        audio=TowerSpec("htsat", TINY_HTSAT, TINY_LOGMEL),
        visual=TowerSpec("swinv2_tiny_window8_256", TINY_SWIN),
        shared=TowerSpec("swinv2_tiny_window8_256", TINY_SWIN, TINY_FBANK),
        shape=DataShape(image_size=32, sample_rate=8000),
        train=dict(epochs=1, batch_size=8),
        data=dict(num_train=16, num_val=8, num_test=8, segments=3),
        weights=RANDOM,
    ),
    Preset(
        "smoke_vit",
        "tests, seconds: 2-block ViTs (width 32) hearing through a Kaldi fbank, untrained",
        audio=TowerSpec("vit_tiny_patch16_224", dict(TINY_VIT, in_chans=1), TINY_FBANK),
        visual=TowerSpec("vit_tiny_patch16_224", dict(TINY_VIT, in_chans=3)),
        shared=TowerSpec("vit_tiny_patch16_224", dict(TINY_VIT, in_chans=3), TINY_FBANK),
        shape=DataShape(image_size=32, sample_rate=8000),
        train=dict(epochs=1, batch_size=8),
        data=dict(num_train=16, num_val=8, num_test=8, segments=3),
        weights=RANDOM,
    ),
    Preset(
        "tiny",
        "laptop CPU default: a Swin-V2 and an HTS-AT in miniature (widths 16-128), project-pretrained; "
        "32 px frames, 8 kHz audio, 5 segments per AVE / AVVP video so that the default command takes minutes",
        audio=TowerSpec("htsat", TINY_HTSAT, TINY_LOGMEL),
        visual=TowerSpec("swinv2_tiny_window8_256", TINY_SWIN),
        shared=TowerSpec("swinv2_tiny_window8_256", TINY_SWIN, TINY_FBANK),
        shape=DataShape(image_size=32, sample_rate=8000),
        train=dict(epochs=5, batch_size=16),
        data=dict(num_train=400, num_val=100, num_test=200, segments=5),
        weights=SHIPPED,
    ),
    Preset(
        "base",
        "ViT-B/16 towers (ImageNet-21k): 224 px frames, audio as LAVisH's ViT fbank (16 kHz, 128 bins, 96 frames)",
        audio=TowerSpec(VIT_B, dict(in_chans=1, img_size=(96, 128)), VIT_FBANK),
        visual=TowerSpec(VIT_B, dict(in_chans=3, img_size=224)),
        shared=TowerSpec(VIT_B, dict(in_chans=3, img_size=224), VIT_FBANK),
        shape=DataShape(image_size=224, sample_rate=16000),
        train=dict(epochs=10, batch_size=2),
        data=dict(),
        weights={"audio": VIT_B_WEIGHTS, "visual": VIT_B_WEIGHTS, "shared": VIT_B_WEIGHTS},
    ),
    Preset(
        "paper",
        "the Mettle paper's towers: Swin-V2-L (ImageNet-22k, 192 px) + HTS-AT (AudioSet, 32 kHz); "
        "LAVisH shares the Swin-V2-L, hearing through its 192 x 192 Kaldi fbank",
        audio=TowerSpec("htsat", {}, htsat_logmel(32000, 1024, 320, 64, 14000.0)),
        visual=TowerSpec(SWINV2_L, dict(in_chans=3, img_size=192)),
        shared=TowerSpec(
            SWINV2_L,
            dict(in_chans=3, img_size=192),
            lavish_fbank(16000, 192, 5.2, 192, -4.984795570373535, 3.7079780101776123),
        ),
        shape=DataShape(image_size=192, sample_rate=32000),
        train=dict(epochs=10, batch_size=1),
        data=dict(),
        weights={"visual": SWINV2_L_WEIGHTS, "shared": SWINV2_L_WEIGHTS},
        weights_hint={"audio": "HTS-AT's AudioSet checkpoint, HTSAT_AudioSet_Saved_1.ckpt from the HTS-AT release"},
    ),
)


def get_preset(name: str) -> Preset:
    return PRESETS.get(name)
