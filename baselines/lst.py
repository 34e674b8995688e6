"""Ladder Side-Tuning (Sung et al., NeurIPS 2022; ylsung/Ladder-Side-Tuning): a side network beside
each frozen tower, so that no gradient goes through the towers.

The memory-efficient control for Mettle: like Mettle it never backpropagates through a tower, but it
adapts through a small trainable network instead of meta-tokens. As in the official T5/BART code
(`T5Stack` of seq2seq/third_party/models/t5/modeling_side_t5.py):

- A side network of width d = D / r (r = 8 in the official scripts) runs beside the tower; its
  blocks are the tower's blocks with every width (model, heads' widths, MLP hidden) divided by r.
- The side stream starts as a down-projection (Linear D -> d, with bias) of the tokens entering
  the first block. At every block, the tower's output h_l is down-projected and mixed in by a
  learned gate, g = sigmoid(alpha_l / T) with alpha_l starting at 0 and T = 0.1 (the official
  `gate_alpha` and `gate_T`): side = g * side + (1 - g) * down_l(h_l); then the side block runs.
  The mix is computed as down + g * (side - down), the same number with one tensor kept for
  backward instead of two.
- The side stream's last tokens go through a LayerNorm and an up-projection d -> D (the official
  `final_side_layer_norm` and `side_final_upsample`); the head reads only that.
- The towers run under no_grad, block by block, interleaved with the side network.

Adapted to hierarchical towers (Swin-V2, HTS-AT), which the paper did not have:
- Each block's side width is its stage's D_s / r; heads are the tower block's, reduced to the
  greatest common divisor with d where they do not divide it.
- At a stage change the side stream is downsampled as the tower is: timm's Swin-V2 patch merging
  (2 x 2 neighbours concatenated, Linear 4 d -> d', LayerNorm) at the side widths. That is the
  side copy of the tower's own downsample, pruned like every other side part; at width D / r it
  costs 4 d d' + 2 d' parameters and keeps about 1.5 side streams of one layer for backward, so a
  pooling + Linear (which would drop the 2 x 2 arrangement the tower keeps) saves nothing worth it.
- Side blocks are timm's pre-norm ViT block (global attention over the stage's token grid, MLP of
  the tower's ratio) rather than windowed Swin blocks at width D / r: a Swin-V2 block's
  continuous position-bias MLP (2 -> 512 -> heads) alone outweighs a side block on narrow stages,
  window partition and shift add copies to what backward keeps, and HTS-AT's blocks are another
  (V1) kind, whereas one block kind serves both towers. Fused attention keeps O(tokens) for
  backward (queries, keys, values, output, log-sum-exp) and its O(tokens^2 d) compute is small at
  width D / r, even on HTS-AT's 64 x 64 first grid. Positions reach the side stream through the
  ladders: every side block reads the tower's position-aware tokens.
- AVFeatures: a, v per segment = the final side tokens, normed, pooled as the tower pools (mean
  over tokens, or a ViT's class token) and up-projected to the tower's top width (the mean commutes
  with the Linear map, so pooling first is the same number, cheaper). Segmentation maps: the side
  stream at each of the visual tower's pyramid units, up-projected to that level's width by its own
  Linear map, so that the task head is the same as every other method's.

Left out: the official initialisation of the side blocks from the backbone's weights pruned by
Fisher information (the side block kind differs from the towers', so pruned weights do not carry
over; the side network starts at PyTorch's default initialisation), and dropout.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from timm.models.swin_transformer_v2 import PatchMerging
from timm.models.vision_transformer import Block
from torch import nn

from mettle_core.backbone import Backbone, Modality, Unit
from mettle_core.interface import (
    AdaptedEncoder,
    AVFeatures,
    MethodEntry,
    TaskSpec,
    Towers,
    unique_parameters,
    validate_config,
)

# Token widths a side block keeps for backward, per token, besides its MLP hidden ones: the input
# of each LayerNorm (2), the input of the qkv Linear (1), q, k, v (3), the attention output (1,
# which the output projection reads as it is), the input of fc1 (1), and the ladder's mix (1).
BLOCK_TOKEN_WIDTHS = 9
# Floats a side block keeps per token whatever its width: each LayerNorm's mean and 1/std (4),
# plus one log-sum-exp per head.
BLOCK_ROW_STATS = 4


@dataclass
class LstConfig:
    """r: the side network's width is D / r at every block (official scripts: 8; 4 was chosen on
    val, bench/plans/reference.toml).
    gate_init / gate_temperature: each ladder's gate is sigmoid(alpha / T), alpha starting at
    gate_init (official `gate_alpha` 0: an even mix) and T the official `gate_T` 0.1."""

    r: int = 4
    gate_init: float = 0.0
    gate_temperature: float = 0.1

    def __post_init__(self) -> None:
        validate_config(self)
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1:
            raise ValueError(f"LstConfig.r={self.r!r} must be an integer >= 1")
        if not isinstance(self.gate_init, int | float) or isinstance(self.gate_init, bool):
            raise ValueError(f"LstConfig.gate_init={self.gate_init!r} must be a number")
        temperature = self.gate_temperature
        if not isinstance(temperature, int | float) or isinstance(temperature, bool) or not temperature > 0:
            raise ValueError(f"LstConfig.gate_temperature={self.gate_temperature!r} must be a number > 0")


def side_width(unit: Unit, r: int) -> int:
    width = unit.dim // r
    if width < 1:
        raise ValueError(f"LstConfig.r={r}: block {unit.index} of width {unit.dim} leaves a side width of 0")
    return width


def side_heads(unit: Unit, r: int) -> int:
    """The tower block's heads, reduced to a divisor of the side width where they are not one."""
    return math.gcd(unit.block.attn.num_heads, side_width(unit, r))


def mlp_ratio(unit: Unit) -> float:
    return unit.block.mlp.fc1.out_features / unit.dim


class SideNetwork(nn.Module):
    """The side network and ladders of one tower (layout of its tokens: NHWC or [N, L, D], as the
    tower keeps them). `map_units`: units whose side stream also leaves as a map (segmentation)."""

    PARTS = {  # attribute -> the part of the parameter breakdown it counts in
        "first_down": "down_projections",
        "downs": "down_projections",
        "gates": "gates",
        "merges": "side_blocks",
        "blocks": "side_blocks",
        "norm": "up_projections",
        "up": "up_projections",
        "map_ups": "up_projections",
    }

    def __init__(self, bb: Backbone, cfg: LstConfig, map_units: Sequence[int] = ()) -> None:
        super().__init__()
        self.temperature = cfg.gate_temperature
        self.num_prefix_tokens = bb.num_prefix_tokens
        widths = [side_width(u, cfg.r) for u in bb.units]
        self.first_down = nn.Linear(bb.units[0].dim, widths[0])
        self.downs = nn.ModuleList(nn.Linear(u.dim, w) for u, w in zip(bb.units, widths, strict=True))
        self.gates = nn.Parameter(torch.full((len(widths),), float(cfg.gate_init)))
        self.merges = nn.ModuleList(
            nn.Identity() if u.downsample is None else PatchMerging(widths[u.index - 1], w)
            for u, w in zip(bb.units, widths, strict=True)
        )
        self.blocks = nn.ModuleList(
            Block(w, side_heads(u, cfg.r), mlp_ratio(u), qkv_bias=True) for u, w in zip(bb.units, widths, strict=True)
        )
        self.norm = nn.LayerNorm(widths[-1])
        self.up = nn.Linear(widths[-1], bb.out_dim)
        self.map_units = tuple(map_units)
        self.map_ups = nn.ModuleList(nn.Linear(widths[i], bb.units[i].dim) for i in self.map_units)

    def start(self, embedded: torch.Tensor) -> torch.Tensor:
        return self.first_down(embedded)

    def rung(self, index: int, side: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
        """One ladder step: the side stream (downsampled where the tower was) mixed with the
        down-projected output of frozen block `index`, then side block `index`."""
        side = self.merges[index](side)
        down = self.downs[index](frozen)
        gate = torch.sigmoid(self.gates[index] / self.temperature)
        mixed = down + gate * (side - down)  # gate * side + (1 - gate) * down
        return self.blocks[index](mixed.flatten(1, -2)).view(mixed.shape)

    def pooled(self, side: torch.Tensor) -> torch.Tensor:
        """Last side stream -> [N, D]: normed, pooled as the tower pools, up-projected."""
        tokens = self.norm(side).flatten(1, -2)
        return self.up(tokens[:, 0] if side.ndim == 3 and self.num_prefix_tokens else tokens.mean(1))


class LstEncoder(AdaptedEncoder):
    """Separate frozen audio and visual towers, each with its side network."""

    def __init__(self, audio_bb: Backbone, visual_bb: Backbone, spec: TaskSpec, cfg: LstConfig) -> None:
        super().__init__()
        self.audio_bb, self.visual_bb = audio_bb, visual_bb
        self.spec, self.cfg = spec, cfg
        for p in self.backbone_parameters():
            p.requires_grad_(False)
        self.map_units = visual_bb.pyramid_units() if spec.needs_maps else ()
        self.map_channels = visual_bb.pyramid_channels() if spec.needs_maps else ()
        self.side_a = SideNetwork(audio_bb, cfg)
        self.side_v = SideNetwork(visual_bb, cfg, self.map_units)
        self.audio_dim, self.visual_dim = audio_bb.out_dim, visual_bb.out_dim
        self.train(self.training)

    def train(self, mode: bool = True) -> LstEncoder:
        """Frozen towers stay in eval mode (no dropout, fixed norms) whatever the mode."""
        super().train(mode)
        self.audio_bb.eval()
        self.visual_bb.eval()
        return self

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return unique_parameters(self.audio_bb, self.visual_bb)

    def param_breakdown(self) -> dict[str, int]:
        parts = dict.fromkeys(SideNetwork.PARTS.values(), 0)
        for side in (self.side_a, self.side_v):
            for name, p in side.named_parameters():
                parts[SideNetwork.PARTS[name.split(".")[0]]] += p.numel()
        return parts

    def _ladder(
        self, bb: Backbone, side_net: SideNetwork, inputs: torch.Tensor, modality: Modality
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """[N, ...] raw inputs -> ([N, D] pooled side output, side maps [N, D_k, H_k, W_k]). Each
        frozen block runs under no_grad; the side network reads its output right after."""
        with torch.no_grad():
            frozen = bb.embed(bb.prepare(inputs, modality))
        side = side_net.start(frozen)
        at: dict[int, torch.Tensor] = {}
        for unit in bb.units:
            with torch.no_grad():
                frozen = bb.run_unit(unit, frozen)
            side = side_net.rung(unit.index, side, frozen)
            if unit.index in side_net.map_units:
                at[unit.index] = side
        maps = [bb.grid(up(at[i])) for up, i in zip(side_net.map_ups, side_net.map_units, strict=True)]
        return side_net.pooled(side), maps

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> AVFeatures:
        b, t = visual.shape[:2]
        a, _ = self._ladder(self.audio_bb, self.side_a, audio.flatten(0, 1), "audio")
        v, maps = self._ladder(self.visual_bb, self.side_v, visual.flatten(0, 1), "visual")
        return AVFeatures(a=a.reshape(b, t, -1), v=v.reshape(b, t, -1), maps=maps if self.spec.needs_maps else None)

    def memory_floor_bytes(self, audio: torch.Tensor, visual: torch.Tensor) -> int:
        """What a training step keeps for backward by design, for N = B * T frames: the frozen
        features the ladders read (the input of each down-projection: the tokens entering the
        first block and every block's output, each kept once) and the side network's activations
        (`side_floats`)."""
        frames = visual.shape[0] * visual.shape[1]
        itemsize = self.side_v.up.weight.element_size()
        floats = sum(
            frozen_floats(bb) + side_floats(bb, self.cfg.r, maps)
            for bb, maps in ((self.audio_bb, ()), (self.visual_bb, self.map_units))
        )
        return frames * floats * itemsize


def frozen_floats(bb: Backbone) -> int:
    """Floats per frame of the frozen features one tower's ladders read: L_0 D_0 + sum_l L_l D_l."""
    first = bb.units[0]
    return bb.unit_tokens(first) * first.dim + sum(bb.unit_tokens(u) * u.dim for u in bb.units)


def side_floats(bb: Backbone, r: int, map_units: Sequence[int] = ()) -> int:
    """Floats per frame that one tower's side network keeps for backward. Per block of L tokens,
    side width d, MLP hidden m and h heads: (9 d + 2 m + 4 + h) L (BLOCK_TOKEN_WIDTHS,
    BLOCK_ROW_STATS); per patch merging into L tokens from width d to d': the merged input 4 d L
    and the norm's input and statistics (d' + 2) L; the final LayerNorm's input and statistics
    (d + 2) L and the pooled d; each map level other than the last block: its side stream, L d."""
    total = 0
    for u in bb.units:
        d, tokens = side_width(u, r), bb.unit_tokens(u)
        hidden = int(d * mlp_ratio(u))
        total += (BLOCK_TOKEN_WIDTHS * d + 2 * hidden + BLOCK_ROW_STATS + side_heads(u, r)) * tokens
        if u.downsample is not None:
            total += (4 * side_width(bb.units[u.index - 1], r) + d + 2) * tokens
    last = bb.units[-1]
    d = side_width(last, r)
    total += (d + 2) * bb.unit_tokens(last) + d
    for i in set(map_units) - {last.index}:
        total += side_width(bb.units[i], r) * bb.unit_tokens(bb.units[i])
    return total


def build(towers: Towers, spec: TaskSpec, cfg: LstConfig) -> LstEncoder:
    return LstEncoder(towers.audio, towers.visual, spec, cfg)


METHOD = MethodEntry(
    "lst",
    LstConfig,
    build,
    "Ladder Side-Tuning (Sung et al., NeurIPS 2022): a side network of width D / r beside each frozen tower "
    "(towers under no_grad), fed at every block by a gated down-projection of the frozen output; the head reads "
    "its up-projected output.",
    towers=("audio", "visual"),
    train_defaults={"lr": 1e-3},  # chosen on val with r (bench/plans/reference.toml)
)
