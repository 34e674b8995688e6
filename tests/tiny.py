"""Tiny random-weight timm towers shared by every test module (seconds on a CPU)."""

from __future__ import annotations

import timm

from mettle_core.backbone import Backbone


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
    """Swin-V2 with stages of widths 16/32/64/128 (depths 1-1-2-1) on 32x32 inputs."""
    return Backbone(
        timm.create_model(
            "swinv2_tiny_window8_256",
            embed_dim=16,
            depths=(1, 1, 2, 1),
            num_heads=(1, 2, 2, 4),
            window_size=4,
            img_size=32,
            num_classes=0,
            in_chans=in_chans,
        )
    )
