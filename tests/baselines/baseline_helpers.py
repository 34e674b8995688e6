"""Tiny random-weight towers (ViT and Swin-V2), inputs and checks shared by the baseline tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tiny import assert_state_dict_round_trip as shared_round_trip
from tiny import tiny_swin, tiny_vit
from torch import nn

from mettle_core.backbone import Backbone
from mettle_core.interface import AdaptedEncoder, TaskSpec, Towers

FAMILIES = ("vit", "swinv2")
CLS = TaskSpec("ave", num_segments=2)
SEG = TaskSpec("avs_s4", num_segments=2, needs_maps=True, kind="segmentation")


def tiny_model(family: str) -> nn.Module:
    return (tiny_vit() if family == "vit" else tiny_swin()).model


def tiny_towers(family: str, seed: int = 0) -> Towers:
    """Three independent towers of one family (separate audio / visual, and a shared one).

    timm zero-initialises Swin-V2's post-norm weights, which makes every random block an
    identity with zero weight gradients; they are set near 1, as in a trained tower, so
    that the blocks matter to the tests."""
    torch.manual_seed(seed)
    models = [tiny_model(family) for _ in range(3)]
    with torch.no_grad():
        for m in models:
            for name, mod in m.named_modules():
                if name.endswith(("norm1", "norm2")) and family == "swinv2":
                    mod.weight.copy_(1 + 0.1 * torch.randn_like(mod.weight))
    return Towers(*(Backbone(m) for m in models))


def av_batch(seed: int = 1, b: int = 2, t: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """audio [B, T, 1, F, W] log-mel of a size no tower uses (prepare resizes); visual [B, T, 3, 20, 20]."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, 1, 12, 10, generator=g), torch.randn(b, t, 3, 20, 20, generator=g)


def probe_loss(enc: AdaptedEncoder, audio: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """A loss with non-trivial gradients: random projections (a plain sum of LayerNorm
    outputs would have a zero gradient)."""
    out = enc(audio, visual)
    g = torch.Generator().manual_seed(7)
    loss = (out.a * torch.randn(out.a.shape, generator=g)).sum() + (out.v * torch.randn(out.v.shape, generator=g)).sum()
    for m in out.maps or []:
        loss = loss + (m * torch.randn(m.shape, generator=g)).sum()
    return loss


def assert_state_dict_round_trip(build: Callable[[Towers], AdaptedEncoder], family: str) -> None:
    """The shared round-trip check on two sets of tiny towers of `family`."""
    shared_round_trip(lambda seed: build(tiny_towers(family, seed=seed)), *av_batch())


def logit_only_params(enc: nn.Module) -> set[str]:
    """Parameters with an exactly zero gradient by construction: in a Swin-V2 block whose
    window holds one token (the tiny tower's last 1x1 stage) the softmax over one key is
    constant, so what only shapes the attention logits cannot learn."""
    names = set()
    for name, mod in enc.named_modules():
        if type(mod).__name__ == "SwinTransformerV2Block" and mod.window_area == 1:
            for pn, _ in mod.attn.named_parameters():
                if pn.startswith(("logit_scale", "q_bias", "cpb_mlp")):
                    names.add(f"{name}.attn.{pn}")
    return names
