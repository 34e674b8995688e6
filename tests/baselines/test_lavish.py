"""LAVisH: identity at zero gates, gradient routing, parameter-count formula, round trip."""

from __future__ import annotations

import pytest
import timm
import torch
from baseline_helpers import (
    CLS,
    SEG,
    assert_state_dict_round_trip,
    av_batch,
    frozen_reference,
    preset_towers,
    probe_loss,
)

from baselines.lavish import METHOD, LavishConfig, LavishEncoder, lavish_param_count
from mettle_core.backbone import Backbone
from mettle_core.interface import TaskSpec


@pytest.mark.parametrize("spec", [CLS, SEG], ids=["cls", "seg"])
def test_zero_gates_reproduce_frozen_tower(family: str, spec: TaskSpec) -> None:
    bb = preset_towers(family).shared
    enc = LavishEncoder(bb, spec, LavishConfig(tower_train_mode=False))
    audio, visual = av_batch(family)
    out = enc(audio, visual)  # training mode: BatchNorm on batch statistics, still gated to zero
    keep = bb.pyramid_units() if spec.needs_maps else ()
    ref_a, _ = frozen_reference(bb, audio, "audio", keep)
    ref_v, ref_maps = frozen_reference(bb, visual, "visual", keep)
    assert torch.equal(out.a, ref_a) and torch.equal(out.v, ref_v)
    if spec.needs_maps:
        assert out.maps is not None and len(out.maps) == 4
        assert tuple(m.shape[1] for m in out.maps) == enc.map_channels
        for m, r in zip(out.maps, ref_maps, strict=True):
            assert torch.equal(m, r)
    else:
        assert out.maps is None


def test_gradients_reach_adapters_not_backbone(family: str) -> None:
    enc = LavishEncoder(preset_towers(family).shared, CLS, LavishConfig())
    with torch.no_grad():  # open every gate so that every adapter weight is on the path
        for ad in enc.adapters.modules():
            if hasattr(ad, "gate_av"):
                ad.gate_av.fill_(0.5)
                ad.gate.fill_(0.5)
    probe_loss(enc, *av_batch(family)).backward()
    for name, p in enc.adapters.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(not p.requires_grad and p.grad is None for p in enc.backbone_parameters())
    groups = enc.param_groups(5e-5)
    assert [g["lr"] for g in groups] == [5e-5]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in enc.parameters() if p.requires_grad}


def test_gates_alone_get_gradients_at_init(family: str) -> None:
    """At init only the zero gates sit on the path; they must still learn to open."""
    enc = LavishEncoder(preset_towers(family).shared, CLS, LavishConfig())
    probe_loss(enc, *av_batch(family)).backward()
    gates = [m.gate.grad for m in enc.adapters.modules() if hasattr(m, "gate_av")]
    assert gates and all(g is not None and g.abs().item() > 0 for g in gates)


def test_tower_follows_train_mode_as_official_unless_switched_off(family: str) -> None:
    """The official main_trans.py calls model.train() on the whole model, so the frozen tower's
    drop-path is live while training; `tower_train_mode=False` keeps the tower in eval mode."""
    enc = LavishEncoder(preset_towers(family).shared, CLS, LavishConfig()).train()
    assert all(m.training for m in enc.shared.modules()) and all(m.training for m in enc.adapters.modules())
    assert not any(m.training for m in enc.eval().modules())
    enc = LavishEncoder(preset_towers(family).shared, CLS, LavishConfig(tower_train_mode=False)).train()
    assert not any(m.training for m in enc.shared.modules())
    assert all(m.training for m in enc.adapters.modules())


def test_official_tower_mode_makes_training_stochastic() -> None:
    """Swin-V2's drop-path (timm's default rate 0.1) is what train mode turns on: two forward
    passes of the same batch differ in train mode and agree in eval mode."""
    enc = LavishEncoder(preset_towers("smoke").shared, CLS, LavishConfig())
    with torch.no_grad():
        for ad in enc.adapters.modules():
            if hasattr(ad, "gate_av"):
                ad.gate.fill_(0.5)
    audio, visual = av_batch("smoke", b=4)
    torch.manual_seed(0)
    first, second = enc.train()(audio, visual), enc(audio, visual)
    assert not torch.equal(first.v, second.v)
    enc.eval()
    assert torch.equal(enc(audio, visual).v, enc(audio, visual).v)


@pytest.mark.parametrize(
    "cfg",
    [
        LavishConfig(),
        LavishConfig(num_latent=3, reduction=2, groups=1),
        LavishConfig(batchnorm=False, gates=False, layernorm=False),
    ],
    ids=["default", "custom", "switches-off"],
)
@pytest.mark.parametrize("spec", [CLS, SEG], ids=["cls", "seg"])
def test_param_count_formula_tiny(family: str, cfg: LavishConfig, spec: TaskSpec) -> None:
    bb = preset_towers(family).shared
    enc = LavishEncoder(bb, spec, cfg)
    counted = sum(p.numel() for p in enc.parameters() if p.requires_grad)
    assert counted == lavish_param_count([u.dim for u in bb.units], cfg.resolve(spec))


def test_task_defaults() -> None:
    """num_latent=None is the official per-task count; the default, 8, was chosen on val."""
    official = LavishConfig(num_latent=None)
    assert (official.resolve(CLS).num_latent, official.resolve(CLS).reduction) == (2, 8)
    assert (official.resolve(SEG).num_latent, official.resolve(SEG).reduction) == (16, 4)
    assert (LavishConfig().resolve(CLS).num_latent, LavishConfig().resolve(SEG).num_latent) == (8, 8)
    assert LavishConfig(num_latent=5).resolve(SEG).num_latent == 5


def test_swinv2_large_count_matches_official() -> None:
    """Swin-V2-L (depths 2-2-18-2, widths 192..1536), the official AVE settings (2 latent tokens):
    about 8.45M adapter parameters."""
    with torch.device("meta"):
        bb = Backbone(timm.create_model("swinv2_large_window12_192", num_classes=0))
        enc = LavishEncoder(bb, CLS, LavishConfig(num_latent=None))
    assert [u.dim for u in bb.units] == [192] * 2 + [384] * 2 + [768] * 18 + [1536] * 2
    counted = sum(p.numel() for p in enc.adapters.parameters())
    assert counted == lavish_param_count([u.dim for u in bb.units], enc.cfg)
    assert abs(counted / 8.45e6 - 1) < 0.01, counted


@pytest.mark.parametrize(
    "kwargs, field",
    [({"num_latent": 0}, "num_latent"), ({"reduction": 0}, "reduction"), ({"groups": 0}, "groups")],
)
def test_config_rejects_bad_values(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(ValueError, match=f"LavishConfig.{field}"):
        LavishConfig(**kwargs)


def test_indivisible_groups_rejected() -> None:
    with pytest.raises(ValueError, match="groups"):
        LavishEncoder(preset_towers("smoke_vit").shared, CLS, LavishConfig(groups=3))


@pytest.mark.parametrize("spec", [CLS, SEG], ids=["cls", "seg"])
def test_state_dict_round_trip(family: str, spec: TaskSpec) -> None:
    entry = METHOD
    assert_state_dict_round_trip(lambda t: entry.build(t, spec, entry.config_cls()), family)
