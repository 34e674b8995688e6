"""Contract of the Mettle encoder: gradients, parameter count, memory, switches, state dict."""

from __future__ import annotations

from typing import get_args, get_type_hints

import pytest
import torch
from mettle_helpers import CLS, SEG, av_batch, probe_loss, saved_bytes, towers, vit
from tiny import assert_state_dict_round_trip

import mettle_core
from mettle_core import MettleConfig, MettleEncoder, kept_feature_bytes, mettle_param_count, select_layers
from mettle_core.interface import TaskSpec, Towers
from mettle_core.method import METHOD

FAMILIES = ("vit", "swinv2")
SPECS = pytest.mark.parametrize("spec", [CLS, SEG], ids=["cls", "seg"])


def build(family: str, spec: TaskSpec = CLS, seed: int = 0, **overrides: object) -> MettleEncoder:
    audio_bb, visual_bb = towers(family, seed)
    return MettleEncoder(audio_bb, visual_bb, spec, MettleConfig(**overrides))  # type: ignore[arg-type]


def set_gates(enc: MettleEncoder, value: float) -> None:
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name.endswith("gate"):
                p.fill_(value)


def trainable_count(enc: MettleEncoder) -> int:
    return sum(p.numel() for p in enc.parameters() if p.requires_grad)


def test_registered_build_uses_the_separate_towers() -> None:
    audio_bb, visual_bb = towers("vit")
    shared = vit(3)
    entry = METHOD
    assert entry.config_cls is mettle_core.MettleConfig
    enc = entry.build(Towers(audio_bb, visual_bb, shared), CLS, MettleConfig())
    assert isinstance(enc, MettleEncoder) and enc.audio_bb is audio_bb and enc.visual_bb is visual_bb
    (group,) = enc.param_groups(1e-3)
    assert group["name"] == "mettle" and group["lr"] == 1e-3
    assert {id(p) for p in group["params"]} == {id(p) for p in enc.parameters() if p.requires_grad}


@pytest.mark.parametrize("family", FAMILIES)
@SPECS
@pytest.mark.parametrize(
    "overrides", [{}, {"preserve": "lowrank", "aggregate": "learned_weights"}], ids=["default", "lowrank"]
)
def test_gradients_reach_every_mettle_parameter_and_no_backbone_parameter(
    family: str, spec: TaskSpec, overrides: dict[str, object]
) -> None:
    enc = build(family, spec, **overrides)
    set_gates(enc, 0.5)  # open every gate so that each parameter has a non-zero gradient
    enc.train()
    assert enc.training and not enc.audio_bb.training and not enc.visual_bb.training
    probe_loss(enc, *av_batch()).backward()
    backbone = list(enc.backbone_parameters())
    assert backbone and all(not p.requires_grad and p.grad is None for p in backbone)
    for name, p in enc.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_zero_gates_leave_the_adaptation_branch_without_gradient_at_init() -> None:
    enc = build("vit")
    probe_loss(enc, *av_batch()).backward()
    for name, p in enc.named_parameters():
        if ".adapt." in name:
            assert p.grad is not None and torch.count_nonzero(p.grad) == 0, name
        elif name.endswith("gate"):
            assert p.grad is not None and p.grad.abs() > 0, name


@pytest.mark.parametrize("family", FAMILIES)
@SPECS
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"preserve": "lowrank", "rank_ratio": 4, "aggregate": "learned_weights", "num_tokens": 3},
        {"adapt": False, "layers": "every_k", "every_k": 2},
        {"layers": "last_n", "last_n": 2, "bottleneck_ratio": 2, "mti": False},
    ],
)
def test_param_count_matches_formula(family: str, spec: TaskSpec, overrides: dict[str, object]) -> None:
    enc = build(family, spec, **overrides)
    cfg = enc.cfg
    if spec.needs_maps:
        widths = ([enc.audio_bb.out_dim], [enc.visual_bb.out_dim])
        channels: tuple[int, ...] | None = enc.visual_bb.pyramid_channels()
    else:
        widths = tuple([bb.units[i].dim for i in select_layers(bb.depth, cfg)] for bb in (enc.audio_bb, enc.visual_bb))
        channels = None
    assert trainable_count(enc) == mettle_param_count(cfg, *widths, channels)


def test_param_count_by_hand() -> None:
    # LCD(D), K=8, r=8: meta 8D + LayerNorm 2D + down D*D/8 + D/8 + up D/8*D + D + gate 1.
    # ViT D=32: 256 + 64 + 132 + 160 + 1 = 613, three blocks, two towers.
    assert trainable_count(build("vit")) == 2 * 3 * 613
    # Swin-V2 widths 16, 32, 64, 64, 64, 128: LCDs 243 + 613 + 3 * 1737 + 5521 = 11588, plus
    # projections of the five narrower blocks to 128: (17 + 33 + 3 * 65) * 128 = 31360; HTS-AT
    # widths 16, 32, 64, 128: 243 + 613 + 1737 + 5521 = 8114 and (17 + 33 + 65) * 128 = 14720.
    assert trainable_count(build("swinv2")) == 11588 + 31360 + 8114 + 14720


def test_activation_bytes_grow_with_depth_only_by_kept_features_and_lcd() -> None:
    """Everything autograd saves is, per read layer and tower, the kept frozen tokens plus
    LCD activations on K tokens; nothing else depends on depth."""
    audio, visual = av_batch()
    frames, tokens, dim, k, hidden = 4, 17, 32, 8, 4  # B*T, 16 patches + class token, D, K, D/r
    kept = frames * tokens * dim * 4
    # fp32 [N, K, D]: bottleneck input, adapt output (kept by the gate product), LayerNorm
    # input; [N, K, D/r]: GELU input and output; [N, K]: LayerNorm mean and rstd.
    lcd = 4 * frames * k * (3 * dim + 2 * hidden + 2)
    probe = 2 * frames * dim * 4  # the probe loss's two random projections

    def measure(depth: int) -> tuple[int, int]:
        torch.manual_seed(0)
        enc = MettleEncoder(vit(1, depth), vit(3, depth), CLS, MettleConfig())
        saved = saved_bytes(enc, lambda: probe_loss(enc, audio, visual).backward())
        return saved, kept_feature_bytes(enc, audio, visual)

    (saved2, kept2), (saved4, kept4) = measure(2), measure(4)
    assert saved4 - saved2 == 2 * 2 * (kept + lcd)
    assert kept4 - kept2 == 2 * 2 * kept
    assert saved2 == 2 * 2 * (kept + lcd) + probe


CHOICES = [
    (name, value)
    for name, hint in get_type_hints(MettleConfig).items()
    for value in (get_args(hint) if hint is not bool else (True, False))
    if name != "mti"
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("field", "value"), CHOICES)
def test_every_switch_value_runs(family: str, field: str, value: object) -> None:
    enc = build(family, CLS, **{"last_n": 2, field: value})
    audio, visual = av_batch(b=3, t=2)
    out = enc(audio, visual)
    assert out.a.shape == (3, 2, enc.audio_bb.out_dim) and out.v.shape == (3, 2, enc.visual_bb.out_dim)
    assert out.a.dtype == out.v.dtype == torch.float32 and out.maps is None
    assert (enc.audio_dim, enc.visual_dim) == (enc.audio_bb.out_dim, enc.visual_bb.out_dim)
    probe_loss(enc, audio, visual).backward()
    assert all(p.grad is not None for p in enc.mettle_parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_features_halve_the_kept_bytes(family: str) -> None:
    """Kept bytes halve, and so do the bytes autograd saves for them (no fp32 copy kept)."""
    audio, visual = av_batch()
    full, half = build(family), build(family, feature_dtype="bf16")
    kept = kept_feature_bytes(full, audio, visual)
    assert kept == 2 * kept_feature_bytes(half, audio, visual)
    saved_full = saved_bytes(full, lambda: probe_loss(full, audio, visual).backward())
    saved_half = saved_bytes(half, lambda: probe_loss(half, audio, visual).backward())
    assert saved_full - saved_half == kept // 2


@SPECS
@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_round_trip(family: str, spec: TaskSpec) -> None:
    assert_state_dict_round_trip(lambda seed: build(family, spec, seed=seed), *av_batch())
