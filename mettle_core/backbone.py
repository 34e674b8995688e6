"""Uniform per-block access to the towers (ViT, Swin-V2 and HTS-AT families).

Every method needs to run a frozen tower block by block: Mettle reads each block's
output, LAVisH injects adapters inside blocks, the plain baselines pool the last
one. This module hides the three layouts behind one list of `Unit`s:

- ViT (timm): patch_embed -> _pos_embed -> norm_pre -> blocks -> norm; tokens [N, L, D]
  with `num_prefix_tokens` leading class/register tokens.
- Swin-V2 (timm 1.x): patch_embed -> stages (each runs `downsample` first, then its
  post-norm blocks) -> norm; tokens are NHWC [N, H, W, C].
- HTS-AT (mettle_core.htsat): bn0 + fold + patch_embed -> stages (pre-norm blocks, then
  `downsample` at the end, as Swin-V1) -> norm; tokens NHWC. A stage's downsample thus
  runs before the first block of the next stage, which is where its `Unit` puts it.

A tower that hears owns its audio front-end (waveform -> the image-like features its
pretraining saw); `prepare` applies it, so methods hand every tower raw inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Modality = Literal["audio", "visual"]


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
    families = {"VisionTransformer": "vit", "SwinTransformerV2": "swinv2", "HTSAT": "htsat"}
    if name not in families:
        raise ValueError(f"unsupported tower class {name!r} (supported: {', '.join(families)})")
    return families[name]


def _stage_units(stages: nn.ModuleList, downsample_first: bool) -> list[Unit]:
    """Units of a hierarchical tower, each stage's downsample attached to the block that follows it."""
    units: list[Unit] = []
    carried: nn.Module | None = None
    for s, stage in enumerate(stages):
        down = stage.downsample if downsample_first else carried
        down = None if down is None or isinstance(down, nn.Identity) else down
        for j, blk in enumerate(stage.blocks):
            units.append(Unit(len(units), s, blk, down if j == 0 else None, blk.norm1.normalized_shape[0]))
        carried = None if downsample_first else stage.downsample
    return units


class Backbone(nn.Module):
    """A tower with per-block access. Owns the model as `model` and, when it hears, its
    audio front-end as `audio_frontend` (waveform [N, S] -> features [N, 1, H, W])."""

    def __init__(self, model: nn.Module, audio_frontend: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.audio_frontend = audio_frontend
        self.family = _family(model)
        self.in_chans: int = model.patch_embed.proj.in_channels
        self.img_size: tuple[int, int] = tuple(model.patch_embed.img_size)  # type: ignore[assignment]
        if self.family == "vit":
            units = [Unit(i, 0, blk, None, model.embed_dim) for i, blk in enumerate(model.blocks)]
        else:
            units = _stage_units(model.layers, downsample_first=self.family == "swinv2")
        self.units: tuple[Unit, ...] = tuple(units)
        last: dict[int, int] = {}
        for u in units:
            last[u.stage] = u.dim
        self.stage_dims: tuple[int, ...] = tuple(last[s] for s in sorted(last))
        self.out_dim: int = self.stage_dims[-1]
        # the tower proper (front-ends hold constants only), counted before any method adds its own
        self.tower_params: int = sum(p.numel() for p in model.parameters())

    @property
    def depth(self) -> int:
        return len(self.units)

    @property
    def num_prefix_tokens(self) -> int:
        return int(getattr(self.model, "num_prefix_tokens", 0))

    def prepare(self, x: torch.Tensor, modality: Modality) -> torch.Tensor:
        """Raw input -> what `embed` eats. Audio: a waveform [N, S] through this tower's
        front-end (an error if the tower does not hear). Then an image-like input is fit to
        a timm tower: a 1-channel input repeated to 3 channels (LAVisH feeds a spectrogram
        to a visual tower that way) and resized bicubically when the tower needs a fixed
        size. HTS-AT folds its log-mel itself, in `embed`."""
        if modality == "audio":
            if self.audio_frontend is None:
                raise ValueError(f"this {self.family} tower has no audio front-end: it cannot read a waveform")
            x = self.audio_frontend(x)
        if self.family == "htsat":
            return x
        if x.shape[1] != self.in_chans:
            if x.shape[1] == 1:
                x = x.expand(-1, self.in_chans, -1, -1)
            else:
                raise ValueError(f"input has {x.shape[1]} channels, tower expects {self.in_chans}")
        if tuple(x.shape[-2:]) != self.img_size and not getattr(self.model, "dynamic_img_size", False):
            x = F.interpolate(x, size=self.img_size, mode="bicubic", align_corners=False)
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Prepared input -> tokens entering the first unit."""
        m = self.model
        if self.family == "vit":
            x = m.patch_embed(x)
            x = m._pos_embed(x)
            x = m.patch_drop(x)
            return m.norm_pre(x)
        if self.family == "htsat":
            return m.embed(x)
        return m.patch_embed(x)

    def unit_tokens(self, unit: Unit) -> int:
        """Tokens the unit's block sees: its own grid, which timm 1.x Swin-V2 and HTS-AT blocks
        keep as `input_resolution` (a timm 1.x Swin-V2 STAGE's `input_resolution` is the grid
        before its downsample, twice the blocks' side), or a ViT's patches plus prefix tokens."""
        if self.family == "vit":
            h, w = self.model.patch_embed.grid_size
            return h * w + self.num_prefix_tokens
        h, w = unit.block.input_resolution
        return h * w

    def attn_branch(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """What `block` adds to its input x through attention (drop path included), for methods
        that add an adapter beside it: pre-norm on a ViT, post-norm on a Swin-V2 (NHWC)."""
        if self.family == "vit":
            return block.drop_path1(block.ls1(block.attn(block.norm1(x))))
        if self.family == "swinv2":
            return block.drop_path1(block.norm1(block._attn(x)))
        raise ValueError(f"a {self.family} block does not expose its attention and MLP branches")

    def mlp_branch(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """What `block` adds to its input x through its MLP (the Linear layers act on the last
        axis, so tokens may be NHWC or flattened)."""
        if self.family == "vit":
            return block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
        if self.family == "swinv2":
            return block.drop_path2(block.norm2(block.mlp(x)))
        raise ValueError(f"a {self.family} block does not expose its attention and MLP branches")

    def run_unit(self, unit: Unit, x: torch.Tensor) -> torch.Tensor:
        if unit.downsample is not None:
            x = unit.downsample(x)
        return unit.block(x)

    def forward_units(
        self, x: torch.Tensor, keep: set[int] | None = None
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run embed + all units on a prepared input; return the last tokens and the
        outputs of the units whose index is in `keep` (all when None)."""
        x = self.embed(x)
        kept: dict[int, torch.Tensor] = {}
        for unit in self.units:
            x = self.run_unit(unit, x)
            if keep is None or unit.index in keep:
                kept[unit.index] = x
        return x, kept

    def features(self, x: torch.Tensor, modality: Modality) -> torch.Tensor:
        """Raw input -> [N, D] pooled embedding: the whole tower, as its pretraining read it."""
        return self.pool(self.forward_units(self.prepare(x, modality), keep=set())[0])

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.norm(x)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Unit output -> [N, L, D] token sequence (NHWC flattened)."""
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
        """Last unit output -> [N, D] embedding the way the tower itself pools: final norm,
        then the mean over tokens (Swin-V2, HTS-AT) or the class token (a ViT that has one)."""
        x = self.final_norm(x)
        if x.ndim == 4:
            return x.mean(dim=(1, 2))
        if self.num_prefix_tokens > 0:
            return x[:, 0]
        return x.mean(dim=1)

    def pyramid_units(self) -> tuple[int, ...]:
        """Indices of the four units whose outputs form the multi-scale visual maps:
        the last block of each stage, or four evenly spaced ViT blocks."""
        if self.family == "vit":
            d = self.depth
            idx = [max(0, (d * k) // 4 - 1) for k in (1, 2, 3, 4)]
        else:
            last: dict[int, int] = {}
            for u in self.units:
                last[u.stage] = u.index
            idx = [last[s] for s in sorted(last)]
        if len(idx) != 4:
            raise ValueError(f"need 4 pyramid levels, tower gives {len(idx)}")
        return tuple(idx)

    def pyramid_channels(self) -> tuple[int, ...]:
        return tuple(self.units[i].dim for i in self.pyramid_units())
