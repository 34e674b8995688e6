"""Layer-Centric Distillation (LCD): a few learned meta-tokens read one frozen layer.

The frozen tokens X of a layer are only ever used as keys and values, never as
something that needs a gradient, so the backbone runs under no_grad and the only
thing autograd keeps per layer is X itself (once, optionally in bf16) plus the
small activations of K meta-tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

Preserve = Literal["attention", "lowrank"]
Aggregate = Literal["mean", "learned_weights", "last"]


class _MetaAttention(torch.autograd.Function):
    """softmax(q X^T / sqrt(D)) X with X frozen.

    Saves only q and X (at X's own dtype) and recomputes the attention in backward:
    plain autograd would also keep the [N, K, L] weights and, for bf16 features, an
    fp32 copy of X, which is what the memory floor must not contain.
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
            d_attn = grad.to(q.dtype) @ xf.transpose(1, 2)
            d_logits = attn * (d_attn - (d_attn * attn).sum(-1, keepdim=True))
            return d_logits @ xf * q.shape[-1] ** -0.5, None


def _weights(q: torch.Tensor, xf: torch.Tensor) -> torch.Tensor:
    return torch.softmax(q @ xf.transpose(1, 2) * q.shape[-1] ** -0.5, dim=-1)


def meta_attention(q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Queries q [N, K, D] (trainable) attend over frozen tokens x [N, L, D] -> [N, K, D] in q's dtype."""
    return _MetaAttention.apply(q, x)


class LCD(nn.Module):
    """Distil one frozen layer of width `dim` into `num_tokens` meta-tokens per frame.

    m = LayerNorm(M + p + gate * adapt(M + p)), p = attention of M over the frozen tokens.
    The gate starts at zero so that training starts from pure preservation. The `lowrank`
    variant projects the tokens with ordinary layers, so autograd also keeps an fp32 copy
    of bf16 features and the [N, L, D/rank_ratio] keys and values.
    """

    def __init__(
        self,
        dim: int,
        num_tokens: int,
        preserve: Preserve = "attention",
        rank_ratio: int = 8,
        adapt: bool = True,
        bottleneck_ratio: int = 8,
    ) -> None:
        super().__init__()
        self.meta = nn.Parameter(torch.empty(num_tokens, dim))
        nn.init.trunc_normal_(self.meta, std=0.02)
        self.preserve = preserve
        if preserve == "lowrank":
            rank = max(1, dim // rank_ratio)
            self.q = nn.Linear(dim, rank, bias=False)
            self.k = nn.Linear(dim, rank, bias=False)
            self.v = nn.Linear(dim, rank, bias=False)
            self.o = nn.Linear(rank, dim, bias=False)
        self.adapt: nn.Sequential | None = None
        if adapt:
            hidden = max(1, dim // bottleneck_ratio)
            self.adapt = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            self.gate = nn.Parameter(torch.zeros(()))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen tokens x [N, L, D] (any float dtype, no grad) -> meta-tokens [N, K, D] in fp32."""
        m = self.meta.unsqueeze(0).expand(x.shape[0], -1, -1)
        if self.preserve == "attention":
            p = meta_attention(m, x)
        else:
            xf = x.to(m.dtype)
            p = self.o(F.scaled_dot_product_attention(self.q(m), self.k(xf), self.v(xf)))
        h = m + p
        if self.adapt is not None:
            h = h + self.gate * self.adapt(h)
        return self.norm(h)


def lcd_param_count(
    dim: int,
    num_tokens: int,
    preserve: Preserve = "attention",
    rank_ratio: int = 8,
    adapt: bool = True,
    bottleneck_ratio: int = 8,
) -> int:
    """Trainable parameters of one `LCD` (closed form, for contract tests and reports)."""
    n = num_tokens * dim + 2 * dim  # meta-tokens + LayerNorm
    if preserve == "lowrank":
        n += 4 * dim * max(1, dim // rank_ratio)
    if adapt:
        hidden = max(1, dim // bottleneck_ratio)
        n += 2 * dim * hidden + hidden + dim + 1  # down, up (with biases), gate
    return n


class LayerAggregate(nn.Module):
    """Combine per-layer meta-tokens [N, K, D_l] into one [N, K, D] with D = widths[-1].

    Layers narrower than the last (Swin stages) get a Linear projection; `mean` is the
    paper's average, `learned_weights` a softmax over per-layer logits (starting at the
    mean), `last` expects a single layer (the encoder then selects only the top one).
    """

    def __init__(self, widths: Sequence[int], mode: Aggregate = "mean") -> None:
        super().__init__()
        if mode == "last" and len(widths) != 1:
            raise ValueError(f"aggregate='last' reads one layer, got {len(widths)}")
        dim = widths[-1]
        self.dim = dim
        self.mode = mode
        self.proj = nn.ModuleList(nn.Identity() if w == dim else nn.Linear(w, dim) for w in widths)
        self.logits = nn.Parameter(torch.zeros(len(widths))) if mode == "learned_weights" else None

    def forward(self, metas: Sequence[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack([proj(m) for proj, m in zip(self.proj, metas, strict=True)])
        if self.logits is None:
            return stacked.mean(0)
        return torch.einsum("l,l...->...", self.logits.softmax(0), stacked)


def aggregate_param_count(widths: Sequence[int], mode: Aggregate = "mean") -> int:
    dim = widths[-1]
    n = sum((w + 1) * dim for w in widths if w != dim)
    return n + (len(widths) if mode == "learned_weights" else 0)
