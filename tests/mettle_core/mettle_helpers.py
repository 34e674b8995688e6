"""Tiny random-weight towers, inputs and a saved-for-backward byte counter for the Mettle tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from tiny import av_batch as preset_batch
from tiny import probe_loss, tower
from torch import nn

from bench.presets import get_preset
from bench.towers import build_backbone
from mettle_core.backbone import Backbone
from mettle_core.interface import TaskSpec

__all__ = ["CLS", "SEG", "av_batch", "probe_loss", "saved_bytes", "towers", "vit"]
CLS = TaskSpec("ave", num_segments=2)
SEG = TaskSpec("avs_s4", num_segments=2, needs_maps=True, kind="segmentation")
PRESETS = {"vit": "smoke_vit", "swinv2": "smoke"}  # visual tower family -> test preset


def vit(in_chans: int, depth: int = 3) -> Backbone:
    """A `smoke_vit` ViT of `depth` blocks (width 32, 16 patches and a class token on 32 px);
    the 1-channel one is the audio tower, hearing through its fbank."""
    preset = get_preset("smoke_vit")
    spec = preset.audio if in_chans == 1 else preset.visual
    return build_backbone(dataclasses.replace(spec, kwargs={**spec.kwargs, "depth": depth}), preset.shape)


def towers(family: str, seed: int = 0) -> tuple[Backbone, Backbone]:
    """(audio, visual) towers of one family: ViTs of depth 3, or the smoke HTS-AT and Swin-V2."""
    torch.manual_seed(seed)
    if family == "vit":
        return vit(1), vit(3)
    return tower("smoke", "audio", seed), tower("smoke", "visual", seed + 1)


def av_batch(b: int = 2, t: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveforms [B, T, 8000] and frames [B, T, 3, 28, 28] (both test presets hear 8 kHz)."""
    return preset_batch("smoke", b, t, seed)


def saved_bytes(model: nn.Module, step: Callable[[], object]) -> int:
    """Bytes autograd saves for backward while `step()` runs its forward, de-duplicated by
    storage, the model's parameters and buffers excluded (the harness's activation_bytes)."""
    excluded = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in excluded:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())
