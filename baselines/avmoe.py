"""AVMoE (Cheng et al., NeurIPS 2024): mixtures of adapter experts inside two frozen towers.

The Mettle paper's other comparator in its Fig. 1c. The audio tower (HTS-AT) and the visual tower
(Swin-V2) run side by side as in DG-SCT; at each adapted block pair, four adapters (audio and
visual, before and after the block) each let a router mix a cross-modal and a unimodal expert.
Gradients flow through both frozen towers, which is what the comparison measures.

Details follow the authors' public code (yingchengy/AVMOE, AVE/nets/net_trans_v3.py and the AVS
model model/PVT_AVSModel_v2.py) with the flags of AVE/train.sh:

- Placement (`forward_swin`): the block pairs and positions of DG-SCT (`baselines.dgsct`:
  HTS-AT block k meets Swin-V2-L stage-3 block 3k + 2, both adapters of a position read the
  streams as they are when it starts). `num_skip` leaves stages out: with num_skip > 1, stage s
  (from 0) runs plain when (s + 1) is a multiple of num_skip, so the AVE flag 2 adapts stages 0
  and 2 only. Unadapted blocks run plain.
- Adapter (`MoEAdapter`): the other tower's tokens are first mapped to this tower's token count
  (a 1x1 conv over the token axis, `conv_adapter`) and width (a Linear, `fc`); a router MLP
  (2D -> 128 -> 32 -> E, ReLU between) over [mean of own tokens; mean of mapped tokens] gives
  softmax weights; every expert runs on (own tokens, mapped tokens) and the adapter adds their
  weighted sum (dense, no top-k) to the stream.
- Experts (`ExpertAdapter`): the cross-modal one is LAVisH's latent-token adapter as AVMoE
  writes it (32 latent tokens uniform in [0, 1) gather from the mapped tokens, unscaled, with
  no gate on that update; the own tokens read them through a zero-init gate; then LayerNorm,
  grouped 1x1 conv down, BatchNorm, ReLU, grouped conv up, BatchNorm, LayerNorm, a zero-init
  gate); the unimodal one is the same bottleneck on the own tokens only, and, as released, with
  no activation between its convs. Visual experts are always gated, audio ones by `gates`.
- Readout: the mean of the final tokens, the visual ones after the tower's final norm, the
  audio ones without it (as officially). On classification tasks DG-SCT's temporal attention
  (the same module in the AVMoE AVE code) turns them into 256-wide features.
- AVS extras (the AVS code only): Gaussian noise (std 0.01) on the router logits while
  training, on segmentation tasks; on MS3 a load-balancing term over every adapter, weighted
  0.01 and added to the task loss through `AVFeatures.aux_loss`. It is what the released code
  computes: `F.kl_div(p.log(), full_like(p, 1 / p.size(0)), "batchmean")` with p the router
  weights averaged over the frames, kept [1, E], so the "uniform" target is all ones and the
  term is -sum_e log p_e = E * KL(uniform || p) + E log E (same minimiser, E times the gradient).

Left out: the official CMBS head (the harness's task head replaces it, as for every method);
the AVS and AVVP codes' own flags (MS3: 2 + 2 experts, bottleneck 2, no BatchNorm, ungated
audio experts, latent self-attention in the unimodal experts; S4: every stage, multi-head
self-attention in the unimodal experts; AVVP: self-attention unimodal experts and a
load-balancing term whose summation only runs under DataParallel): every task here gets the AVE
adapters, as DG-SCT's baseline does, with the AVS extras above.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from baselines.dgsct import PairedTowersEncoder, PairShape, pair_units, temporal_param_count
from mettle_core.backbone import Backbone, Unit
from mettle_core.interface import (
    AVFeatures,
    MethodEntry,
    TaskSpec,
    Towers,
    validate_config,
)

ROUTER_HIDDEN = (128, 32)  # the official router MLP's hidden widths
AVS_ROUTER_NOISE = 0.01  # std of the AVS code's router-logit noise while training
MS3_BALANCE_WEIGHT = 0.01  # the MS3 train_v2.sh load_balancing_loss_weight


@dataclass
class AvmoeConfig:
    """num_cross / num_uni: cross-modal and unimodal experts per adapter (the official
    num_multimodal_experts / num_singlemodal_experts, 1 each for AVE); num_latent: latent tokens
    of a cross-modal expert (the official num_tokens: 32, kept: bench/plans/reference.toml chose it on
    val over 8, each at two learning rates, see results/tables/selection.md); reduction: bottleneck D -> D // reduction
    (Adapter_downsample: 8); groups: groups of both bottleneck convs (num_conv_group: 2);
    batchnorm: BatchNorm after each (is_bn); gates: the audio experts' zero-init output gate
    (is_gate; visual experts always have one); layernorm_before / layernorm_post: LayerNorm before /
    after the bottleneck; num_skip: stage s runs without adapters when num_skip > 1 and (s + 1) %
    num_skip == 0 (AVE: 2); router_noise: std of the noise on the router logits while training
    (None: 0.01 on segmentation tasks, as the AVS code, else 0); balance_weight: weight of the
    load-balancing term (None: 0.01 on avs_ms3, as its train_v2.sh, else 0); temporal: the AVE
    temporal attention over segments on classification tasks, unless the task's head runs it
    (`ave.head=cmbs`); tower_train_mode: the frozen towers
    follow the model's train mode (drop path, HTS-AT's SpecAugment), as main_trans_v3.py's
    model.train() does."""

    num_cross: int = 1
    num_uni: int = 1
    num_latent: int = 32
    reduction: int = 8
    groups: int = 2
    batchnorm: bool = True
    gates: bool = True
    layernorm_before: bool = True
    layernorm_post: bool = True
    num_skip: int = 2
    router_noise: float | None = None
    balance_weight: float | None = None
    temporal: bool = True
    tower_train_mode: bool = True

    def __post_init__(self) -> None:
        validate_config(self)
        for name, least in (("num_cross", 0), ("num_uni", 0), ("num_latent", 1), ("reduction", 1), ("groups", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"AvmoeConfig.{name}={value!r} must be an integer >= {least}")
        if not isinstance(self.num_skip, int) or isinstance(self.num_skip, bool) or self.num_skip < 1:
            raise ValueError(f"AvmoeConfig.num_skip={self.num_skip!r} must be an integer >= 1")
        if self.num_cross + self.num_uni < 1:
            raise ValueError("AvmoeConfig.num_cross + num_uni must be >= 1: an adapter needs an expert")
        for name in ("router_noise", "balance_weight"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"AvmoeConfig.{name}={value!r} must be >= 0 (or none: the task's official value)")

    def resolve(self, spec: TaskSpec) -> AvmoeConfig:
        """Fill the task-dependent extras of the official AVS code."""
        noise = AVS_ROUTER_NOISE if spec.kind == "segmentation" else 0.0
        balance = MS3_BALANCE_WEIGHT if spec.name == "avs_ms3" else 0.0
        return dataclasses.replace(
            self,
            router_noise=noise if self.router_noise is None else self.router_noise,
            balance_weight=balance if self.balance_weight is None else self.balance_weight,
        )

    @property
    def num_experts(self) -> int:
        return self.num_cross + self.num_uni


def adapted_stage(stage: int, num_skip: int) -> bool:
    """Whether stage `stage` (from 0) gets adapters under the official num_skip rule."""
    return num_skip <= 1 or (stage + 1) % num_skip != 0


def adapted_pairs(visual: Backbone, audio: Backbone, num_skip: int) -> list[tuple[Unit, Unit]]:
    """(visual unit, audio unit) of every block pair that gets adapters, in order."""
    return [(v, a) for v, a in pair_units(visual, audio) if adapted_stage(v.stage, num_skip)]


def adapted_shapes(visual: Backbone, audio: Backbone, num_skip: int) -> list[PairShape]:
    return [
        PairShape(v.dim, visual.unit_tokens(v), a.dim, audio.unit_tokens(a))
        for v, a in adapted_pairs(visual, audio, num_skip)
    ]


def expert_param_count(dim: int, cfg: AvmoeConfig, cross: bool, gated: bool) -> int:
    """Parameters of one expert of width `dim`."""
    hidden = dim // cfg.reduction
    count = 2 * dim * hidden // cfg.groups  # down and up convs, no bias
    count += (2 * hidden + 2 * dim) if cfg.batchnorm else 0
    count += 2 * dim * (int(cfg.layernorm_before) + int(cfg.layernorm_post))
    count += int(gated)
    return count + (cfg.num_latent * dim + 1 if cross else 0)  # latent tokens and their gate


def adapter_param_count(dim: int, tokens: int, other_dim: int, other_tokens: int, cfg: AvmoeConfig, gated: bool) -> int:
    """Parameters of one MoE adapter of width `dim` on `tokens` tokens, reading `other_tokens` x `other_dim`."""
    h1, h2 = ROUTER_HIDDEN
    count = other_tokens * tokens + tokens + other_dim * dim + dim  # token-count conv, width map
    count += (2 * dim * h1 + h1) + (h1 * h2 + h2) + (h2 * cfg.num_experts + cfg.num_experts)  # router
    count += cfg.num_cross * expert_param_count(dim, cfg, True, gated)
    return count + cfg.num_uni * expert_param_count(dim, cfg, False, gated)


def avmoe_param_count(shapes: Sequence[PairShape], cfg: AvmoeConfig, temporal: tuple[int, int] | None) -> int:
    """Trainable parameters of AVMoE: two audio and two visual adapters per adapted pair, plus the
    temporal attention on (audio width, visual width) features when it is used."""
    count = 0
    for s in shapes:
        count += 2 * adapter_param_count(s.visual_dim, s.visual_tokens, s.audio_dim, s.audio_tokens, cfg, True)
        count += 2 * adapter_param_count(s.audio_dim, s.audio_tokens, s.visual_dim, s.visual_tokens, cfg, cfg.gates)
    return count + (temporal_param_count(*temporal) if temporal else 0)


class UnimodalExpert(nn.Module):
    """The official unimodal expert: (own tokens X, mapped other tokens) -> residual for X from X
    alone: LayerNorm, grouped 1x1 conv down, BatchNorm, [activation], grouped conv up, BatchNorm,
    LayerNorm, times a zero-init gate. The released unimodal expert has no activation; the
    cross-modal one reuses this bottleneck with a ReLU."""

    def __init__(self, dim: int, cfg: AvmoeConfig, gated: bool, relu: bool = False) -> None:
        super().__init__()
        hidden = dim // cfg.reduction
        if hidden < 1 or dim % cfg.groups or hidden % cfg.groups:
            raise ValueError(
                f"AvmoeConfig.reduction={cfg.reduction} / groups={cfg.groups}: width {dim} and bottleneck "
                f"{dim} // {cfg.reduction} = {hidden} must both be positive multiples of groups"
            )
        self.ln_before = nn.LayerNorm(dim) if cfg.layernorm_before else nn.Identity()
        self.down = nn.Conv1d(dim, hidden, 1, groups=cfg.groups, bias=False)
        self.bn1 = nn.BatchNorm1d(hidden) if cfg.batchnorm else nn.Identity()
        self.act = nn.ReLU() if relu else nn.Identity()
        self.up = nn.Conv1d(hidden, dim, 1, groups=cfg.groups, bias=False)
        self.bn2 = nn.BatchNorm1d(dim) if cfg.batchnorm else nn.Identity()
        self.ln_post = nn.LayerNorm(dim) if cfg.layernorm_post else nn.Identity()
        self.gate = nn.Parameter(torch.zeros(1)) if gated else None

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """[N, L, D] -> [N, L, D]; the 1x1 convs mix channels per token."""
        z = self.ln_before(x).transpose(1, 2)
        z = self.bn2(self.up(self.act(self.bn1(self.down(z)))))
        z = self.ln_post(z.transpose(1, 2))
        return z if self.gate is None else self.gate * z

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: [N, L, D] own tokens; y: [N, L, D] the other tower's, mapped (unused) -> [N, L, D]."""
        return self.bottleneck(x)


class CrossModalExpert(UnimodalExpert):
    """The official cross-modal expert: latent tokens gather from the mapped other tokens, the own
    tokens read them through a zero-init gate, then the bottleneck with a ReLU."""

    def __init__(self, dim: int, cfg: AvmoeConfig, gated: bool) -> None:
        super().__init__(dim, cfg, gated, relu=True)
        self.latent = nn.Parameter(torch.rand(cfg.num_latent, dim))
        self.gate_av = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        lat = self.latent.expand(x.shape[0], -1, -1)
        lat = lat + torch.softmax(lat @ y.transpose(1, 2), dim=-1) @ y
        x = x + self.gate_av * torch.softmax(x @ lat.transpose(1, 2), dim=-1) @ lat
        return self.bottleneck(x)


class MoEAdapter(nn.Module):
    """One adapter: (own tokens X, other tower's tokens Y) -> (residual for X, router weights [N, E])."""

    def __init__(self, dim: int, tokens: int, other_dim: int, other_tokens: int, cfg: AvmoeConfig, gated: bool) -> None:
        super().__init__()
        if cfg.router_noise is None:
            raise ValueError("AvmoeConfig must be resolved against a TaskSpec first (AvmoeConfig.resolve)")
        self.noise = cfg.router_noise
        self.token_map = nn.Conv1d(other_tokens, tokens, 1)  # over the token axis
        self.width_map = nn.Linear(other_dim, dim)
        h1, h2 = ROUTER_HIDDEN
        self.router = nn.Sequential(
            nn.Linear(2 * dim, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, cfg.num_experts)
        )
        self.experts = nn.ModuleList(
            [CrossModalExpert(dim, cfg, gated) for _ in range(cfg.num_cross)]
            + [UnimodalExpert(dim, cfg, gated) for _ in range(cfg.num_uni)]
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [N, L, D] own tokens; y: [N, L', D'] other tower's -> ([N, L, D] residual, [N, E] weights)."""
        g = self.width_map(self.token_map(y))  # [N, L, D]: the other tokens on this grid and width
        logits = self.router(torch.cat([x.mean(dim=1), g.mean(dim=1)], dim=-1))
        if self.training and self.noise > 0:
            logits = logits + self.noise * torch.randn_like(logits)
        weights = torch.softmax(logits, dim=-1)
        out = sum(weights[:, e, None, None] * expert(x, g) for e, expert in enumerate(self.experts))
        assert isinstance(out, torch.Tensor)
        return out, weights


def balance_term(weights: torch.Tensor) -> torch.Tensor:
    """The AVS code's load-balancing term of one adapter's router weights [N, E] (see the module
    docstring): -sum_e log(mean_n weights[n, e])."""
    return -weights.mean(dim=0).log().sum()


class AvmoeEncoder(PairedTowersEncoder):
    """AVMoE's MoE adapters at every adapted block pair."""

    method = "AVMoE"

    def __init__(self, audio_bb: Backbone, visual_bb: Backbone, spec: TaskSpec, cfg: AvmoeConfig) -> None:
        super().__init__(audio_bb, visual_bb, spec, cfg.resolve(spec))
        self.pairs = adapted_pairs(visual_bb, audio_bb, cfg.num_skip)
        shapes = adapted_shapes(visual_bb, audio_bb, cfg.num_skip)

        def adapters(visual: bool) -> nn.ModuleList:
            return nn.ModuleList(
                MoEAdapter(s.visual_dim, s.visual_tokens, s.audio_dim, s.audio_tokens, self.cfg, True)
                if visual
                else MoEAdapter(s.audio_dim, s.audio_tokens, s.visual_dim, s.visual_tokens, self.cfg, cfg.gates)
                for s in shapes
            )

        self.audio_p1, self.visual_p1 = adapters(False), adapters(True)
        self.audio_p2, self.visual_p2 = adapters(False), adapters(True)
        self.finish()

    def _pair(
        self, i: int, v_unit: Unit, a_unit: Unit, xv: torch.Tensor, xa: torch.Tensor, weights: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One adapted pair on both streams (NHWC or [N, L, D] as the towers keep them), in the
        official order; the four adapters' router weights are appended to `weights`."""
        if v_unit.downsample is not None:
            xv = v_unit.downsample(xv)
        if a_unit.downsample is not None:
            xa = a_unit.downsample(xa)
        vb, ab, blk = self.visual_bb, self.audio_bb, v_unit.block
        sv, sa = xv.shape, xa.shape
        ra, wa = self.audio_p1[i](ab.tokens(xa), vb.tokens(xv))
        rv, wv = self.visual_p1[i](vb.tokens(xv), ab.tokens(xa))
        xv = xv + vb.attn_branch(blk, xv) + rv.reshape(sv)
        xa = a_unit.block(xa) + ra.reshape(sa)
        weights += [wa, wv]
        ra, wa = self.audio_p2[i](ab.tokens(xa), vb.tokens(xv))
        rv, wv = self.visual_p2[i](vb.tokens(xv), ab.tokens(xa))
        weights += [wa, wv]
        xv = xv + vb.mlp_branch(blk, xv) + rv.reshape(sv)
        return xv, xa + ra.reshape(sa)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> AVFeatures:
        b, t = visual.shape[:2]
        if tuple(audio.shape[:2]) != (b, t):
            raise ValueError(f"audio {tuple(audio.shape[:2])} and visual {(b, t)} must pair up segment by segment")
        vb, ab = self.visual_bb, self.audio_bb
        xv = vb.embed(vb.prepare(visual.flatten(0, 1), "visual"))
        xa = ab.embed(ab.prepare(audio.flatten(0, 1), "audio"))
        kept: dict[int, torch.Tensor] = {}
        weights: list[torch.Tensor] = []
        nv = na = 0  # the next unit of each tower to run

        def run_visual(upto: int, x: torch.Tensor) -> torch.Tensor:
            for unit in vb.units[nv:upto]:
                x = vb.run_unit(unit, x)
                if unit.index in self._map_units:
                    kept[unit.index] = x
            return x

        def run_audio(upto: int, x: torch.Tensor) -> torch.Tensor:
            for unit in ab.units[na:upto]:
                x = ab.run_unit(unit, x)
            return x

        for i, (v_unit, a_unit) in enumerate(self.pairs):
            xv, xa = run_visual(v_unit.index, xv), run_audio(a_unit.index, xa)
            xv, xa = self._pair(i, v_unit, a_unit, xv, xa, weights)
            if v_unit.index in self._map_units:
                kept[v_unit.index] = xv
            nv, na = v_unit.index + 1, a_unit.index + 1
        xv, xa = run_visual(vb.depth, xv), run_audio(ab.depth, xa)
        v = vb.pool(xv).reshape(b, t, -1)
        a = ab.tokens(xa).mean(dim=1).reshape(b, t, -1)
        if self.temporal is not None:
            a, v = self.temporal(a, v)
        maps = [vb.grid(kept[i]) for i in self._map_units] if self.spec.needs_maps else None
        weight = self.cfg.balance_weight
        aux = weight * sum(balance_term(w) for w in weights) if weight else None
        return AVFeatures(a=a, v=v, maps=maps, aux_loss=aux)


def build(towers: Towers, spec: TaskSpec, cfg: AvmoeConfig) -> AvmoeEncoder:
    return AvmoeEncoder(towers.audio, towers.visual, spec, cfg)


METHOD = MethodEntry(
    "avmoe",
    AvmoeConfig,
    build,
    "AVMoE (Cheng et al., NeurIPS 2024): routers mixing cross-modal (latent-token) and unimodal adapter experts "
    "at paired blocks of separate frozen towers, temporal attention on classification.",
    towers=("audio", "visual"),
    version=2,  # 2: no temporal attention of its own under a head that runs it (ave.head=cmbs)
    train_defaults={"lr": 1e-3},  # chosen on val with num_latent (bench/plans/reference.toml)
)
