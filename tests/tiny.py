"""Tiny random-weight timm towers shared by every test module (seconds on a CPU)."""

from __future__ import annotations

from collections.abc import Callable

import timm
import torch

from mettle_core.backbone import Backbone
from mettle_core.interface import AdaptedEncoder


def tiny_vit(in_chans: int = 3, depth: int = 2) -> Backbone:
    """ViT of width 32 on 16x16 inputs (4x4 patches of 4 pixels)."""
    return Backbone(
        timm.create_model(
            "vit_tiny_patch16_224",
            embed_dim=32,
            depth=depth,
            num_heads=2,
            patch_size=4,
            img_size=16,
            num_classes=0,
            in_chans=in_chans,
        )
    )


def tiny_swin(in_chans: int = 3) -> Backbone:
    """Swin-V2 with stages of widths 16/32/64/128 (depths 1-1-2-1) on 64x64 inputs: the last
    stage is 2x2 (timm before 1.0.31 gives NaN on a 1x1 stage)."""
    return Backbone(
        timm.create_model(
            "swinv2_tiny_window8_256",
            embed_dim=16,
            depths=(1, 1, 2, 1),
            num_heads=(1, 2, 2, 4),
            window_size=4,
            img_size=64,
            num_classes=0,
            in_chans=in_chans,
        )
    )


def assert_state_dict_round_trip(
    build: Callable[[int], AdaptedEncoder], audio: torch.Tensor, visual: torch.Tensor
) -> None:
    """An encoder built from other random towers (`build(seed)`) reproduces the first one's
    features and maps exactly once it loads the first one's state dict. The method's own
    weights (gates included) are moved off their init first, so the check can fail."""
    first, second = build(0), build(1)
    with torch.no_grad():
        for p in first.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    second.load_state_dict(first.state_dict())
    first.eval()
    second.eval()
    with torch.no_grad():
        x, y = first(audio, visual), second(audio, visual)
    assert torch.equal(x.a, y.a) and torch.equal(x.v, y.v)
    assert (x.maps is None) == (y.maps is None)
    for mx, my in zip(x.maps or [], y.maps or [], strict=True):
        assert torch.equal(mx, my)
