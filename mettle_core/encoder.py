"""The Mettle encoder: frozen towers under no_grad, LCD per kept layer, MTI for maps.

No gradient ever enters a tower (the paper's premise): each tower runs once under no_grad
and writes the outputs of the selected blocks into one preallocated buffer per stage, which
is all that LCD keeps for backward; everything trainable reads those buffers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from itertools import groupby
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mettle_core.backbone import Backbone, Modality
from mettle_core.interface import AdaptedEncoder, AVFeatures, TaskSpec, unique_parameters, validate_config
from mettle_core.lcd import (
    LCD,
    Aggregate,
    LayerAggregate,
    Order,
    Pool,
    Preserve,
    Width,
    aggregate_param_count,
    lcd_param_count,
    pool_param_count,
    token_pool,
)
from mettle_core.mti import MTI, MTIKind, mti_param_count

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
KEY_NORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "layernorm": lambda t: F.layer_norm(t, t.shape[-1:]),
    "none": lambda t: t,
}


@dataclass
class MettleConfig:
    """Mettle's switches. The paper fixes only what its abstract and figure captions state
    (per-layer meta-tokens as queries over frozen tokens, the layer average for
    classification, the top layer plus MTI for segmentation, two parallel mechanisms);
    every other default is our reconstruction, chosen on structure (parameters, memory).

    num_tokens: K meta-tokens per layer (K << N is stated; the value is ours). 8 keeps K far
      below the token count of real towers (36 to 4096 per stage), so LCD activations stay a
      small fraction of the kept features, while the pooled embedding gets several queries.
    layers: which blocks LCD reads in classification: every block (the paper's "each
      layer"), the last `last_n`, or every `every_k`-th counted back from the last.
    preserve: parameter-free attention, or learned q/k/v projections of rank D/rank_ratio.
    adapt / bottleneck_ratio: the gated D -> D/r -> D adaptation branch.
    adapt_order: `parallel` (the paper's "two parallel mechanisms"): adaptation reads what
      preservation read; `series`: it reads the preserved meta-tokens M + read.
    key_norm: `layernorm` normalises each frozen token (no affine) before it serves as key
      and value, in the frozen pass, so that the kept features are the normalised ones and
      nothing else is saved; `none` reads raw tokens, whose scale differs by layer and tower.
    meta_init_std: std of the meta-tokens at init. 1.0 gives unit-variance logits over
      normalised keys, so each meta-token starts with its own attention pattern; 0.02 (the
      earlier default) starts every meta-token at the layer's plain token average.
    aggregate: how per-layer meta-tokens combine (`mean` is the paper's); `last` reads only
      the top selected block.
    width: how stages narrower than the top reach its width: `stage`, one projection per
      stage; `block`, one per layer (an ablation only: 21 M parameters on Swin-V2-L).
    pool: how the K meta-tokens reach the head (mean | attention | concat, see lcd.token_pool);
      `attention` (a learned query that starts as the mean) was chosen on val over `mean` and
      K = 16 by bench/plans/reference.toml on the tiny preset, all at lr 3e-3.
    decay: `projections`: only projection matrices get weight decay; meta-tokens, gates,
      norms, biases and pooling queries get none (the usual rule for prompt and query tokens:
      decay would pull queries back towards the plain average); `all`: every parameter.
    no_decay_lr_scale: learning-rate multiplier of the group of meta-tokens, gates and norms.
    batched: the LCDs of a stage run as one operation (numerically equal to layer by layer).
    recompute: LCD keeps only the frozen features for backward and recomputes its K-token
      intermediates there, so that activations stay at the floor.
    feature_dtype: dtype of the kept frozen features (bf16 halves the memory floor).
    mti: Meta-Token Injection into the visual pyramid (segmentation only): `attention`,
      `film` or `off` (see mettle_core.mti).
    """

    num_tokens: int = 8
    layers: Literal["all", "last_n", "every_k"] = "all"
    last_n: int = 4
    every_k: int = 2
    preserve: Preserve = "attention"
    rank_ratio: int = 8
    adapt: bool = True
    bottleneck_ratio: int = 8
    adapt_order: Order = "parallel"
    key_norm: Literal["layernorm", "none"] = "layernorm"
    meta_init_std: float = 1.0
    aggregate: Aggregate = "mean"
    width: Width = "stage"
    pool: Pool = "attention"
    decay: Literal["projections", "all"] = "projections"
    no_decay_lr_scale: float = 1.0
    batched: bool = True
    recompute: bool = True
    feature_dtype: Literal["fp32", "bf16"] = "fp32"
    mti: MTIKind = "attention"

    def __post_init__(self) -> None:
        validate_config(self)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int) and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"MettleConfig.{f.name}={value!r} must be a positive integer")
            if f.type in ("float", float) and (
                not isinstance(value, int | float) or isinstance(value, bool) or not value > 0
            ):
                raise ValueError(f"MettleConfig.{f.name}={value!r} must be a positive number")

    def lcd_shape(self) -> dict[str, object]:
        """The LCD settings that decide its parameter count."""
        return {
            "num_tokens": self.num_tokens,
            "preserve": self.preserve,
            "rank_ratio": self.rank_ratio,
            "adapt": self.adapt,
            "bottleneck_ratio": self.bottleneck_ratio,
        }

    def lcd_kwargs(self) -> dict[str, object]:
        return self.lcd_shape() | {
            "order": self.adapt_order,
            "init_std": self.meta_init_std,
            "batched": self.batched,
            "recompute": self.recompute,
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


def stage_groups(bb: Backbone, units: Sequence[int]) -> list[tuple[int, ...]]:
    """The selected units grouped by stage, in order: the layers one batched LCD serves
    (one width and one token count each)."""
    return [tuple(group) for _, group in groupby(units, key=lambda i: bb.units[i].stage)]


class TowerLCD(nn.Module):
    """LCD over the selected layers of one tower, one batched `LCD` per stage, and for
    classification the aggregation of all layers at the top width."""

    def __init__(self, bb: Backbone, units: Sequence[int], cfg: MettleConfig, aggregate: bool) -> None:
        super().__init__()
        self.stages = stage_groups(bb, units)
        widths = [(len(g), bb.units[g[0]].dim) for g in self.stages]
        self.lcds = nn.ModuleList(LCD(w, layers=n, **cfg.lcd_kwargs()) for n, w in widths)  # type: ignore[arg-type]
        self.aggregate = LayerAggregate(widths, cfg.aggregate, cfg.width) if aggregate else None
        self.dim = widths[-1][1]

    def forward(self, kept: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-stage buffers [n_s, N, L_s, D_s] -> meta-tokens [N, K, D]."""
        metas = [lcd(x) for lcd, x in zip(self.lcds, kept, strict=True)]
        if self.aggregate is None:  # segmentation: the top layer only
            return metas[-1][-1]
        return self.aggregate(metas)


@dataclass
class KeptFeatures:
    """What the frozen pass hands to the trainable part: per tower, one buffer per stage
    [n_s, N, L_s, D_s] at the kept dtype, and the frozen visual pyramid (segmentation)."""

    audio: list[torch.Tensor]
    visual: list[torch.Tensor]
    maps: list[torch.Tensor]

    def nbytes(self) -> int:
        """Bytes of the distinct storages (the pyramid's top map may share a buffer's)."""
        tensors = (*self.audio, *self.visual, *self.maps)
        return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def no_decay_parameters(module: nn.Module) -> set[int]:
    """ids of the parameters that take no weight decay: every 0-D and 1-D parameter (gates,
    biases, norms, logits, pooling queries) and those a module names in `NO_DECAY` (its
    stacked meta-tokens, gates, norms and biases)."""
    ids = {id(p) for p in module.parameters() if p.ndim <= 1}
    for sub in module.modules():
        ids |= {id(getattr(sub, name)) for name in getattr(sub, "NO_DECAY", ()) if hasattr(sub, name)}
    return ids


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
        self.key_norm = KEY_NORMS[cfg.key_norm]
        for p in self.backbone_parameters():
            p.requires_grad_(False)
        seg = spec.needs_maps
        self.audio_units = (audio_bb.depth - 1,) if seg else select_layers(audio_bb.depth, cfg)
        self.visual_units = (visual_bb.depth - 1,) if seg else select_layers(visual_bb.depth, cfg)
        self.lcd_a = TowerLCD(audio_bb, self.audio_units, cfg, aggregate=not seg)
        self.lcd_v = TowerLCD(visual_bb, self.visual_units, cfg, aggregate=not seg)
        self.audio_dim, self.visual_dim = self.lcd_a.dim, self.lcd_v.dim
        self.pool_a = token_pool(cfg.pool, self.audio_dim, cfg.num_tokens)
        self.pool_v = token_pool(cfg.pool, self.visual_dim, cfg.num_tokens)
        self.mti: MTI | None = None
        self.map_units: tuple[int, ...] = ()
        if seg:
            self.map_units = visual_bb.pyramid_units()
            self.map_channels = visual_bb.pyramid_channels()
            if cfg.mti != "off":
                self.mti = MTI(self.audio_dim, self.visual_dim, self.map_channels, cfg.mti)
        self.train(self.training)

    def train(self, mode: bool = True) -> MettleEncoder:
        """Frozen towers stay in eval mode (no dropout, fixed norms) whatever the mode."""
        super().train(mode)
        self.audio_bb.eval()
        self.visual_bb.eval()
        return self

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return unique_parameters(self.audio_bb, self.visual_bb)

    def mettle_parameters(self) -> list[nn.Parameter]:
        frozen = {id(p) for p in self.backbone_parameters()}
        return [p for p in self.parameters() if id(p) not in frozen]

    def param_groups(self, lr: float) -> list[dict[str, object]]:
        """Projections in one group; meta-tokens, gates, norms and biases in another, with no
        weight decay under `decay=projections` and their own learning-rate multiplier."""
        free = no_decay_parameters(self)
        params = self.mettle_parameters()
        decayed = {"params": [p for p in params if id(p) not in free], "lr": lr, "name": "mettle"}
        tokens = {
            "params": [p for p in params if id(p) in free],
            "lr": lr * self.cfg.no_decay_lr_scale,
            "name": "mettle_tokens_gates_norms",
        }
        if self.cfg.decay == "projections":
            tokens["weight_decay"] = 0.0
        return [g for g in (decayed, tokens) if g["params"]]

    def param_breakdown(self) -> dict[str, int]:
        def count(*modules: nn.Module | None) -> int:
            return sum(p.numel() for m in modules if m is not None for p in m.parameters() if p.requires_grad)

        return {
            "lcd": count(self.lcd_a.lcds, self.lcd_v.lcds),
            "aggregation": count(self.lcd_a.aggregate, self.lcd_v.aggregate),
            "pool": count(self.pool_a, self.pool_v),
            "mti": count(self.mti),
        }

    def _run(
        self,
        bb: Backbone,
        inputs: torch.Tensor,
        modality: Modality,
        stages: Sequence[tuple[int, ...]],
        map_units: Sequence[int] = (),
    ) -> tuple[list[torch.Tensor], dict[int, torch.Tensor]]:
        """One no_grad pass up to the last needed unit. Each kept output is normalised, cast
        and written into its stage's buffer as soon as it exists: full-precision copies never
        pile up, and a stack of kept outputs (a copy of them all) is never made."""
        where = {unit: (s, j) for s, units in enumerate(stages) for j, unit in enumerate(units)}
        kept: list[torch.Tensor | None] = [None] * len(stages)
        maps: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            x = bb.embed(bb.prepare(inputs, modality))
            for unit in bb.units[: max([*where, *map_units]) + 1]:
                x = bb.run_unit(unit, x)
                if unit.index in where:
                    s, j = where[unit.index]
                    tokens = self.key_norm(bb.tokens(x))
                    if kept[s] is None:
                        kept[s] = tokens.new_empty((len(stages[s]), *tokens.shape), dtype=self.feature_dtype)
                    kept[s][j].copy_(tokens)  # type: ignore[index]
                if unit.index in map_units:
                    maps[unit.index] = bb.grid(x)
        return [k for k in kept if k is not None], maps

    def frozen_features(self, audio: torch.Tensor, visual: torch.Tensor) -> KeptFeatures:
        """audio [B, T, S], visual [B, T, 3, H, W] -> per-stage buffers of the tokens LCD reads
        ([n_s, B*T, L_s, D_s] at the kept dtype) for each tower, and the frozen pyramid (fp32)."""
        feats_a, _ = self._run(self.audio_bb, audio.flatten(0, 1), "audio", self.lcd_a.stages)
        feats_v, maps = self._run(self.visual_bb, visual.flatten(0, 1), "visual", self.lcd_v.stages, self.map_units)
        return KeptFeatures(feats_a, feats_v, [maps[i] for i in self.map_units])

    def memory_floor_bytes(self, audio: torch.Tensor, visual: torch.Tensor) -> int:
        """The kept frozen features for this input: what LCD and MTI read and autograd keeps."""
        return self.frozen_features(audio, visual).nbytes()

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> AVFeatures:
        b, t = visual.shape[:2]
        kept = self.frozen_features(audio, visual)
        meta_a, meta_v = self.lcd_a(kept.audio), self.lcd_v(kept.visual)
        maps = None
        if self.spec.needs_maps:
            maps = self.mti(kept.maps, meta_a, meta_v) if self.mti is not None else kept.maps
        return AVFeatures(a=self.pool_a(meta_a).reshape(b, t, -1), v=self.pool_v(meta_v).reshape(b, t, -1), maps=maps)


def mettle_param_count(
    cfg: MettleConfig,
    audio_stages: Sequence[tuple[int, int]],
    visual_stages: Sequence[tuple[int, int]],
    map_channels: Sequence[int] | None = None,
) -> int:
    """Trainable parameters of a MettleEncoder whose LCDs read (layers, width) per stage, the
    top stage last (for segmentation just the top layer, [(1, width)]). `map_channels` given
    means segmentation: no layer aggregation, and MTI over those channels."""
    shape = cfg.lcd_shape()
    n = sum(layers * lcd_param_count(w, **shape) for layers, w in (*audio_stages, *visual_stages))  # type: ignore[arg-type]
    tops = audio_stages[-1][1], visual_stages[-1][1]
    n += sum(pool_param_count(cfg.pool, w, cfg.num_tokens) for w in tops)
    if map_channels is None:
        return n + sum(aggregate_param_count(s, cfg.aggregate, cfg.width) for s in (audio_stages, visual_stages))
    return n + mti_param_count(*tops, map_channels, cfg.mti)
