"""`lora`: low-rank updates on the attention projections of both separate towers, via peft.

peft's `inject_adapter_in_model` wraps the targeted timm Linear layers in place, so the
towers stay timm modules that `Backbone` can still run block by block.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from baselines.pooled import PooledTowersEncoder
from mettle_core.backbone import Backbone
from mettle_core.interface import MethodEntry, TaskSpec, Towers, validate_config

Targets = Literal["qkv", "qkv_proj", "all_linear"]


@dataclass
class LoraMethodConfig:
    """r: rank; alpha: peft's lora_alpha (update scaled by alpha / r); dropout: on the LoRA input;
    targets: qkv (fused q/k/v projection) | qkv_proj (plus attn.proj) | all_linear (every nn.Linear)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: Targets = "qkv"

    def __post_init__(self) -> None:
        validate_config(self)
        if self.r < 1:
            raise ValueError(f"LoraMethodConfig.r={self.r!r} must be >= 1")
        if not self.alpha > 0:
            raise ValueError(f"LoraMethodConfig.alpha={self.alpha!r} must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraMethodConfig.dropout={self.dropout!r} must be in [0, 1)")


def target_linears(model: nn.Module, targets: Targets) -> dict[str, nn.Linear]:
    """The Linear layers of a (not yet wrapped) tower that `targets` selects, by module name."""
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if targets == "all_linear":
        return linears
    suffixes = (".qkv",) if targets == "qkv" else (".qkv", ".attn.proj")
    return {n: m for n, m in linears.items() if n.endswith(suffixes)}


def lora_param_count(shapes: Iterable[tuple[int, int]], r: int) -> int:
    """Trainable LoRA parameters: A [r, d_in] + B [d_out, r] per targeted (d_in, d_out) Linear."""
    return sum(r * (d_in + d_out) for d_in, d_out in shapes)


def inject_lora(bb: Backbone, cfg: LoraMethodConfig) -> None:
    """Wrap the targeted layers of one tower in place and leave only LoRA weights trainable."""
    names = sorted(target_linears(bb.model, cfg.targets))
    if not names:
        name = type(bb.model).__name__
        raise ValueError(f"LoraMethodConfig.targets={cfg.targets!r} selects no Linear layer in {name}")
    for m in bb.model.modules():
        # timm's Swin-V2 attention calls F.linear(x, qkv.weight) when it has a q bias, which
        # bypasses a wrapped qkv; the separate-bias path calls qkv(x) and is the same maths.
        if hasattr(m, "qkv_bias_separate"):
            m.qkv_bias_separate = True
    peft_cfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=names, bias="none")
    inject_adapter_in_model(peft_cfg, bb.model)
    for n, p in bb.named_parameters():
        p.requires_grad_("lora_" in n)


class LoraEncoder(PooledTowersEncoder):
    """Pooled towers whose only trainable weights are the injected LoRA factors."""

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """The pretrained tower weights, without the LoRA factors that live inside the towers."""
        names = {id(p): n for bb in (self.audio_bb, self.visual_bb) for n, p in bb.named_parameters()}
        return (p for p in super().backbone_parameters() if "lora_" not in names[id(p)])


def build(towers: Towers, spec: TaskSpec, cfg: LoraMethodConfig) -> LoraEncoder:
    for bb in {id(b): b for b in (towers.audio, towers.visual)}.values():
        inject_lora(bb, cfg)
    return LoraEncoder(towers.audio, towers.visual, spec, trainable=True)


METHOD = MethodEntry(
    "lora",
    LoraMethodConfig,
    build,
    "LoRA (peft) on the attention projections of both separate towers.",
    towers=("audio", "visual"),
    train_defaults={"lr": 3e-3},  # chosen on val over rank and targets (bench/plans/reference.toml)
)
