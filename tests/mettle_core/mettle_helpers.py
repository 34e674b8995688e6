"""Tiny random-weight towers, inputs and a saved-for-backward byte counter for the Mettle tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tiny import tiny_swin, tiny_vit
from torch import nn

from mettle_core.backbone import Backbone
from mettle_core.interface import AdaptedEncoder, TaskSpec

CLS = TaskSpec("ave", num_segments=2)
SEG = TaskSpec("avs_s4", num_segments=2, needs_maps=True, kind="segmentation")


def vit(in_chans: int, depth: int = 3) -> Backbone:
    return tiny_vit(in_chans, depth)


def swin(in_chans: int) -> Backbone:
    return tiny_swin(in_chans)


def towers(family: str, seed: int = 0) -> tuple[Backbone, Backbone]:
    """(audio, visual) towers of one family: 1-channel audio, 3-channel visual."""
    torch.manual_seed(seed)
    make = vit if family == "vit" else swin
    return make(1), make(3)


def av_batch(b: int = 2, t: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """audio [B, T, 1, 16, 16], visual [B, T, 3, 32, 32] (the ViT visual tower resizes)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, 1, 16, 16, generator=g), torch.randn(b, t, 3, 32, 32, generator=g)


def probe_loss(enc: AdaptedEncoder, audio: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """Random projections of every output: a plain sum of LayerNorm outputs has zero gradient."""
    out = enc(audio, visual)
    g = torch.Generator().manual_seed(7)
    loss = sum((t * torch.randn(t.shape, generator=g)).sum() for t in [out.a, out.v, *(out.maps or [])])
    assert isinstance(loss, torch.Tensor)
    return loss


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
