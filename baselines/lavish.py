"""LAVisH (Lin et al., CVPR 2023): latent audio-visual adapters inside ONE frozen tower.

Audio (a log-mel as a 3-channel image) and visual frames run through the same frozen
tower, block by block in lockstep. Each block gets four adapters (audio / visual, parallel
to attention / to the MLP); each adapter first lets a few latent tokens gather from the
other modality's tokens at the same block input, lets its own tokens read those latents,
then applies a grouped-conv bottleneck whose output is added to the residual. Gradients
flow through the frozen tower (unlike Mettle), which is what the comparison measures.

Details follow the authors' public code (GenjiB/LAVISH, AVE/nets/net_trans.py): latent
tokens initialised uniform in [0, 1); a learned scalar (init 1) on the gathered latent
update and one (init 0) on the cross-modal update; LayerNorm before and after the
bottleneck, BatchNorm after each 1x1 conv, ReLU between, a zero-initialised output gate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mettle_core.backbone import Backbone, Unit
from mettle_core.interface import AdaptedEncoder, AVFeatures, MethodEntry, TaskSpec, Towers, validate_config

_VIT_BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")


@dataclass
class LavishConfig:
    """num_latent: latent tokens per adapter (None: the official 2 for classification, 16 for
    segmentation; 8, the default, was chosen on val by bench/plans/reference.toml over None,
    each at two learning rates, see results/tables/selection.md);
    reduction: bottleneck D -> D // reduction (None: 8 classification, 4 segmentation);
    groups: groups of both 1x1 convs; batchnorm: BN after each conv; gates: zero-initialised
    output gate; layernorm: LayerNorm before and after the bottleneck; tower_train_mode: the
    frozen tower follows the model's train mode, as in the official main_trans.py (which calls
    model.train() on the whole model), so its stochastic depth (timm's drop-path, 0.1 at the
    top of Swin-V2) is active while training; false keeps it in eval mode."""

    num_latent: int | None = 8
    reduction: int | None = None
    groups: int = 2
    batchnorm: bool = True
    gates: bool = True
    layernorm: bool = True
    tower_train_mode: bool = True

    def __post_init__(self) -> None:
        validate_config(self)
        for name in ("num_latent", "reduction", "groups"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"LavishConfig.{name}={value!r} must be >= 1")

    def resolve(self, spec: TaskSpec) -> LavishConfig:
        """Fill the task-dependent defaults of the official AVE / AVS settings."""
        seg = spec.kind == "segmentation"
        return dataclasses.replace(
            self,
            num_latent=self.num_latent if self.num_latent is not None else (16 if seg else 2),
            reduction=self.reduction if self.reduction is not None else (4 if seg else 8),
        )


def _resolved(cfg: LavishConfig) -> tuple[int, int]:
    if cfg.num_latent is None or cfg.reduction is None:
        raise ValueError("LavishConfig must be resolved against a TaskSpec first (LavishConfig.resolve)")
    return cfg.num_latent, cfg.reduction


def adapter_param_count(dim: int, cfg: LavishConfig) -> int:
    """Parameters of one adapter of width `dim` (cfg resolved)."""
    n, r = _resolved(cfg)
    hidden = dim // r
    count = n * dim + 2  # latent tokens, latent gate, cross-modal gate
    count += 2 * dim * hidden // cfg.groups  # down and up 1x1 grouped convs, no bias
    count += (2 * hidden + 2 * dim) if cfg.batchnorm else 0
    count += 4 * dim if cfg.layernorm else 0
    count += 1 if cfg.gates else 0
    return count


def lavish_param_count(dims: Sequence[int], cfg: LavishConfig) -> int:
    """Trainable parameters of LAVisH on a tower whose blocks have widths `dims`: four adapters a block."""
    return sum(4 * adapter_param_count(d, cfg) for d in dims)


class LavishAdapter(nn.Module):
    """One latent cross-modal adapter: (own tokens X, other tokens Y) -> residual for X."""

    def __init__(self, dim: int, cfg: LavishConfig) -> None:
        super().__init__()
        n, r = _resolved(cfg)
        hidden = dim // r
        if hidden < 1 or dim % cfg.groups or hidden % cfg.groups:
            raise ValueError(
                f"LavishConfig.reduction={r} / groups={cfg.groups}: width {dim} and bottleneck {dim} // {r} = "
                f"{hidden} must both be positive multiples of groups"
            )
        self.latent = nn.Parameter(torch.rand(n, dim))
        self.gate_latent = nn.Parameter(torch.ones(1))
        self.gate_av = nn.Parameter(torch.zeros(1))
        self.ln_before = nn.LayerNorm(dim) if cfg.layernorm else nn.Identity()
        self.down = nn.Conv1d(dim, hidden, 1, groups=cfg.groups, bias=False)
        self.bn1 = nn.BatchNorm1d(hidden) if cfg.batchnorm else nn.Identity()
        self.act = nn.ReLU()
        self.up = nn.Conv1d(hidden, dim, 1, groups=cfg.groups, bias=False)
        self.bn2 = nn.BatchNorm1d(dim) if cfg.batchnorm else nn.Identity()
        self.ln_post = nn.LayerNorm(dim) if cfg.layernorm else nn.Identity()
        self.gate = nn.Parameter(torch.zeros(1)) if cfg.gates else None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: [N, Lx, D] own tokens; y: [N, Ly, D] other modality's tokens -> [N, Lx, D]."""
        lat = self.latent.expand(x.shape[0], -1, -1)
        lat = lat + self.gate_latent * torch.softmax(lat @ y.transpose(1, 2), dim=-1) @ y
        x = x + self.gate_av * torch.softmax(x @ lat.transpose(1, 2), dim=-1) @ lat
        z = self.ln_before(x).transpose(1, 2)  # [N, D, Lx]: the 1x1 convs mix channels per token
        z = self.bn2(self.up(self.act(self.bn1(self.down(z)))))
        z = self.ln_post(z.transpose(1, 2))
        return z if self.gate is None else self.gate * z


class LavishEncoder(AdaptedEncoder):
    """Both modalities through the shared frozen tower with four adapters per block."""

    def __init__(self, shared: Backbone, spec: TaskSpec, cfg: LavishConfig) -> None:
        super().__init__()
        self.cfg = cfg.resolve(spec)
        self.shared = shared
        self.spec = spec
        if shared.family == "vit":
            for u in shared.units:
                missing = [p for p in _VIT_BLOCK_PARTS if not hasattr(u.block, p)]
                if missing:
                    name = type(u.block).__name__
                    raise ValueError(f"ViT block {name} lacks {missing}; LAVisH needs a pre-norm Block")
        for p in shared.parameters():
            p.requires_grad_(False)
        self.adapters = nn.ModuleList(
            nn.ModuleDict({k: LavishAdapter(u.dim, self.cfg) for k in ("a_attn", "v_attn", "a_mlp", "v_mlp")})
            for u in shared.units
        )
        self.audio_dim = self.visual_dim = shared.out_dim
        self.map_channels = shared.pyramid_channels() if spec.needs_maps else ()
        self._map_units = shared.pyramid_units() if spec.needs_maps else ()
        self.train(self.training)

    def train(self, mode: bool = True) -> LavishEncoder:
        """Adapters follow `mode`; the frozen tower too unless `tower_train_mode` is off."""
        super().train(mode)
        self.shared.train(mode and self.cfg.tower_train_mode)
        return self

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.shared.parameters()

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """All adapters at `lr` (the official AVE code trains them about 10x faster than the head,
        whose lr the harness sets)."""
        return [{"params": list(self.adapters.parameters()), "lr": lr, "name": "adapter"}]

    def _block(
        self, unit: Unit, ad: nn.ModuleDict, xa: torch.Tensor, xv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One block on both streams; each adapter reads the other stream at the same point."""
        if unit.downsample is not None:
            xa, xv = unit.downsample(xa), unit.downsample(xv)
        bb = self.shared
        blk, tok = unit.block, bb.tokens
        sa, sv = xa.shape, xv.shape
        ra, rv = ad["a_attn"](tok(xa), tok(xv)), ad["v_attn"](tok(xv), tok(xa))
        xa = xa + bb.attn_branch(blk, xa) + ra.reshape(sa)
        xv = xv + bb.attn_branch(blk, xv) + rv.reshape(sv)
        ta, tv = tok(xa), tok(xv)
        ra, rv = ad["a_mlp"](ta, tv), ad["v_mlp"](tv, ta)
        ta = ta + bb.mlp_branch(blk, ta) + ra
        tv = tv + bb.mlp_branch(blk, tv) + rv
        return ta.reshape(sa), tv.reshape(sv)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> AVFeatures:
        b, t = visual.shape[:2]
        if tuple(audio.shape[:2]) != (b, t):
            raise ValueError(f"audio {tuple(audio.shape[:2])} and visual {(b, t)} must pair up segment by segment")
        bb = self.shared
        xa = bb.embed(bb.prepare(audio.flatten(0, 1), "audio"))
        xv = bb.embed(bb.prepare(visual.flatten(0, 1), "visual"))
        kept: dict[int, torch.Tensor] = {}
        for unit, ad in zip(bb.units, self.adapters, strict=True):
            xa, xv = self._block(unit, ad, xa, xv)
            if unit.index in self._map_units:
                kept[unit.index] = xv
        a = bb.pool(xa).reshape(b, t, -1)
        v = bb.pool(xv).reshape(b, t, -1)
        maps = [bb.grid(kept[i]) for i in self._map_units] if self.spec.needs_maps else None  # indices may repeat
        return AVFeatures(a=a, v=v, maps=maps)


def build(towers: Towers, spec: TaskSpec, cfg: LavishConfig) -> LavishEncoder:
    return LavishEncoder(towers.shared, spec, cfg)


METHOD = MethodEntry(
    "lavish",
    LavishConfig,
    build,
    "LAVisH: latent audio-visual adapters in one shared frozen tower.",
    towers=("shared",),
    train_defaults={"lr": 3e-3},  # chosen on val with num_latent (bench/plans/reference.toml)
)
