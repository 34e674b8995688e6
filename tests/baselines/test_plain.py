"""frozen and full: which tower weights train, at which learning rate; maps; round trip."""

from __future__ import annotations

import pytest
from baseline_helpers import (
    CLS,
    SEG,
    assert_state_dict_round_trip,
    av_batch,
    logit_only_params,
    preset_towers,
    probe_loss,
)

from baselines.frozen import FrozenConfig
from baselines.full import FullConfig
from bench.registry import METHODS
from mettle_core.interface import TaskSpec


def test_frozen_trains_nothing(family: str) -> None:
    enc = METHODS.get("frozen").build(preset_towers(family), SEG, FrozenConfig()).train()
    assert not any(p.requires_grad for p in enc.parameters())
    assert enc.param_groups(1e-3) == []
    assert not any(m.training for m in enc.modules() if m is not enc)
    out = enc(*av_batch(family))
    assert out.a.grad_fn is None and out.v.grad_fn is None
    assert out.a.shape == (2, 2, enc.audio_dim) and out.v.shape == (2, 2, enc.visual_dim)
    assert out.maps is not None and tuple(m.shape[1] for m in out.maps) == enc.map_channels
    assert all(m.shape[0] == 4 for m in out.maps)


def test_full_trains_every_tower_weight(family: str) -> None:
    enc = METHODS.get("full").build(preset_towers(family), CLS, FullConfig(backbone_lr_scale=0.1))
    params = list(enc.backbone_parameters())
    assert params and all(p.requires_grad for p in params)
    probe_loss(enc, *av_batch(family)).backward()
    dead = logit_only_params(enc)
    for n, p in enc.named_parameters():
        assert p.grad is not None and (p.grad.abs().sum() > 0) != (n in dead), n
    (group,) = enc.param_groups(1e-3)
    assert group["lr"] == pytest.approx(1e-4)
    assert {id(p) for p in group["params"]} == {id(p) for p in enc.parameters()}


def test_full_config_validation() -> None:
    with pytest.raises(ValueError, match="FullConfig.backbone_lr_scale"):
        FullConfig(backbone_lr_scale=0.0)


@pytest.mark.parametrize("name", ["frozen", "full"])
@pytest.mark.parametrize("spec", [CLS, SEG], ids=["cls", "seg"])
def test_state_dict_round_trip(family: str, name: str, spec: TaskSpec) -> None:
    entry = METHODS.get(name)
    assert_state_dict_round_trip(lambda t: entry.build(t, spec, entry.config_cls()), family)
