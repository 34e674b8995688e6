"""DG-SCT: the official pairing and parameter count, identity at zero gates, the spatial readout,
gradient routing, the tower mode switch and config validation."""

from __future__ import annotations

import pytest
import torch
from baseline_helpers import CLS, SEG, av_batch, frozen_reference, preset_towers, probe_loss
from tolerances import FLOAT64

from baselines.dgsct import (
    DgsctConfig,
    DgsctEncoder,
    dgsct_param_count,
    last_of_runs,
    pair_shapes,
    pair_units,
    temporal_param_count,
)
from bench.presets import get_preset
from bench.towers import build_backbone
from mettle_core.backbone import Backbone
from mettle_core.interface import TaskSpec

# The official count, from haoyi-duan/DG-SCT (DG-SCT/AVE/nets/net_trans.py, MMIL_Net) built on the
# meta device in a scratch environment with timm 0.6.13 (the Swin-V2 it was written for: a
# stage's input_resolution is its blocks' grid there), pretrained weights and the HTS-AT
# spectrogram constants stubbed out, with the flags of DG-SCT/AVE/train.sh, then counted as
# main_trans.py's requires_grad loop trains: parameters named `adapter_blocks` (the four adapter
# lists). Its `temporal_attn` has 12,071,554 trained parameters, of which 4,211,712 never reach the
# loss (each encoder's and decoder's template layer kept beside the copies it runs, and the
# decoders' unused self-attention); its CMBS head has 550,229.
OFFICIAL_AVE_ADAPTERS = 188_538_864
OFFICIAL_UNUSED_GATE_TK = 48  # one `gate_tk` per adapter, never used in the forward pass
OFFICIAL_AVE_TEMPORAL_USED = 12_071_554 - 4_211_712


def meta_towers(preset: str) -> tuple[Backbone, Backbone]:
    p = get_preset(preset)
    with torch.device("meta"):
        return build_backbone(p.audio, p.shape), build_backbone(p.visual, p.shape)


def adapter_params(enc: DgsctEncoder) -> int:
    return sum(p.numel() for n, p in enc.named_parameters() if p.requires_grad and not n.startswith("temporal."))


def test_paper_count_equals_the_official_code() -> None:
    audio, visual = meta_towers("paper")
    with torch.device("meta"):
        enc = DgsctEncoder(audio, visual, TaskSpec("ave", num_segments=10), DgsctConfig(num_tokens=32))  # train.sh
    # the official forward_swin: blocks paired 1:1 except Swin-V2-L's third stage, where audio
    # block j meets visual block 3j + 2
    third = [(4 + 3 * j + 2, 4 + j) for j in range(6)]
    assert [(v.index, a.index) for v, a in enc.pairs] == [(0, 0), (1, 1), (2, 2), (3, 3), *third, (22, 10), (23, 11)]
    # token-count convs sized from the grids the blocks see (48/24/12/6 and 64/32/16/8 a side)
    tokens = [(s.visual_tokens, s.audio_tokens) for s in pair_shapes(visual, audio)]
    assert tokens == [(2304, 4096)] * 2 + [(576, 1024)] * 2 + [(144, 256)] * 6 + [(36, 64)] * 2
    counted = adapter_params(enc)
    assert counted == OFFICIAL_AVE_ADAPTERS - OFFICIAL_UNUSED_GATE_TK
    assert abs(counted / OFFICIAL_AVE_ADAPTERS - 1) < 1e-3
    assert counted == dgsct_param_count(pair_shapes(visual, audio), enc.cfg, None)
    temporal = sum(p.numel() for p in enc.temporal.parameters())
    assert temporal == OFFICIAL_AVE_TEMPORAL_USED == temporal_param_count(768, 1536)


def test_vit_family_count_on_the_base_preset() -> None:
    """Two ViT-B/16 towers of one stage each pair block by block; class tokens are tokens too."""
    audio, visual = meta_towers("base")
    with torch.device("meta"):
        enc = DgsctEncoder(audio, visual, SEG, DgsctConfig())
    assert [(v.index, a.index) for v, a in enc.pairs] == [(i, i) for i in range(12)]
    assert {(s.visual_tokens, s.audio_tokens) for s in pair_shapes(visual, audio)} == {(197, 49)}
    assert adapter_params(enc) == dgsct_param_count(pair_shapes(visual, audio), enc.cfg, None)
    assert enc.temporal is None  # segmentation: no temporal attention


def test_pairing_takes_the_last_block_of_each_run_of_the_deeper_tower() -> None:
    assert last_of_runs(list(range(18)), 6) == [2, 5, 8, 11, 14, 17]
    assert last_of_runs(list(range(3)), 1) == [2]
    assert last_of_runs(list(range(5)), 2) == [1, 4]
    assert last_of_runs(list(range(4)), 4) == [0, 1, 2, 3]
    towers = preset_towers("smoke")  # visual 1-1-3-1, audio 1-1-1-1
    assert [(v.index, a.index) for v, a in pair_units(towers.visual, towers.audio)] == [(0, 0), (1, 1), (4, 2), (5, 3)]


def test_towers_must_have_as_many_stages_and_a_visual_tower_with_branches() -> None:
    smoke, vit = preset_towers("smoke"), preset_towers("smoke_vit")
    with pytest.raises(ValueError, match="visual tower has 1 stages, the audio tower 4"):
        DgsctEncoder(smoke.audio, vit.visual, CLS, DgsctConfig())
    with pytest.raises(ValueError, match="a htsat tower does not expose"):
        DgsctEncoder(smoke.audio, smoke.audio, CLS, DgsctConfig())


@pytest.mark.parametrize(
    "cfg",
    [
        DgsctConfig(),
        DgsctConfig(num_tokens=3, reduction=2, groups=1, temporal=False),
        DgsctConfig(batchnorm=False, gates=False, layernorm_before=False, layernorm_post=False),
    ],
    ids=["default", "custom", "switches-off"],
)
@pytest.mark.parametrize("spec", [CLS, SEG], ids=["cls", "seg"])
def test_param_count_formula_tiny(family: str, cfg: DgsctConfig, spec: TaskSpec) -> None:
    towers = preset_towers(family)
    enc = DgsctEncoder(towers.audio, towers.visual, spec, cfg)
    widths = (towers.audio.out_dim, towers.visual.out_dim) if enc.temporal is not None else None
    counted = sum(p.numel() for p in enc.parameters() if p.requires_grad)
    assert counted == dgsct_param_count(pair_shapes(towers.visual, towers.audio), cfg, widths)


@pytest.mark.parametrize("spec", [CLS, SEG], ids=["cls", "seg"])
def test_zero_gates_reproduce_the_frozen_towers(family: str, spec: TaskSpec) -> None:
    """Every adapter's output gate starts at zero (officially), so the token streams are the
    frozen towers' ones; read out with the towers' own pooling, so are the features."""
    towers = preset_towers(family)
    cfg = DgsctConfig(pool="mean", temporal=False, tower_train_mode=False)
    enc = DgsctEncoder(towers.audio, towers.visual, spec, cfg)
    audio, visual = av_batch(family)
    out = enc(audio, visual)  # training mode: BatchNorm on batch statistics, still gated to zero
    keep = towers.visual.pyramid_units() if spec.needs_maps else ()
    ref_a, _ = frozen_reference(towers.audio, audio, "audio", ())
    ref_v, ref_maps = frozen_reference(towers.visual, visual, "visual", keep)
    assert torch.equal(out.a, ref_a) and torch.equal(out.v, ref_v)
    assert len(out.maps or []) == len(ref_maps)
    for m, r in zip(out.maps or [], ref_maps, strict=True):
        assert torch.equal(m, r)


def test_spatial_readout_pools_with_the_last_adapters_maps() -> None:
    """Officially the last second-position adapters' spatial maps weight the final tokens: the
    visual ones after the tower's final norm, the audio ones without it. On the ViTs (the smoke
    Swin-V2 and HTS-AT end on one token, where any readout is the mean)."""
    towers = preset_towers("smoke_vit")
    enc = DgsctEncoder(towers.audio, towers.visual, CLS, DgsctConfig(temporal=False, tower_train_mode=False))
    enc.eval().double()  # float64, the towers with it: only the order of the sums differs
    maps: dict[str, torch.Tensor] = {}
    enc.visual_p2[-1].register_forward_hook(lambda m, i, o: maps.__setitem__("v", o[1]))
    enc.audio_p2[-1].register_forward_hook(lambda m, i, o: maps.__setitem__("a", o[1]))
    audio, visual = (x.double() for x in av_batch("smoke_vit"))
    with torch.no_grad():
        out = enc(audio, visual)
        va, vv = towers.audio, towers.visual
        ta = va.tokens(va.forward_units(va.prepare(audio.flatten(0, 1), "audio"))[0])
        tv = vv.tokens(vv.final_norm(vv.forward_units(vv.prepare(visual.flatten(0, 1), "visual"))[0]))
    torch.testing.assert_close(out.a.flatten(0, 1), torch.einsum("nl,nld->nd", maps["a"], ta), **FLOAT64)
    torch.testing.assert_close(out.v.flatten(0, 1), torch.einsum("nl,nld->nd", maps["v"], tv), **FLOAT64)
    torch.testing.assert_close(maps["v"].sum(-1), torch.ones(4, dtype=torch.float64), **FLOAT64)
    assert (out.a - ta.mean(1).view(2, 2, -1)).abs().max() > 1e-4  # not the plain mean (1.4e-3 from it)


def test_gradients_reach_adapters_and_temporal_attention_not_the_towers(family: str) -> None:
    towers = preset_towers(family)
    enc = DgsctEncoder(towers.audio, towers.visual, CLS, DgsctConfig())
    gates = [m for m in enc.modules() if hasattr(m, "gate_av")]
    probe_loss(enc, *av_batch(family)).backward()
    assert all(m.gate.grad is not None and m.gate.grad.abs().item() > 0 for m in gates)  # closed gates learn
    enc.zero_grad()
    with torch.no_grad():
        for m in gates:
            m.gate_av.fill_(0.5)
            m.gate.fill_(0.5)
    probe_loss(enc, *av_batch(family)).backward()
    for name, p in enc.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(not p.requires_grad and p.grad is None for p in enc.backbone_parameters())
    (group,) = enc.param_groups(5e-4)
    assert group["lr"] == 5e-4 and {id(p) for p in group["params"]} == {
        id(p) for p in enc.parameters() if p.requires_grad
    }


def test_towers_follow_train_mode_as_official_unless_switched_off() -> None:
    """Officially model.train() reaches both towers: drop path in Swin-V2 and HTS-AT, and
    HTS-AT's SpecAugment, so two passes over one batch differ."""
    towers = preset_towers("smoke")
    enc = DgsctEncoder(towers.audio, towers.visual, CLS, DgsctConfig(temporal=False)).train()
    assert all(m.training for m in enc.modules())
    audio, visual = av_batch("smoke", b=4)
    torch.manual_seed(0)
    assert not torch.equal(enc(audio, visual).a, enc(audio, visual).a)
    enc = DgsctEncoder(towers.audio, towers.visual, CLS, DgsctConfig(tower_train_mode=False)).train()
    assert not any(m.training for m in [*enc.audio_bb.modules(), *enc.visual_bb.modules()])
    assert all(m.training for m in enc.visual_p1.modules()) and enc.temporal is not None and enc.temporal.training


@pytest.mark.parametrize(
    "kwargs, field",
    [({"num_tokens": 0}, "num_tokens"), ({"reduction": 0}, "reduction"), ({"groups": 1.5}, "groups")],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"DgsctConfig.{field}"):
        DgsctConfig(**kwargs)  # type: ignore[arg-type]


def test_config_names_the_allowed_pools_and_checks_groups() -> None:
    with pytest.raises(ValueError, match=r"DgsctConfig.pool='max' is not allowed \(allowed: spatial, mean\)"):
        DgsctConfig(pool="max")  # type: ignore[arg-type]
    towers = preset_towers("smoke_vit")
    with pytest.raises(ValueError, match="groups=3"):
        DgsctEncoder(towers.audio, towers.visual, CLS, DgsctConfig(groups=3))
