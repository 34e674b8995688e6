"""DG-SCT (Duan et al., NeurIPS 2023): cross-modal prompts guiding adapters inside two frozen towers.

The Mettle paper's own comparator (its Fig. 1c). The audio tower (HTS-AT) and the visual tower
(Swin-V2) run side by side; at each paired block, an audio adapter guided by the visual tokens
and a visual adapter guided by the audio tokens add a gated residual to their streams.
Gradients flow through both frozen towers (as for LAVisH), which is what the comparison measures.

Details follow the authors' public code (haoyi-duan/DG-SCT, AVE/nets/net_trans.py and its AVE
train.sh flags: reduction 8, 32 latent tokens, groups 2, BatchNorm, gates, both layer norms):

- Pairing (`forward_swin`): the towers are walked stage by stage. Where a stage has as many
  blocks in both towers every block is paired; Swin-V2-L's third stage has 18 blocks against
  HTS-AT's 6, and there audio block j pairs with visual block 3j + 2, the last of each run of
  three; the other 12 run plain. `pair_units` generalises this to any depths: with n = the
  shallower tower's depth in a stage, pair j takes block floor((j + 1) * D / n) - 1 of a tower of
  depth D (so block j of the shallower one, and the last block of every run of D / n in the
  deeper one); the tiny towers (visual 1-1-3-1, audio 1-1-1-1) pair their third-stage audio block
  with the last of the three visual ones. Both towers must have as many stages.
- Positions: both adapters of a position read the streams as they are when it starts. Visual:
  the first beside the attention branch, the second beside the MLP branch. Audio: HTS-AT's
  block runs whole; the first adapter reads its input and is added after it, the second reads
  its output (and the visual stream after its attention) and is added to it.
- Adapter (the official `VisualAdapter`, for both modalities): the other tower's tokens are
  mapped to this tower's token count (a 1x1 conv over the token axis, the official
  `conv_adapter`) and width (a Linear, `fc`); 32 latent tokens gather from them and the own
  tokens read the latents (as LAVisH, unscaled softmax, a zero-init gate on the update);
  channel attention and spatial attention, both guided by the mean of the mapped tokens,
  rescale the tokens (x * (0.3 c + 0.05 s + 0.7)); then LayerNorm, grouped 1x1 conv down,
  BatchNorm, ReLU, grouped conv up, BatchNorm, LayerNorm, times a zero-init gate. The official
  token-count convs were sized from `stage.input_resolution` of an old timm, where that is the
  blocks' grid; in timm 1.x a stage's downsample runs first and that attribute is the grid
  before it, so here they are sized from the grid each paired block actually sees.
- Readout: the last visual and audio adapters' spatial maps (a softmax over tokens) pool the
  final tokens, the visual ones after the tower's final norm, the audio ones without it (as
  officially); `pool = "mean"` takes the towers' own pooling instead. On classification tasks
  the AVE code's temporal attention (LSTMs, self- and cross-attention over the segments, gates
  from each modality on the other) turns the per-segment features into 256-wide ones. The
  official AVVP code uses a lighter gating variant on its head's 128-wide projections, and the
  AVS code one that gates its head's 256-channel maps; here AVVP gets the AVE one, and
  segmentation none (the maps go to the harness's decoder as they leave the tower).

Left out, because they never reach the official loss although its training optimises them
(main_trans.py's requires_grad loop trains every `adapter_blocks`, `temporal_attn` and `CMBS`
parameter): each adapter's `gate_tk` (48 scalars on the paper towers), and in the temporal
attention the template layer each encoder and decoder keeps beside the copies it runs
(3,685,376) and the decoders' self-attention (526,336). The official CMBS head is a task head
and, as for every method here, the harness's own head replaces it; the official AVE loss on the
temporal attention's audio-visual gate goes with it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from mettle_core.backbone import Backbone, Unit
from mettle_core.interface import (
    AdaptedEncoder,
    AVFeatures,
    MethodEntry,
    TaskSpec,
    Towers,
    unique_parameters,
    validate_config,
)

CHANNEL_WEIGHT, SPATIAL_WEIGHT = 0.3, 0.05  # the official rescaling x * (0.3 c + 0.05 s + 1 - 0.3)
TEMPORAL_WIDTH = 256  # the AVE temporal attention's model width, and so the features' width after it
TEMPORAL_GAMMA = 0.1  # the AVE temporal attention's gate strength
T = TypeVar("T")


@dataclass
class DgsctConfig:
    """num_tokens: latent tokens per adapter (the official train.sh sets 32; 8 was chosen on
    val by bench/plans/reference.toml on the tiny preset, over 32, each at two learning rates,
    see results/tables/selection.md); reduction: bottleneck D -> D // reduction; groups:
    groups of both bottleneck convs; batchnorm: BatchNorm after each of them; gates: the audio
    adapters' zero-init output gate (the official is_gate; the visual adapters always have one);
    layernorm_before / layernorm_post: LayerNorm before / after the bottleneck; pool: `spatial`
    (the last adapters' spatial maps, officially) or `mean` (the towers' own pooling); temporal:
    the AVE temporal attention over segments on classification tasks, unless the task's head
    runs it (DG-SCT's CMBS head: `ave.head=cmbs`); tower_train_mode: the frozen
    towers follow the model's train mode (drop path, HTS-AT's SpecAugment), as in the official
    main_trans.py, which calls model.train() on the whole model."""

    num_tokens: int = 8
    reduction: int = 8
    groups: int = 2
    batchnorm: bool = True
    gates: bool = True
    layernorm_before: bool = True
    layernorm_post: bool = True
    pool: Literal["spatial", "mean"] = "spatial"
    temporal: bool = True
    tower_train_mode: bool = True

    def __post_init__(self) -> None:
        validate_config(self)
        for name in ("num_tokens", "reduction", "groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DgsctConfig.{name}={value!r} must be an integer >= 1")


@dataclass(frozen=True)
class PairShape:
    """One paired block: the width and token count of the visual and of the audio block."""

    visual_dim: int
    visual_tokens: int
    audio_dim: int
    audio_tokens: int


def pair_units(visual: Backbone, audio: Backbone) -> list[tuple[Unit, Unit]]:
    """(visual unit, audio unit) of every adapted block pair, in order (the rule is in the module docstring)."""
    v_stages, a_stages = _stages(visual), _stages(audio)
    if len(v_stages) != len(a_stages):
        raise ValueError(
            f"DG-SCT pairs the towers stage by stage: the visual tower has {len(v_stages)} stages, "
            f"the audio tower {len(a_stages)}"
        )
    pairs: list[tuple[Unit, Unit]] = []
    for vs, as_ in zip(v_stages, a_stages, strict=True):
        n = min(len(vs), len(as_))
        pairs += zip(last_of_runs(vs, n), last_of_runs(as_, n), strict=True)
    return pairs


def _stages(bb: Backbone) -> list[list[Unit]]:
    stages: dict[int, list[Unit]] = {}
    for u in bb.units:
        stages.setdefault(u.stage, []).append(u)
    return [stages[s] for s in sorted(stages)]


def last_of_runs(items: Sequence[T], n: int) -> list[T]:
    """The last item of each of n equal runs: item floor((j + 1) * len / n) - 1 for j < n."""
    return [items[(j + 1) * len(items) // n - 1] for j in range(n)]


def pair_shapes(visual: Backbone, audio: Backbone) -> list[PairShape]:
    return [PairShape(v.dim, visual.unit_tokens(v), a.dim, audio.unit_tokens(a)) for v, a in pair_units(visual, audio)]


def adapter_param_count(dim: int, tokens: int, other_dim: int, other_tokens: int, cfg: DgsctConfig, gated: bool) -> int:
    """Parameters of one adapter of width `dim` on `tokens` tokens guided by `other_tokens` x `other_dim`."""
    hidden, half = dim // cfg.reduction, dim // 2
    count = other_tokens * tokens + tokens + other_dim * dim + dim  # token-count conv, width map
    count += cfg.num_tokens * dim + 1  # latent tokens and their gate
    count += 2 * (dim * dim + dim) + (dim * half + half) + (half * dim + dim)  # channel attention
    count += 2 * (dim * half + half) + half + 1  # spatial attention
    count += 2 * dim * hidden // cfg.groups  # bottleneck convs, no bias
    count += (2 * hidden + 2 * dim) if cfg.batchnorm else 0
    count += 2 * dim * (int(cfg.layernorm_before) + int(cfg.layernorm_post))
    return count + int(gated)


def temporal_param_count(audio_dim: int, visual_dim: int) -> int:
    """Parameters of the AVE temporal attention on features of these widths (its own widths are fixed)."""
    w, ff = TEMPORAL_WIDTH, 4 * TEMPORAL_WIDTH

    def lstm(inp: int, hid: int) -> int:
        return 2 * (4 * hid * (inp + hid) + 8 * hid)  # two directions, two bias vectors

    layer = 4 * w * w + 4 * w + 2 * w * ff + ff + w + 4 * w  # attention (in, out), feed-forward, two norms

    count = audio_dim * 128 + 128 + visual_dim * 512 + 512  # input projections
    count += lstm(128, 128) + lstm(512, 256)
    count += (512 * w + w) + 2 * layer  # visual encoder
    count += (w * w + w) + 2 * layer  # audio encoder
    count += (w * w + w) + layer + (512 * w + w) + layer  # audio and visual decoders
    return count + 2 * (w + 1)  # gates


def dgsct_param_count(shapes: Sequence[PairShape], cfg: DgsctConfig, temporal: tuple[int, int] | None) -> int:
    """Trainable parameters of DG-SCT: two audio and two visual adapters per pair, plus the
    temporal attention on (audio width, visual width) features when it is used."""
    count = 0
    for s in shapes:
        count += 2 * adapter_param_count(s.visual_dim, s.visual_tokens, s.audio_dim, s.audio_tokens, cfg, True)
        count += 2 * adapter_param_count(s.audio_dim, s.audio_tokens, s.visual_dim, s.visual_tokens, cfg, cfg.gates)
    return count + (temporal_param_count(*temporal) if temporal else 0)


class DgsctAdapter(nn.Module):
    """One adapter guided by the other modality: (own tokens X, other tokens Y) -> (residual for X,
    spatial attention map over X's tokens)."""

    def __init__(self, dim: int, tokens: int, other_dim: int, other_tokens: int, cfg: DgsctConfig, gated: bool) -> None:
        super().__init__()
        hidden, half = dim // cfg.reduction, dim // 2
        if hidden < 1 or dim % cfg.groups or hidden % cfg.groups:
            raise ValueError(
                f"DgsctConfig.reduction={cfg.reduction} / groups={cfg.groups}: width {dim} and bottleneck "
                f"{dim} // {cfg.reduction} = {hidden} must both be positive multiples of groups"
            )
        self.token_map = nn.Conv1d(other_tokens, tokens, 1)  # over the token axis
        self.width_map = nn.Linear(other_dim, dim)
        self.latent = nn.Parameter(torch.rand(cfg.num_tokens, dim))
        self.gate_av = nn.Parameter(torch.zeros(1))
        self.channel_guide = nn.Linear(dim, dim)
        self.channel_own = nn.Linear(dim, dim)
        self.channel_squeeze = nn.Linear(dim, half)
        self.channel_out = nn.Linear(half, dim)
        self.spatial_own = nn.Linear(dim, half)
        self.spatial_guide = nn.Linear(dim, half)
        self.spatial_out = nn.Linear(half, 1)
        self.ln_before = nn.LayerNorm(dim) if cfg.layernorm_before else nn.Identity()
        self.down = nn.Conv1d(dim, hidden, 1, groups=cfg.groups, bias=False)
        self.bn1 = nn.BatchNorm1d(hidden) if cfg.batchnorm else nn.Identity()
        self.up = nn.Conv1d(hidden, dim, 1, groups=cfg.groups, bias=False)
        self.bn2 = nn.BatchNorm1d(dim) if cfg.batchnorm else nn.Identity()
        self.ln_post = nn.LayerNorm(dim) if cfg.layernorm_post else nn.Identity()
        self.gate = nn.Parameter(torch.zeros(1)) if gated else None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [N, L, D] own tokens; y: [N, L', D'] other tower's -> ([N, L, D] residual, [N, L] map)."""
        g = self.width_map(self.token_map(y))  # [N, L, D]: the other tokens on this grid and width
        lat = self.latent.expand(x.shape[0], -1, -1)
        lat = lat + torch.softmax(lat @ g.transpose(1, 2), dim=-1) @ g
        x = x + self.gate_av * torch.softmax(x @ lat.transpose(1, 2), dim=-1) @ lat
        guide = g.mean(dim=1, keepdim=True)  # [N, 1, D]
        joint = (F.relu(self.channel_guide(guide)) * F.relu(self.channel_own(x))).mean(dim=1, keepdim=True)
        channel = torch.sigmoid(self.channel_out(F.relu(self.channel_squeeze(joint))))  # [N, 1, D]
        own = F.relu(self.spatial_own(x * (channel + 1)))
        logit = self.spatial_out(own * F.relu(self.spatial_guide(guide)))  # [N, L, 1]
        x = x * (CHANNEL_WEIGHT * channel + SPATIAL_WEIGHT * torch.sigmoid(logit) + 1 - CHANNEL_WEIGHT)
        z = self.ln_before(x).transpose(1, 2)  # [N, D, L]: the 1x1 convs mix channels per token
        z = self.bn2(self.up(F.relu(self.bn1(self.down(z)))))
        z = self.ln_post(z.transpose(1, 2))
        out = z if self.gate is None else self.gate * z
        return out, torch.softmax(torch.tanh(logit.squeeze(-1)), dim=-1)


class CrossModalLayer(nn.Module):
    """The AVE code's decoder layer: the queries attend over [memory; queries], then a post-norm
    feed-forward (its self-attention, built but never called, is left out)."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(
            nn.Linear(width, 4 * width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(4 * width, width)
        )
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        kv = torch.cat([memory, q], dim=1)
        q = self.norm1(q + self.drop1(self.attn(q, kv, kv, need_weights=False)[0]))
        return self.norm2(q + self.drop2(self.ff(q)))


def _encoder(width: int) -> nn.TransformerEncoder:
    """Two post-norm self-attention layers (4 heads, feed-forward 4x, dropout 0.1), as the AVE code's."""
    layer = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.1, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


class TemporalAttention(nn.Module):
    """The AVE code's temporal attention over the T segments: per-segment features
    ([B, T, D_a], [B, T, D_v]) -> ([B, T, 256], [B, T, 256]). Projections (visual with ReLU and
    dropout 0.2), a bidirectional LSTM per modality, a self-attention encoder per modality, each
    modality's decoder querying the other's encoded sequence, and each output scaled by
    1 + 0.1 * a sigmoid gate from the other modality."""

    def __init__(self, audio_dim: int, visual_dim: int) -> None:
        super().__init__()
        w = TEMPORAL_WIDTH
        self.audio_in = nn.Linear(audio_dim, 128)
        self.visual_in = nn.Sequential(nn.Linear(visual_dim, 512), nn.ReLU(), nn.Dropout(0.2))
        self.audio_rnn = nn.LSTM(128, 128, batch_first=True, bidirectional=True)
        self.visual_rnn = nn.LSTM(512, 256, batch_first=True, bidirectional=True)
        self.audio_encoder = nn.Sequential(nn.Linear(2 * 128, w), _encoder(w))
        self.visual_encoder = nn.Sequential(nn.Linear(2 * 256, w), _encoder(w))
        self.audio_query = nn.Linear(2 * 128, w)
        self.visual_query = nn.Linear(2 * 256, w)
        self.audio_decoder = CrossModalLayer(w, 4, 0.1)
        self.visual_decoder = CrossModalLayer(w, 4, 0.1)
        self.audio_gate = nn.Linear(w, 1)
        self.visual_gate = nn.Linear(w, 1)

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, _ = self.audio_rnn(self.audio_in(a))
        v, _ = self.visual_rnn(self.visual_in(v))
        a_kv, v_kv = self.audio_encoder(a), self.visual_encoder(v)
        a_out = self.audio_decoder(self.audio_query(a), v_kv)
        v_out = self.visual_decoder(self.visual_query(v), a_kv)
        a_out = a_out * (1 + TEMPORAL_GAMMA * torch.sigmoid(self.visual_gate(v_kv)))
        v_out = v_out * (1 + TEMPORAL_GAMMA * torch.sigmoid(self.audio_gate(a_kv)))
        return a_out, v_out


class PairedTowersEncoder(AdaptedEncoder):
    """Separate frozen audio (HTS-AT) and visual (Swin-V2) towers run in lockstep, with four
    adapters (audio and visual, before and after the block) at paired blocks and the official
    AVE temporal attention on classification: what DG-SCT and AVMoE share. A subclass builds
    its adapters between `__init__` and `finish`, so that modules register in one order."""

    method = ""  # for messages

    def __init__(self, audio_bb: Backbone, visual_bb: Backbone, spec: TaskSpec, cfg: Any) -> None:
        super().__init__()
        if visual_bb.family not in ("swinv2", "vit"):
            raise ValueError(
                f"{self.method}'s visual adapters sit beside the visual block's attention and MLP branches, which a "
                f"{visual_bb.family} tower does not expose (use a Swin-V2 or ViT visual tower)"
            )
        self.cfg, self.spec = cfg, spec
        self.audio_bb, self.visual_bb = audio_bb, visual_bb
        for p in self.backbone_parameters():
            p.requires_grad_(False)

    def finish(self) -> None:
        """The temporal attention, the feature widths and the kept maps, once the adapters exist."""
        audio_bb, visual_bb, spec = self.audio_bb, self.visual_bb, self.spec
        # once per pipeline, as officially: a head that holds it (CMBS) runs it in place of the encoder
        use_temporal = self.cfg.temporal and spec.kind == "classification" and not spec.head_attends_time
        self.temporal = TemporalAttention(audio_bb.out_dim, visual_bb.out_dim) if use_temporal else None
        self.audio_dim = TEMPORAL_WIDTH if use_temporal else audio_bb.out_dim
        self.visual_dim = TEMPORAL_WIDTH if use_temporal else visual_bb.out_dim
        self.map_channels = visual_bb.pyramid_channels() if spec.needs_maps else ()
        self._map_units = visual_bb.pyramid_units() if spec.needs_maps else ()
        self.train(self.training)

    def train(self, mode: bool = True) -> PairedTowersEncoder:
        """Adapters follow `mode`; the frozen towers too unless `tower_train_mode` is off."""
        super().train(mode)
        for bb in (self.audio_bb, self.visual_bb):
            bb.train(mode and self.cfg.tower_train_mode)
        return self

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return unique_parameters(self.audio_bb, self.visual_bb)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Adapters and temporal attention at `lr` (the official AVE code trains them at one lr)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr, "name": "adapter"}]


class DgsctEncoder(PairedTowersEncoder):
    """DG-SCT's adapters at every paired block."""

    method = "DG-SCT"

    def __init__(self, audio_bb: Backbone, visual_bb: Backbone, spec: TaskSpec, cfg: DgsctConfig) -> None:
        super().__init__(audio_bb, visual_bb, spec, cfg)
        self.pairs = pair_units(visual_bb, audio_bb)
        shapes = pair_shapes(visual_bb, audio_bb)

        def adapters(visual: bool) -> nn.ModuleList:
            return nn.ModuleList(
                DgsctAdapter(s.visual_dim, s.visual_tokens, s.audio_dim, s.audio_tokens, cfg, True)
                if visual
                else DgsctAdapter(s.audio_dim, s.audio_tokens, s.visual_dim, s.visual_tokens, cfg, cfg.gates)
                for s in shapes
            )

        self.audio_p1, self.visual_p1 = adapters(False), adapters(True)
        self.audio_p2, self.visual_p2 = adapters(False), adapters(True)
        self.finish()

    def _pair(
        self, i: int, v_unit: Unit, a_unit: Unit, xv: torch.Tensor, xa: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One paired block on both streams (NHWC or [N, L, D] as the towers keep them);
        returns them and the second adapters' spatial maps."""
        if v_unit.downsample is not None:
            xv = v_unit.downsample(xv)
        if a_unit.downsample is not None:
            xa = a_unit.downsample(xa)
        vb, ab, blk = self.visual_bb, self.audio_bb, v_unit.block
        sv, sa = xv.shape, xa.shape
        ra, _ = self.audio_p1[i](ab.tokens(xa), vb.tokens(xv))
        rv, _ = self.visual_p1[i](vb.tokens(xv), ab.tokens(xa))
        xv = xv + vb.attn_branch(blk, xv) + rv.reshape(sv)
        xa = a_unit.block(xa) + ra.reshape(sa)
        ra, map_a = self.audio_p2[i](ab.tokens(xa), vb.tokens(xv))
        rv, map_v = self.visual_p2[i](vb.tokens(xv), ab.tokens(xa))
        xv = xv + vb.mlp_branch(blk, xv) + rv.reshape(sv)
        return xv, xa + ra.reshape(sa), map_v, map_a

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> AVFeatures:
        b, t = visual.shape[:2]
        if tuple(audio.shape[:2]) != (b, t):
            raise ValueError(f"audio {tuple(audio.shape[:2])} and visual {(b, t)} must pair up segment by segment")
        vb, ab = self.visual_bb, self.audio_bb
        xv = vb.embed(vb.prepare(visual.flatten(0, 1), "visual"))
        xa = ab.embed(ab.prepare(audio.flatten(0, 1), "audio"))
        kept: dict[int, torch.Tensor] = {}
        nv = na = 0  # the next unit of each tower to run

        def run_visual(upto: int, x: torch.Tensor) -> torch.Tensor:
            for unit in vb.units[nv:upto]:
                x = vb.run_unit(unit, x)
                if unit.index in self._map_units:
                    kept[unit.index] = x
            return x

        for i, (v_unit, a_unit) in enumerate(self.pairs):
            xv = run_visual(v_unit.index, xv)
            for unit in ab.units[na : a_unit.index]:
                xa = ab.run_unit(unit, xa)
            xv, xa, map_v, map_a = self._pair(i, v_unit, a_unit, xv, xa)
            if v_unit.index in self._map_units:
                kept[v_unit.index] = xv
            nv, na = v_unit.index + 1, a_unit.index + 1
        # every tower's last unit is paired (pair_units), so nothing runs after the last pair
        if self.cfg.pool == "spatial":
            v = (map_v.unsqueeze(1) @ vb.tokens(vb.final_norm(xv))).squeeze(1)
            a = (map_a.unsqueeze(1) @ ab.tokens(xa)).squeeze(1)
        else:
            v, a = vb.pool(xv), ab.pool(xa)
        a, v = a.reshape(b, t, -1), v.reshape(b, t, -1)
        if self.temporal is not None:
            a, v = self.temporal(a, v)
        maps = [vb.grid(kept[i]) for i in self._map_units] if self.spec.needs_maps else None
        return AVFeatures(a=a, v=v, maps=maps)


def build(towers: Towers, spec: TaskSpec, cfg: DgsctConfig) -> DgsctEncoder:
    return DgsctEncoder(towers.audio, towers.visual, spec, cfg)


METHOD = MethodEntry(
    "dgsct",
    DgsctConfig,
    build,
    "DG-SCT (Duan et al., NeurIPS 2023): adapters guided by the other modality (latent tokens, channel and "
    "spatial attention) at paired blocks of separate frozen towers, temporal attention on classification.",
    towers=("audio", "visual"),
    version=2,  # 2: no temporal attention of its own under a head that runs it (ave.head=cmbs)
    train_defaults={"lr": 1e-3},  # chosen on val with num_tokens (bench/plans/reference.toml)
)
