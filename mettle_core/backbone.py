"""Uniform per-block access to timm towers (ViT and Swin-V2 families).

Every method needs to run a frozen tower block by block: Mettle reads each block's
output, LAVisH injects adapters inside blocks, the plain baselines pool the last
one. This module hides the two timm layouts behind one list of `Unit`s:

- ViT: patch_embed -> _pos_embed -> norm_pre -> blocks -> norm; tokens [N, L, D]
  with `num_prefix_tokens` leading class/register tokens.
- Swin-V2 (timm 1.x): patch_embed -> stages (each runs `downsample` first, then its
  post-norm blocks) -> norm; tokens are NHWC [N, H, W, C].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Unit:
    """One transformer block plus what must run right before it."""

    index: int
    stage: int
    block: nn.Module
    downsample: nn.Module | None
    dim: int


def _family(model: nn.Module) -> str:
    name = type(model).__name__
    if name == "VisionTransformer":
        return "vit"
    if name == "SwinTransformerV2":
        return "swinv2"
    raise ValueError(f"unsupported tower class {name!r} (supported: VisionTransformer, SwinTransformerV2)")


class Backbone(nn.Module):
    """A timm tower with per-block access. Owns the timm model as `model`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.family = _family(model)
        self.in_chans: int = model.patch_embed.proj.in_channels
        self.img_size: tuple[int, int] = tuple(model.patch_embed.img_size)  # type: ignore[assignment]
        units: list[Unit] = []
        if self.family == "vit":
            for i, blk in enumerate(model.blocks):
                units.append(Unit(i, 0, blk, None, model.embed_dim))
            self.stage_dims: tuple[int, ...] = (model.embed_dim,)
        else:
            dims = []
            for s, stage in enumerate(model.layers):
                down = None if isinstance(stage.downsample, nn.Identity) else stage.downsample
                for j, blk in enumerate(stage.blocks):
                    units.append(Unit(len(units), s, blk, down if j == 0 else None, blk.norm1.normalized_shape[0]))
                dims.append(units[-1].dim)
            self.stage_dims = tuple(dims)
        self.units: tuple[Unit, ...] = tuple(units)
        self.out_dim: int = self.stage_dims[-1]

    @property
    def depth(self) -> int:
        return len(self.units)

    @property
    def num_prefix_tokens(self) -> int:
        return int(getattr(self.model, "num_prefix_tokens", 0))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Fit an image-like input [N, C, H, W] to this tower: repeat a 1-channel input
        to 3 channels (a log-mel on a visual tower, as LAVisH does) and resize it
        bicubically when the tower needs a fixed size."""
        if x.shape[1] != self.in_chans:
            if x.shape[1] == 1:
                x = x.expand(-1, self.in_chans, -1, -1)
            else:
                raise ValueError(f"input has {x.shape[1]} channels, tower expects {self.in_chans}")
        if tuple(x.shape[-2:]) != self.img_size and not self._dynamic_size():
            x = F.interpolate(x, size=self.img_size, mode="bicubic", align_corners=False)
        return x

    def _dynamic_size(self) -> bool:
        return bool(getattr(self.model, "dynamic_img_size", False))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image [N, C, H, W] -> tokens entering the first unit."""
        m = self.model
        if self.family == "vit":
            x = m.patch_embed(x)
            x = m._pos_embed(x)
            x = m.patch_drop(x)
            return m.norm_pre(x)
        return m.patch_embed(x)

    def run_unit(self, unit: Unit, x: torch.Tensor) -> torch.Tensor:
        if unit.downsample is not None:
            x = unit.downsample(x)
        return unit.block(x)

    def forward_units(
        self, x: torch.Tensor, keep: set[int] | None = None
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run embed + all units on a prepared image; return the last tokens and the
        outputs of the units whose index is in `keep` (all when None)."""
        x = self.embed(x)
        kept: dict[int, torch.Tensor] = {}
        for unit in self.units:
            x = self.run_unit(unit, x)
            if keep is None or unit.index in keep:
                kept[unit.index] = x
        return x, kept

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.norm(x)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Unit output -> [N, L, D] token sequence (Swin NHWC flattened)."""
        return x.flatten(1, 2) if x.ndim == 4 else x

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        """Unit output -> spatial map [N, D, h, w] (ViT prefix tokens dropped)."""
        if x.ndim == 4:
            return x.permute(0, 3, 1, 2)
        patches = x[:, self.num_prefix_tokens :]
        h, w = self.model.patch_embed.grid_size
        if h * w != patches.shape[1]:
            raise ValueError(f"{patches.shape[1]} patch tokens do not fit the {h}x{w} grid")
        return patches.transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Last unit output -> [N, D] embedding (final norm, then class token or mean)."""
        x = self.final_norm(x)
        if x.ndim == 4:
            return x.mean(dim=(1, 2))
        if self.num_prefix_tokens > 0:
            return x[:, 0]
        return x.mean(dim=1)

    def pyramid_units(self) -> tuple[int, ...]:
        """Indices of the four units whose outputs form the multi-scale visual maps:
        the last block of each Swin stage, or four evenly spaced ViT blocks."""
        if self.family == "swinv2":
            last: dict[int, int] = {}
            for u in self.units:
                last[u.stage] = u.index
            idx = [last[s] for s in sorted(last)]
        else:
            d = self.depth
            idx = [max(0, (d * k) // 4 - 1) for k in (1, 2, 3, 4)]
        if len(idx) != 4:
            raise ValueError(f"need 4 pyramid levels, tower gives {len(idx)}")
        return tuple(idx)

    def pyramid_channels(self) -> tuple[int, ...]:
        return tuple(self.units[i].dim for i in self.pyramid_units())
