"""The Mettle encoder: frozen towers under no_grad, LCD per kept layer, MTI for maps.

No gradient ever enters a tower: each tower runs once under no_grad and hands over the
outputs of the selected blocks; everything trainable reads those outputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import nn

from mettle_core.backbone import Backbone, Modality
from mettle_core.interface import AdaptedEncoder, AVFeatures, TaskSpec, validate_config
from mettle_core.lcd import LCD, Aggregate, LayerAggregate, Preserve, aggregate_param_count, lcd_param_count
from mettle_core.mti import MTI, mti_param_count

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class MettleConfig:
    """Mettle's switches; the paper's choices are the defaults where it states them.

    num_tokens: K meta-tokens per layer (not given in the abstract). 8 keeps K far below
      the token count of real towers (197 for ViT-B/16, 64 to 4096 per Swin-V2 stage at
      256 px), so LCD activations stay a small fraction of the kept features, while the
      pooled embedding still gets several distinct queries.
    layers: which blocks LCD reads in classification: every block, the last `last_n`,
      or every `every_k`-th counted back from the last (the last block is always read).
    preserve: parameter-free attention, or learned q/k/v projections of rank D/rank_ratio.
    adapt / bottleneck_ratio: the gated D -> D/r -> D adaptation branch.
    aggregate: how per-layer meta-tokens combine; `last` reads only the top selected block.
    feature_dtype: dtype of the kept frozen features (bf16 halves the memory floor).
    mti: Meta-Token Injection into the visual pyramid (segmentation only).
    """

    num_tokens: int = 8
    layers: Literal["all", "last_n", "every_k"] = "all"
    last_n: int = 4
    every_k: int = 2
    preserve: Preserve = "attention"
    rank_ratio: int = 8
    adapt: bool = True
    bottleneck_ratio: int = 8
    aggregate: Aggregate = "mean"
    feature_dtype: Literal["fp32", "bf16"] = "fp32"
    mti: bool = True

    def __post_init__(self) -> None:
        validate_config(self)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int) and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"MettleConfig.{f.name}={value!r} must be a positive integer")

    def lcd_kwargs(self) -> dict[str, object]:
        return {
            "num_tokens": self.num_tokens,
            "preserve": self.preserve,
            "rank_ratio": self.rank_ratio,
            "adapt": self.adapt,
            "bottleneck_ratio": self.bottleneck_ratio,
        }


def select_layers(depth: int, cfg: MettleConfig) -> tuple[int, ...]:
    """Unit indices LCD reads in classification; always ends with the last unit."""
    if cfg.layers == "last_n":
        idx = range(max(0, depth - cfg.last_n), depth)
    elif cfg.layers == "every_k":
        idx = reversed(range(depth - 1, -1, -cfg.every_k))
    else:
        idx = range(depth)
    chosen = tuple(idx)
    return chosen[-1:] if cfg.aggregate == "last" else chosen


class MettleEncoder(AdaptedEncoder):
    """Mettle over separate audio and visual towers.

    Classification: LCD on every selected block of each tower, aggregated over layers,
    pooled over the K meta-tokens -> a, v [B, T, D]. Segmentation (`spec.needs_maps`):
    LCD on the top block only; MTI adapts the visual pyramid with those meta-tokens.
    """

    def __init__(self, audio_bb: Backbone, visual_bb: Backbone, spec: TaskSpec, cfg: MettleConfig) -> None:
        super().__init__()
        self.audio_bb = audio_bb
        self.visual_bb = visual_bb
        self.spec = spec
        self.cfg = cfg
        self.feature_dtype = _DTYPES[cfg.feature_dtype]
        for p in self.backbone_parameters():
            p.requires_grad_(False)
        seg = spec.needs_maps
        self.audio_units = (audio_bb.depth - 1,) if seg else select_layers(audio_bb.depth, cfg)
        self.visual_units = (visual_bb.depth - 1,) if seg else select_layers(visual_bb.depth, cfg)
        self.lcd_a = nn.ModuleDict({str(i): LCD(audio_bb.units[i].dim, **cfg.lcd_kwargs()) for i in self.audio_units})
        self.lcd_v = nn.ModuleDict({str(i): LCD(visual_bb.units[i].dim, **cfg.lcd_kwargs()) for i in self.visual_units})
        self.audio_dim = audio_bb.units[self.audio_units[-1]].dim
        self.visual_dim = visual_bb.units[self.visual_units[-1]].dim
        self.agg_a: LayerAggregate | None = None
        self.agg_v: LayerAggregate | None = None
        self.mti: MTI | None = None
        self.map_units: tuple[int, ...] = ()
        if seg:
            self.map_units = visual_bb.pyramid_units()
            self.map_channels = visual_bb.pyramid_channels()
            if cfg.mti:
                self.mti = MTI(self.audio_dim, self.visual_dim, self.map_channels)
        else:
            self.agg_a = LayerAggregate([audio_bb.units[i].dim for i in self.audio_units], cfg.aggregate)
            self.agg_v = LayerAggregate([visual_bb.units[i].dim for i in self.visual_units], cfg.aggregate)
        self.train(self.training)

    def train(self, mode: bool = True) -> MettleEncoder:
        """Frozen towers stay in eval mode (no dropout, fixed norms) whatever the mode."""
        super().train(mode)
        self.audio_bb.eval()
        self.visual_bb.eval()
        return self

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        seen: set[int] = set()
        for p in [*self.audio_bb.parameters(), *self.visual_bb.parameters()]:
            if id(p) not in seen:
                seen.add(id(p))
                yield p

    def mettle_parameters(self) -> list[nn.Parameter]:
        frozen = {id(p) for p in self.backbone_parameters()}
        return [p for p in self.parameters() if id(p) not in frozen]

    def param_groups(self, lr: float) -> list[dict[str, object]]:
        return [{"params": self.mettle_parameters(), "lr": lr, "name": "mettle"}]

    def memory_floor_bytes(self, audio: torch.Tensor, visual: torch.Tensor) -> int:
        return kept_feature_bytes(self, audio, visual)

    def param_breakdown(self) -> dict[str, int]:
        def count(*modules: nn.Module | None) -> int:
            return sum(p.numel() for m in modules if m is not None for p in m.parameters() if p.requires_grad)

        return {
            "lcd": count(self.lcd_a, self.lcd_v),
            "aggregation": count(self.agg_a, self.agg_v),
            "pool": 0,
            "mti": count(self.mti),
        }

    def _run(
        self,
        bb: Backbone,
        inputs: torch.Tensor,
        modality: Modality,
        lcd_units: Sequence[int],
        map_units: Sequence[int] = (),
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """One no_grad pass up to the last needed unit; each kept output is cast as soon as
        it exists so that full-precision copies never pile up."""
        feats: dict[int, torch.Tensor] = {}
        maps: dict[int, torch.Tensor] = {}
        last = max([*lcd_units, *map_units])
        with torch.no_grad():
            x = bb.embed(bb.prepare(inputs, modality))
            for unit in bb.units[: last + 1]:
                x = bb.run_unit(unit, x)
                if unit.index in lcd_units:
                    feats[unit.index] = bb.tokens(x).to(self.feature_dtype)
                if unit.index in map_units:
                    maps[unit.index] = bb.grid(x)
        return feats, maps

    def frozen_features(
        self, audio: torch.Tensor, visual: torch.Tensor
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], list[torch.Tensor]]:
        """audio [B, T, S], visual [B, T, 3, H, W] -> the tokens LCD reads per unit
        ([B*T, L, D] at the kept dtype) for each tower, and the frozen pyramid (fp32)."""
        feats_a, _ = self._run(self.audio_bb, audio.flatten(0, 1), "audio", self.audio_units)
        feats_v, maps = self._run(self.visual_bb, visual.flatten(0, 1), "visual", self.visual_units, self.map_units)
        return feats_a, feats_v, [maps[i] for i in self.map_units]

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> AVFeatures:
        b, t = visual.shape[:2]
        feats_a, feats_v, maps = self.frozen_features(audio, visual)
        metas_a = [self.lcd_a[str(i)](feats_a[i]) for i in self.audio_units]
        metas_v = [self.lcd_v[str(i)](feats_v[i]) for i in self.visual_units]
        if self.agg_a is None or self.agg_v is None:  # segmentation: top layer only
            meta_a, meta_v = metas_a[-1], metas_v[-1]
            maps = self.mti(maps, meta_a, meta_v) if self.mti is not None else [m.detach() for m in maps]
        else:
            meta_a, meta_v = self.agg_a(metas_a), self.agg_v(metas_v)
        a = meta_a.mean(1).reshape(b, t, -1)
        v = meta_v.mean(1).reshape(b, t, -1)
        return AVFeatures(a=a, v=v, maps=maps if self.spec.needs_maps else None)


def kept_feature_bytes(encoder: MettleEncoder, audio: torch.Tensor, visual: torch.Tensor) -> int:
    """Memory floor for this input: bytes of the distinct frozen tensors the encoder keeps
    for its trainable part (LCD tokens at the kept dtype, plus the pyramid maps)."""
    feats_a, feats_v, maps = encoder.frozen_features(audio, visual)
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in (*feats_a.values(), *feats_v.values(), *maps)
    }
    return sum(storages.values())


def mettle_param_count(
    cfg: MettleConfig,
    audio_widths: Sequence[int],
    visual_widths: Sequence[int],
    map_channels: Sequence[int] | None = None,
) -> int:
    """Trainable parameters of a MettleEncoder whose LCDs read blocks of the given widths
    (per selected layer; just the top one for segmentation). `map_channels` given means
    segmentation: no layer aggregation, and MTI over those channels when `cfg.mti`."""
    n = sum(lcd_param_count(w, **cfg.lcd_kwargs()) for w in (*audio_widths, *visual_widths))  # type: ignore[arg-type]
    if map_channels is None:
        return n + sum(aggregate_param_count(w, cfg.aggregate) for w in (audio_widths, visual_widths))
    return n + (mti_param_count(audio_widths[-1], visual_widths[-1], map_channels) if cfg.mti else 0)
