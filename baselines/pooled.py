"""Pooled separate towers: the encoder shared by the frozen, full and LoRA baselines.

Each modality runs through its own tower end to end; the final tokens are pooled per
segment. The methods differ only in which tower weights train, so they share this code.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from mettle_core.backbone import Backbone, Modality
from mettle_core.interface import AdaptedEncoder, AVFeatures, TaskSpec, unique_parameters


def run_tower(
    bb: Backbone, x: torch.Tensor, modality: Modality, keep: set[int]
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """[B, T, ...] raw segments -> ([B, T, D] pooled per segment, kept unit outputs on B*T segments)."""
    b, t = x.shape[:2]
    last, kept = bb.forward_units(bb.prepare(x.flatten(0, 1), modality), keep=keep)
    return bb.pool(last).reshape(b, t, -1), kept


class PooledTowersEncoder(AdaptedEncoder):
    """Audio tower and visual tower run separately; outputs are their pooled final tokens.

    `trainable=False` runs both towers under no_grad and keeps them in eval mode (the
    `frozen` floor); otherwise gradients flow through them and whichever tower
    parameters have requires_grad set (all for `full`, LoRA's for `lora`) train.
    """

    def __init__(self, audio_bb: Backbone, visual_bb: Backbone, spec: TaskSpec, trainable: bool) -> None:
        super().__init__()
        self.audio_bb = audio_bb
        self.visual_bb = visual_bb
        self.spec = spec
        self.trainable = trainable
        self.audio_dim = audio_bb.out_dim
        self.visual_dim = visual_bb.out_dim
        self.map_channels = visual_bb.pyramid_channels() if spec.needs_maps else ()
        self._map_units = visual_bb.pyramid_units() if spec.needs_maps else ()
        if not trainable:
            for p in self.backbone_parameters():
                p.requires_grad_(False)
            self.train(self.training)

    def train(self, mode: bool = True) -> PooledTowersEncoder:
        """Frozen towers stay in eval mode so that their features never change."""
        super().train(mode)
        if not self.trainable:
            self.audio_bb.eval()
            self.visual_bb.eval()
        return self

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return unique_parameters(self.audio_bb, self.visual_bb)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> AVFeatures:
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            a, _ = run_tower(self.audio_bb, audio, "audio", set())
            v, kept = run_tower(self.visual_bb, visual, "visual", set(self._map_units))
            maps = [self.visual_bb.grid(kept[i]) for i in self._map_units] if self.spec.needs_maps else None
        return AVFeatures(a=a, v=v, maps=maps)
