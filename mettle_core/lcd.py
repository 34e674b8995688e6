"""Layer-Centric Distillation (LCD): a few learned meta-tokens read each frozen layer.

What the paper states (only its abstract and figure captions were available): LCD distils
each frozen layer's intact tokens into K << N learnable meta-tokens, per layer, per modality
and per timestamp; the meta-tokens act as queries and the frozen tokens as keys and values;
two parallel mechanisms serve "pretrained knowledge preservation" and "task-specific
adaptation"; for classification the per-layer meta-tokens are averaged over layers; no
gradient goes through the backbone.

What is ours: everything else here. Preservation is attention of the meta-tokens over the
frozen tokens, parameter-free (or through learned low-rank projections); adaptation is a
gated bottleneck beside it (or after it); a layer's output is LayerNorm(M + read + gate *
adapt); one set of meta-tokens per layer serves every timestamp; layers narrower than the
top reach its width through one projection per stage; the K tokens reach the head through
a pooling we chose. For memory, the frozen tokens are never anything but keys and values, so
autograd needs to keep only them (once, optionally in bf16): the attention recomputes its
weights in backward, and an LCD may recompute its K-token intermediates too. For time, the
LCDs of one stage are one batched operation over parameters stacked by layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

Preserve = Literal["attention", "lowrank"]
Order = Literal["parallel", "series"]
Aggregate = Literal["mean", "learned_weights", "last"]
Width = Literal["stage", "block"]
Pool = Literal["mean", "attention", "concat"]


class _MetaAttention(torch.autograd.Function):
    """softmax(q X^T / sqrt(D)) X with X frozen; q's leading dimensions broadcast over X's.

    Saves only q and X (at X's own dtype) and recomputes the attention in backward: plain
    autograd would also keep the [..., K, L] weights and, for bf16 features, an fp32 copy
    of X, which is what the memory floor must not contain.
    """

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(q, x)
        with torch.autocast(q.device.type, enabled=False):  # the precision backward recomputes in
            xf = x.to(q.dtype)
            return _weights(q, xf) @ xf

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        q, x = ctx.saved_tensors
        with torch.autocast(q.device.type, enabled=False):
            xf = x.to(q.dtype)
            attn = _weights(q, xf)
            d_attn = grad.to(q.dtype) @ xf.transpose(-1, -2)
            d_logits = attn * (d_attn - (d_attn * attn).sum(-1, keepdim=True))
            return (d_logits @ xf * q.shape[-1] ** -0.5).sum_to_size(q.shape), None


def _weights(q: torch.Tensor, xf: torch.Tensor) -> torch.Tensor:
    return torch.softmax(q @ xf.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)


def meta_attention(q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Queries q [..., K, D] (trainable) attend over frozen tokens x [..., L, D] -> [..., K, D]
    in q's dtype; q's leading dimensions broadcast (one set of queries for every frame)."""
    return _MetaAttention.apply(q, x)


class _Recompute(torch.autograd.Function):
    """`fn(x, *params)` without keeping its intermediates; backward runs it again.

    Activation checkpointing for a K-token computation: it saves x (the kept frozen tokens,
    which are the memory floor anyway) and the parameters, and recomputes under the forward
    pass's autocast state. Unlike torch.utils.checkpoint it holds x through
    save_for_backward, so memory accounting with saved_tensors_hooks still sees it.
    """

    @staticmethod
    def forward(ctx: Any, fn: Callable[..., torch.Tensor], x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        ctx.fn = fn
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.save_for_backward(x, *params)
        return fn(x, *params)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, *params = ctx.saved_tensors
        leaves = [p.detach().requires_grad_(need) for p, need in zip(params, ctx.needs_input_grad[2:], strict=True)]
        device, enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
            out = ctx.fn(x, *leaves)
        wanted = [p for p in leaves if p.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad) if wanted else ())
        return None, None, *(next(grads) if p.requires_grad else None for p in leaves)


def _uniform(*shape: int, fan_in: int) -> nn.Parameter:
    """nn.Linear's default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for stacked weights."""
    bound = fan_in**-0.5
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


def _read_attention(m: torch.Tensor, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    return meta_attention(m, x)


def _read_lowrank(m: torch.Tensor, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Learned rank-r projections of queries, keys and values; autograd keeps the [.., L, r]
    keys and values (and an fp32 copy of bf16 features) unless the LCD recomputes."""
    xf = x.to(m.dtype)
    q = (m @ p["q_weight"].unsqueeze(1)).expand(-1, x.shape[1], -1, -1)
    k, v = xf @ p["k_weight"].unsqueeze(1), xf @ p["v_weight"].unsqueeze(1)
    return F.scaled_dot_product_attention(q, k, v) @ p["o_weight"].unsqueeze(1)


READS: dict[str, Callable[[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]] = {
    "attention": _read_attention,
    "lowrank": _read_lowrank,
}


def _adapt(h: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-layer bottleneck D -> D/r -> D on [n, N, K, D], one batched matmul for all n layers."""
    n, b, k, d = h.shape
    hidden = F.gelu(torch.baddbmm(p["down_bias"].unsqueeze(1), h.reshape(n, b * k, d), p["down_weight"]))
    return torch.baddbmm(p["up_bias"].unsqueeze(1), hidden, p["up_weight"]).view(n, b, k, d)


def distil(x: torch.Tensor, p: dict[str, torch.Tensor], preserve: Preserve, order: Order) -> torch.Tensor:
    """Frozen tokens x [n, N, L, D] of n layers, parameters `p` stacked over the same n layers
    -> meta-tokens [n, N, K, D].

    read = attention of M over x (preservation); in `parallel` the adaptation branch reads
    what preservation read, in `series` it reads M + read; out = LayerNorm(M + read +
    gate * adapt) with a per-layer affine.
    """
    m = p["meta"].unsqueeze(1)  # [n, 1, K, D]: one set per layer for every frame
    read = READS[preserve](m, x, p)
    h = m + read
    if "gate" in p:
        adapted = _adapt(read if order == "parallel" else h, p)
        h = h + p["gate"].view(-1, 1, 1, 1) * adapted
    out = F.layer_norm(h, h.shape[-1:])
    return out * p["norm_weight"][:, None, None] + p["norm_bias"][:, None, None]


class LCD(nn.Module):
    """The LCDs of `layers` frozen layers of width `dim` (one stage), each with its own
    `num_tokens` meta-tokens, adaptation branch and output norm, stacked by layer.

    `batched` runs all layers as one operation (one attention call, two batched matmuls);
    otherwise layer by layer, with the same parameters (the reference the batched form must
    equal, and the launch count it saves). `recompute` keeps only the frozen tokens for
    backward and recomputes the K-token intermediates there; otherwise autograd keeps them
    (a few percent of the floor: O(K) per layer). The adaptation gate starts at zero, so
    training starts from pure preservation.
    """

    NO_DECAY = ("meta", "gate", "norm_weight", "norm_bias", "down_bias", "up_bias")  # tokens, gates, norms, biases

    def __init__(
        self,
        dim: int,
        num_tokens: int,
        layers: int = 1,
        preserve: Preserve = "attention",
        rank_ratio: int = 8,
        adapt: bool = True,
        bottleneck_ratio: int = 8,
        order: Order = "parallel",
        init_std: float = 1.0,
        batched: bool = True,
        recompute: bool = True,
    ) -> None:
        super().__init__()
        self.layers = layers
        self.preserve: Preserve = preserve
        self.order: Order = order
        self.batched = batched
        self.recompute = recompute
        self.meta = nn.Parameter(torch.empty(layers, num_tokens, dim))
        nn.init.trunc_normal_(self.meta, std=init_std, a=-2 * init_std, b=2 * init_std)
        if preserve == "lowrank":
            rank = max(1, dim // rank_ratio)
            self.q_weight = _uniform(layers, dim, rank, fan_in=dim)
            self.k_weight = _uniform(layers, dim, rank, fan_in=dim)
            self.v_weight = _uniform(layers, dim, rank, fan_in=dim)
            self.o_weight = _uniform(layers, rank, dim, fan_in=rank)
        if adapt:
            hidden = max(1, dim // bottleneck_ratio)
            self.down_weight = _uniform(layers, dim, hidden, fan_in=dim)
            self.down_bias = _uniform(layers, hidden, fan_in=dim)
            self.up_weight = _uniform(layers, hidden, dim, fan_in=hidden)
            self.up_bias = _uniform(layers, dim, fan_in=hidden)
            self.gate = nn.Parameter(torch.zeros(layers))
        self.norm_weight = nn.Parameter(torch.ones(layers, dim))
        self.norm_bias = nn.Parameter(torch.zeros(layers, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen tokens x [layers, N, L, D] (any float dtype, no grad) -> meta-tokens [layers, N, K, D]."""
        names, values = zip(*self.named_parameters(), strict=True)
        fn = partial(self._distil, names)
        parts = [slice(None)] if self.batched else [slice(j, j + 1) for j in range(self.layers)]
        outs = [self._call(fn, x[s], [v[s] for v in values]) for s in parts]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _call(self, fn: Callable[..., torch.Tensor], x: torch.Tensor, values: list[torch.Tensor]) -> torch.Tensor:
        return _Recompute.apply(fn, x, *values) if self.recompute else fn(x, *values)

    def _distil(self, names: Sequence[str], x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return distil(x, dict(zip(names, values, strict=True)), self.preserve, self.order)


def lcd_param_count(
    dim: int,
    num_tokens: int,
    preserve: Preserve = "attention",
    rank_ratio: int = 8,
    adapt: bool = True,
    bottleneck_ratio: int = 8,
) -> int:
    """Trainable parameters of one layer's LCD (closed form, for contract tests and reports)."""
    n = num_tokens * dim + 2 * dim  # meta-tokens + the output norm's affine
    if preserve == "lowrank":
        n += 4 * dim * max(1, dim // rank_ratio)
    if adapt:
        hidden = max(1, dim // bottleneck_ratio)
        n += 2 * dim * hidden + hidden + dim + 1  # down, up (with biases), gate
    return n


class _Identity(nn.Module):
    """A stage at the top width: its weighted sum of layers as it is."""

    def forward(self, m: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.einsum("n,nbkd->bkd", w, m)


class _Projection(nn.Module):
    """Affine maps of a stage's layers to the top width: one for the stage (`per_layer` False),
    applied once to the stage's weighted sum of layers, which equals applying it to every
    layer and summing, the map being affine; or one per layer (the ablation)."""

    NO_DECAY = ("bias",)

    def __init__(self, layers: int, dim_in: int, dim_out: int, per_layer: bool) -> None:
        super().__init__()
        n = layers if per_layer else 1
        self.weight = _uniform(n, dim_in, dim_out, fan_in=dim_in)
        self.bias = _uniform(n, dim_out, fan_in=dim_in)

    def forward(self, m: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.weight.shape[0] == 1:
            return torch.einsum("n,nbkd->bkd", w, m) @ self.weight[0] + w.sum() * self.bias[0]
        return torch.einsum("n,nbkd,nde->bke", w, m, self.weight) + w @ self.bias


class LayerAggregate(nn.Module):
    """Per-layer meta-tokens of a tower's stages, each [n_s, N, K, D_s], -> one [N, K, D] at
    the top stage's width D.

    `mean` is the paper's average over layers; `learned_weights` a softmax over per-layer
    logits (starting at the mean); `last` a single layer (the encoder then reads only the top
    block). A stage narrower than D reaches it through projections (`width`): `stage`, one per
    stage; `block`, one per layer (an ablation: on Swin-V2-L that alone was 21 M parameters,
    2.5 x all of LAVisH).
    """

    def __init__(self, stages: Sequence[tuple[int, int]], mode: Aggregate = "mean", width: Width = "stage") -> None:
        """`stages`: (layers, width) of each stage, the top one last."""
        super().__init__()
        self.sizes = [layers for layers, _ in stages]
        if mode == "last" and sum(self.sizes) != 1:
            raise ValueError(f"aggregate='last' reads one layer, got {sum(self.sizes)}")
        dim = stages[-1][1]
        self.proj = nn.ModuleList(
            _Identity() if w == dim else _Projection(layers, w, dim, per_layer=width == "block") for layers, w in stages
        )
        self.logits = nn.Parameter(torch.zeros(sum(self.sizes))) if mode == "learned_weights" else None

    def forward(self, metas: Sequence[torch.Tensor]) -> torch.Tensor:
        ref = metas[-1]
        if self.logits is None:
            total = sum(self.sizes)
            weights = torch.full((total,), 1 / total, dtype=ref.dtype, device=ref.device)
        else:
            weights = self.logits.softmax(0)
        parts = zip(self.proj, metas, weights.split(self.sizes), strict=True)
        return torch.stack([proj(m, w) for proj, m, w in parts]).sum(0)


def aggregate_param_count(stages: Sequence[tuple[int, int]], mode: Aggregate = "mean", width: Width = "stage") -> int:
    """Trainable parameters of `LayerAggregate` over (layers, width) stages, the top one last."""
    dim = stages[-1][1]
    n = sum((layers if width == "block" else 1) * (w + 1) * dim for layers, w in stages if w != dim)
    return n + (sum(layers for layers, _ in stages) if mode == "learned_weights" else 0)


class _MeanPool(nn.Module):
    def __init__(self, dim: int, num_tokens: int) -> None:
        super().__init__()

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        return m.mean(-2)


class _AttentionPool(nn.Module):
    """A learned query scores the K tokens; it starts at zero, so pooling starts as the mean."""

    def __init__(self, dim: int, num_tokens: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(dim))

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(m @ self.query * m.shape[-1] ** -0.5, dim=-1)
        return (w.unsqueeze(-1) * m).sum(-2)


class _ConcatPool(nn.Module):
    """The K tokens side by side, projected back to D; the projection starts as the mean, so
    training starts where `mean` does. K * D^2 parameters."""

    def __init__(self, dim: int, num_tokens: int) -> None:
        super().__init__()
        self.proj = nn.Linear(num_tokens * dim, dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(dim).repeat(1, num_tokens) / num_tokens)
            self.proj.bias.zero_()

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        return self.proj(m.flatten(-2))


POOLS: dict[str, type[nn.Module]] = {"mean": _MeanPool, "attention": _AttentionPool, "concat": _ConcatPool}


def token_pool(kind: Pool, dim: int, num_tokens: int) -> nn.Module:
    """How the K meta-tokens [N, K, D] of a frame reach the head as one [N, D]. The paper
    averages meta-tokens over layers; how it pools the K tokens of a layer is not stated."""
    return POOLS[kind](dim, num_tokens)


def pool_param_count(kind: Pool, dim: int, num_tokens: int) -> int:
    return {"mean": 0, "attention": dim, "concat": num_tokens * dim * dim + dim}[kind]
