"""LoRA through peft: every LoRA weight learns on both families, base weights never move, counts match."""

from __future__ import annotations

import pytest
import torch
from baseline_helpers import (
    CLS,
    SEG,
    assert_state_dict_round_trip,
    av_batch,
    logit_only_params,
    preset_towers,
    probe_loss,
)

from baselines.lora import LoraMethodConfig, build, lora_param_count, target_linears
from mettle_core.interface import TaskSpec

TARGETS = ("qkv", "qkv_proj", "all_linear")


@pytest.mark.parametrize("targets", TARGETS)
def test_param_count_formula(family: str, targets: str) -> None:
    towers = preset_towers(family)
    shapes = [
        (m.in_features, m.out_features)
        for bb in (towers.audio, towers.visual)
        for m in target_linears(bb.model, targets).values()
    ]
    enc = build(towers, CLS, LoraMethodConfig(r=4, targets=targets))
    trainable = {n: p for n, p in enc.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in trainable)
    assert sum(p.numel() for p in trainable.values()) == lora_param_count(shapes, 4)
    assert len(trainable) == 2 * len(shapes)  # one A and one B per wrapped Linear


@pytest.mark.parametrize("targets", TARGETS)
def test_every_lora_param_learns_and_base_is_unchanged(family: str, targets: str) -> None:
    enc = build(preset_towers(family), CLS, LoraMethodConfig(targets=targets))
    if family == "smoke":  # Swin-V2's attention must call its wrapped qkv; HTS-AT's (Swin-V1) always does
        attns = [m for m in enc.visual_bb.modules() if type(m).__name__ == "WindowAttention"]
        assert attns and all(m.qkv_bias_separate for m in attns)
    base = {n: p.detach().clone() for n, p in enc.named_parameters() if not p.requires_grad}
    lora = {n: p for n, p in enc.named_parameters() if p.requires_grad}
    dead = logit_only_params(enc)
    opt = torch.optim.SGD(enc.param_groups(0.1)[0]["params"], lr=0.1)
    audio, visual = av_batch(family)
    for _ in range(2):  # peft zero-inits lora_B, so lora_A only gets a gradient after one step
        opt.zero_grad()
        probe_loss(enc, audio, visual).backward()
        opt.step()
    for n, p in lora.items():
        assert p.grad is not None and (p.grad.abs().sum() > 0) != (n in dead), n
    assert dead <= set(lora) | set(base)
    for n, p in enc.named_parameters():
        if n in base:
            assert p.grad is None and torch.equal(p, base[n]), n


def test_swin_fused_qkv_would_bypass_lora() -> None:
    """Why qkv_bias_separate is set: without it timm's F.linear path skips the wrapped qkv,
    leaving the (qkv-only) LoRA weights off the graph."""
    enc = build(preset_towers("smoke"), CLS, LoraMethodConfig())
    enc.audio_bb.requires_grad_(False)  # the HTS-AT audio tower calls qkv(x) itself: look at the Swin-V2 alone
    assert probe_loss(enc, *av_batch("smoke")).requires_grad
    for m in enc.modules():
        if hasattr(m, "qkv_bias_separate"):
            m.qkv_bias_separate = False
    assert not probe_loss(enc, *av_batch("smoke")).requires_grad


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="LoraMethodConfig.targets"):
        LoraMethodConfig(targets="mlp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="LoraMethodConfig.r"):
        LoraMethodConfig(r=0)


@pytest.mark.parametrize("spec", [CLS, SEG], ids=["cls", "seg"])
def test_state_dict_round_trip(family: str, spec: TaskSpec) -> None:
    assert_state_dict_round_trip(lambda t: build(t, spec, LoraMethodConfig()), family)
