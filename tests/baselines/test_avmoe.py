"""AVMoE: the official parameter count and placement, each expert kind and the adapter against a
transcription of the official forward, the dense router, the AVS router noise and MS3
load-balancing term, identity at zero gates, gradient routing and config validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from baseline_helpers import CLS, SEG, av_batch, frozen_reference, preset_towers, probe_loss
from tolerances import FLOAT64, gamma

from baselines.avmoe import (
    AvmoeConfig,
    AvmoeEncoder,
    CrossModalExpert,
    MoEAdapter,
    UnimodalExpert,
    adapted_pairs,
    adapted_shapes,
    adapted_stage,
    avmoe_param_count,
    balance_term,
)
from baselines.dgsct import temporal_param_count
from bench.presets import get_preset
from bench.towers import build_backbone
from mettle_core.backbone import Backbone
from mettle_core.interface import TaskSpec

# The official count: yingchengy/AVMOE AVE/nets/net_trans_v3.py MMIL_Net built in a scratch
# environment with timm 0.6.13 (the Swin-V2 it was written for: a stage's input_resolution is its
# blocks' grid there), pretrained weights and the HTS-AT spectrogram stubbed out, with the flags of
# AVE/train.sh (1 + 1 experts, num_tokens 32, Adapter_downsample 8, num_conv_group 2, is_bn,
# is_gate, both layer norms, num_skip 2), then counted as main_trans_v3.py's requires_grad loop
# trains: parameters named `adapter_blocks` (the four MoE adapter lists; all of them reach the
# loss). Its `temporal_attn` has 12,071,554 trained parameters (DG-SCT's module, of which
# 4,211,712 never reach the loss), its CMBS head 21,845.
OFFICIAL_AVE_ADAPTERS = 90_549_536
OFFICIAL_AVE_TEMPORAL_USED = 12_071_554 - 4_211_712
MS3 = TaskSpec("avs_ms3", num_segments=2, needs_maps=True, kind="segmentation")


def meta_towers(preset: str) -> tuple[Backbone, Backbone]:
    p = get_preset(preset)
    with torch.device("meta"):
        return build_backbone(p.audio, p.shape), build_backbone(p.visual, p.shape)


def test_paper_count_equals_the_official_code() -> None:
    audio, visual = meta_towers("paper")
    with torch.device("meta"):
        enc = AvmoeEncoder(audio, visual, TaskSpec("ave", num_segments=10), AvmoeConfig(num_latent=32))  # train.sh
    # num_skip 2: stages 0 and 2 only; in stage 2 audio block j meets visual block 3j + 2
    third = [(4 + 3 * j + 2, 4 + j) for j in range(6)]
    assert [(v.index, a.index) for v, a in enc.pairs] == [(0, 0), (1, 1), *third]
    # token-count convs sized from the grids the blocks see (48 and 12 a side; 64 and 16)
    tokens = [(s.visual_tokens, s.audio_tokens) for s in adapted_shapes(visual, audio, 2)]
    assert tokens == [(2304, 4096)] * 2 + [(144, 256)] * 6
    counted = sum(p.numel() for n, p in enc.named_parameters() if p.requires_grad and not n.startswith("temporal."))
    assert abs(counted / OFFICIAL_AVE_ADAPTERS - 1) < 1e-3
    assert counted == OFFICIAL_AVE_ADAPTERS
    assert counted == avmoe_param_count(adapted_shapes(visual, audio, 2), enc.cfg, None)
    assert enc.temporal is not None
    temporal = sum(p.numel() for p in enc.temporal.parameters())
    assert temporal == OFFICIAL_AVE_TEMPORAL_USED == temporal_param_count(768, 1536)


def test_num_skip_leaves_stages_out_as_officially() -> None:
    """Officially stage s (from 0) runs plain when num_skip > 1 and (s + 1) % num_skip == 0."""
    assert [adapted_stage(s, 2) for s in range(4)] == [True, False, True, False]
    assert [adapted_stage(s, 3) for s in range(4)] == [True, True, False, True]
    assert all(adapted_stage(s, 1) for s in range(4))
    audio, visual = meta_towers("paper")
    assert len(adapted_pairs(visual, audio, 1)) == 12  # 2 + 2 + 6 + 2 pairs
    skip3 = [(0, 0), (1, 1), (2, 2), (3, 3), (22, 10), (23, 11)]  # stage 2 runs plain
    assert [(v.index, a.index) for v, a in adapted_pairs(visual, audio, 3)] == skip3
    towers = preset_towers("smoke")  # visual 1-1-3-1, audio 1-1-1-1
    assert [(v.index, a.index) for v, a in adapted_pairs(towers.visual, towers.audio, 2)] == [(0, 0), (4, 2)]
    vit = preset_towers("smoke_vit")  # one stage: always adapted
    assert len(adapted_pairs(vit.visual, vit.audio, 2)) == vit.visual.depth


@pytest.mark.parametrize(
    "cfg",
    [
        AvmoeConfig(),
        AvmoeConfig(num_cross=2, num_uni=0, num_latent=3, reduction=2, groups=1, num_skip=1, temporal=False),
        AvmoeConfig(batchnorm=False, gates=False, layernorm_before=False, layernorm_post=False, num_uni=3),
    ],
    ids=["default", "custom", "switches-off"],
)
@pytest.mark.parametrize("spec", [CLS, SEG], ids=["cls", "seg"])
def test_param_count_formula_tiny(family: str, cfg: AvmoeConfig, spec: TaskSpec) -> None:
    towers = preset_towers(family)
    enc = AvmoeEncoder(towers.audio, towers.visual, spec, cfg)
    widths = (towers.audio.out_dim, towers.visual.out_dim) if enc.temporal is not None else None
    counted = sum(p.numel() for p in enc.parameters() if p.requires_grad)
    assert counted == avmoe_param_count(adapted_shapes(towers.visual, towers.audio, cfg.num_skip), cfg, widths)


# --- the official forward, transcribed in its own layout: tokens as [N, D, L, 1], Conv2d 1x1
# convs, BatchNorm2d, LayerNorm over permuted channels (AVE/nets/net_trans_v3.py ExpertAdapter and
# MoEAdapter; the same classes in the AVS model). The harness's modules lend only their weights.
# This transcription was checked once against the official classes themselves (built as above):
# they agree to 7e-16 in float64, in train and eval mode.


def _ln(mod: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(mod, torch.nn.Identity):
        return x
    return (
        F.layer_norm(x.squeeze(-1).permute(0, 2, 1), mod.normalized_shape, mod.weight, mod.bias)
        .permute(0, 2, 1)
        .unsqueeze(-1)
    )


def _bn(mod: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(mod, torch.nn.Identity):
        return x
    mean, var = mod.running_mean.clone(), mod.running_var.clone()  # the reference must not move them
    return F.batch_norm(x, mean, var, mod.weight, mod.bias, mod.training, mod.momentum, mod.eps)


def official_expert(e: UnimodalExpert, x: torch.Tensor, vis_token: torch.Tensor, multimodal: bool) -> torch.Tensor:
    """ExpertAdapter.forward (adapter_kind "bottleneck", no self-attention); x, vis_token: [N, D, L, 1]."""
    down = lambda z: F.conv2d(z, e.down.weight.unsqueeze(-1), groups=e.down.groups)  # noqa: E731
    up = lambda z: F.conv2d(z, e.up.weight.unsqueeze(-1), groups=e.up.groups)  # noqa: E731
    if multimodal:
        assert isinstance(e, CrossModalExpert)
        rep_token = e.latent.unsqueeze(0).repeat(x.size(0), 1, 1)
        att_v2tk = F.softmax(torch.bmm(rep_token, vis_token.squeeze(-1)), dim=-1)
        rep_token = rep_token + torch.bmm(att_v2tk, vis_token.squeeze(-1).permute(0, 2, 1))
        att_tk2x = F.softmax(torch.bmm(x.squeeze(-1).permute(0, 2, 1), rep_token.permute(0, 2, 1)), dim=-1)
        x_res = torch.bmm(att_tk2x, rep_token).permute(0, 2, 1).unsqueeze(-1)
        x = x + e.gate_av * x_res.contiguous()
        x = _ln(e.ln_before, x)
        output = _bn(e.bn2, up(F.relu(_bn(e.bn1, down(x)))))
    else:
        x = _ln(e.ln_before, x)
        output = _bn(e.bn2, up(_bn(e.bn1, down(x))))  # no activation, as released
    output = _ln(e.ln_post, output)
    return output if e.gate is None else e.gate * output


def official_adapter(m: MoEAdapter, x: torch.Tensor, vis_token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MoEAdapter.forward without router noise; x: [N, D, L, 1], vis_token: [N, D', L', 1] ->
    ([N, D, L, 1], gating probabilities [N, 1, E])."""
    conv = m.token_map
    vis_token = F.conv2d(vis_token.transpose(2, 1), conv.weight.unsqueeze(-1), conv.bias)
    vis_token_fc = F.linear(vis_token.squeeze(-1), m.width_map.weight, m.width_map.bias)
    vis_token = vis_token_fc.permute(0, 2, 1).unsqueeze(-1)
    modal_1 = x.squeeze(-1).permute(0, 2, 1).mean(dim=1, keepdim=True)
    modal_2 = vis_token_fc.mean(dim=1, keepdim=True)
    gating_probs = F.softmax(m.router(torch.cat((modal_1, modal_2), dim=-1)), dim=-1)
    outputs = [official_expert(e, x, vis_token, isinstance(e, CrossModalExpert)) for e in m.experts]
    return (torch.concat(outputs, dim=-1) * gating_probs.unsqueeze(-2)).sum(dim=-1, keepdim=True), gating_probs


def layout(x: torch.Tensor) -> torch.Tensor:
    """[N, L, D] -> the official [N, D, L, 1]."""
    return x.permute(0, 2, 1).unsqueeze(-1)


def randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """`module` in float64 with every weight (gates and BatchNorm statistics included) off its init."""
    g = torch.Generator().manual_seed(seed)
    module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=b.dtype))
            elif name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g, dtype=b.dtype))
    return module


def ave_cfg(**kwargs: object) -> AvmoeConfig:
    return AvmoeConfig(num_latent=5, reduction=4, **kwargs).resolve(TaskSpec("ave", 2))  # type: ignore[arg-type]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", ["cross", "uni"])
@pytest.mark.parametrize("switches", [{}, {"batchnorm": False, "layernorm_before": False}], ids=["flags", "off"])
def test_each_expert_equals_the_official_definition(kind: str, train: bool, switches: dict[str, bool]) -> None:
    cfg = ave_cfg(**switches)
    expert = CrossModalExpert(16, cfg, True) if kind == "cross" else UnimodalExpert(16, cfg, True)
    expert = randomised(expert, 3).train(train)
    g = torch.Generator().manual_seed(4)
    x, y = (torch.randn(6, 12, 16, generator=g, dtype=torch.float64) for _ in range(2))
    out = expert(x, y)
    ref = official_expert(expert, layout(x), layout(y), kind == "cross").squeeze(-1).permute(0, 2, 1)  # type: ignore[arg-type]
    torch.testing.assert_close(out, ref, **FLOAT64)
    assert out.abs().max() > 0.1  # not a trivial zero
    if kind == "uni":  # the unimodal expert reads its own tokens only
        torch.testing.assert_close(expert(x, torch.zeros_like(y)), out, **FLOAT64)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_adapter_equals_the_official_definition(train: bool) -> None:
    """Token-count conv and width map of the other modality, the router over both means, and the
    dense mixture of a cross-modal and two unimodal experts."""
    adapter = randomised(MoEAdapter(16, 12, 24, 20, ave_cfg(num_uni=2), True), 5).train(train)
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(6, 12, 16, generator=g, dtype=torch.float64), torch.randn(6, 20, 24, generator=g).double()
    out, weights = adapter(x, y)
    ref, probs = official_adapter(adapter, layout(x), layout(y))  # type: ignore[arg-type]
    torch.testing.assert_close(out, ref.squeeze(-1).permute(0, 2, 1), **FLOAT64)
    torch.testing.assert_close(weights, probs.squeeze(1), **FLOAT64)


def test_router_is_dense_every_expert_runs_and_weights_sum_to_one() -> None:
    adapter = randomised(MoEAdapter(16, 12, 24, 20, ave_cfg(num_cross=2, num_uni=1), True), 7).eval()
    calls = [0] * len(adapter.experts)
    for i, e in enumerate(adapter.experts):
        e.register_forward_hook(lambda m, inp, out, i=i: calls.__setitem__(i, calls[i] + 1))
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(6, 12, 16, generator=g, dtype=torch.float64), torch.randn(6, 20, 24, generator=g).double()
    out, weights = adapter(x, y)
    assert calls == [1, 1, 1] and weights.shape == (6, 3)
    torch.testing.assert_close(weights.sum(-1), torch.ones(6, dtype=torch.float64), **FLOAT64)
    assert (weights > 0).all() and (weights < 1).all()  # a softmax, no top-k
    g_mapped = adapter.width_map(adapter.token_map(y))
    mixed = sum(weights[:, e, None, None] * expert(x, g_mapped) for e, expert in enumerate(adapter.experts))
    torch.testing.assert_close(out, mixed, **FLOAT64)


def test_router_noise_only_while_training_on_segmentation() -> None:
    """The AVS code adds N(0, 0.01^2) to the router logits when it trains; its AVE code never."""
    assert AvmoeConfig().resolve(SEG).router_noise == 0.01 and AvmoeConfig().resolve(MS3).router_noise == 0.01
    assert AvmoeConfig().resolve(CLS).router_noise == 0.0
    assert AvmoeConfig(router_noise=0.5).resolve(CLS).router_noise == 0.5
    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(6, 12, 16, generator=g, dtype=torch.float64), torch.randn(6, 20, 24, generator=g).double()
    torch.manual_seed(1)  # the router at its init: logits near 0, where noise of 0.01 shows
    seg = MoEAdapter(16, 12, 24, 20, AvmoeConfig(num_latent=5, reduction=4).resolve(SEG), True).double()
    mapped = seg.width_map(seg.token_map(y))
    logits = seg.router(torch.cat([x.mean(1), mapped.mean(1)], dim=-1))
    torch.manual_seed(0)
    noise = torch.randn_like(logits)
    torch.manual_seed(0)
    _, noisy = seg.train()(x, y)
    torch.testing.assert_close(noisy, torch.softmax(logits + 0.01 * noise, dim=-1), **FLOAT64)
    assert (noisy - torch.softmax(logits, dim=-1)).abs().max() > 1e-4
    _, clean = seg.eval()(x, y)
    torch.testing.assert_close(clean, torch.softmax(logits, dim=-1), **FLOAT64)
    cls = randomised(MoEAdapter(16, 12, 24, 20, ave_cfg(), True), 1).train()
    _, first = cls(x, y)
    _, second = cls(x, y)
    assert torch.equal(first, second)


def test_ms3_adds_the_official_load_balancing_term() -> None:
    """0.01 x the sum over every adapter of the released term, which is F.kl_div with an all-ones
    target (the released code's "uniform" 1 / size(0) of a kept [1, E] mean); only on MS3."""
    g = torch.Generator().manual_seed(10)
    w = torch.softmax(torch.randn(8, 3, generator=g, dtype=torch.float64), dim=-1)
    mean = w.mean(dim=0, keepdim=True)  # as released: [1, E]
    released = F.kl_div(mean.log(), torch.full_like(mean, 1.0 / mean.size(0)), reduction="batchmean")
    torch.testing.assert_close(balance_term(w), released, **FLOAT64)
    kl_uniform = (torch.full((3,), 1 / 3, dtype=torch.float64) * (math.log(1 / 3) - mean[0].log())).sum()
    torch.testing.assert_close(balance_term(w), 3 * kl_uniform + 3 * math.log(3), **FLOAT64)

    towers = preset_towers("smoke")
    enc = AvmoeEncoder(towers.audio, towers.visual, MS3, AvmoeConfig()).train()
    seen: list[torch.Tensor] = []
    for m in enc.modules():
        if isinstance(m, MoEAdapter):
            m.register_forward_hook(lambda mod, inp, out: seen.append(out[1]))
    torch.manual_seed(0)
    out = enc(*av_batch("smoke"))
    assert len(seen) == 4 * len(enc.pairs)
    want = 0.01 * sum(-(w.mean(0).log().sum()) for w in seen)
    assert out.aux_loss is not None
    # each adapter's term is the same float32 ops on the same weights here and in the encoder, so
    # only the order of the sum over the k adapters may differ: two sums of the same k positive
    # numbers, each within gamma(k - 1) of the exact sum, then the same scaling by 0.01
    torch.testing.assert_close(out.aux_loss, want, rtol=2 * gamma(len(seen)), atol=0)
    assert out.aux_loss.requires_grad
    for spec in (SEG, CLS):  # S4 and classification: no term
        assert AvmoeEncoder(towers.audio, towers.visual, spec, AvmoeConfig())(*av_batch("smoke")).aux_loss is None
    off = AvmoeEncoder(towers.audio, towers.visual, MS3, AvmoeConfig(balance_weight=0))
    assert off(*av_batch("smoke")).aux_loss is None


@pytest.mark.parametrize("spec", [CLS, SEG], ids=["cls", "seg"])
def test_zero_gates_reproduce_the_frozen_towers(family: str, spec: TaskSpec) -> None:
    """Every expert's output gate starts at zero (officially), so the streams are the frozen
    towers' ones; the readout is the towers' mean, the audio one without the final norm."""
    towers = preset_towers(family)
    enc = AvmoeEncoder(towers.audio, towers.visual, spec, AvmoeConfig(temporal=False, tower_train_mode=False))
    audio, visual = av_batch(family)
    out = enc(audio, visual)  # training mode: BatchNorm on batch statistics, router noise, still gated to zero
    keep = towers.visual.pyramid_units() if spec.needs_maps else ()
    _, ref_v_maps = frozen_reference(towers.visual, visual, "visual", keep)
    ref_v, _ = frozen_reference(towers.visual, visual, "visual", ())
    ab = towers.audio
    with torch.no_grad():
        last_a, _ = ab.forward_units(ab.prepare(audio.flatten(0, 1), "audio"), keep=set())
    assert torch.equal(out.v, ref_v)
    assert torch.equal(out.a, ab.tokens(last_a).mean(dim=1).reshape(2, 2, -1))
    assert len(out.maps or []) == len(ref_v_maps)
    for m, r in zip(out.maps or [], ref_v_maps, strict=True):
        assert torch.equal(m, r)


def test_gradients_reach_adapters_and_temporal_attention_not_the_towers(family: str) -> None:
    towers = preset_towers(family)
    enc = AvmoeEncoder(towers.audio, towers.visual, CLS, AvmoeConfig())
    experts = [m for m in enc.modules() if isinstance(m, UnimodalExpert)]
    probe_loss(enc, *av_batch(family)).backward()
    assert all(e.gate is not None and e.gate.grad is not None and e.gate.grad.abs().item() > 0 for e in experts)
    enc.zero_grad()
    with torch.no_grad():
        for e in experts:
            assert e.gate is not None
            e.gate.fill_(0.5)
            if isinstance(e, CrossModalExpert):
                e.gate_av.fill_(0.5)
    probe_loss(enc, *av_batch(family)).backward()
    for name, p in enc.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(not p.requires_grad and p.grad is None for p in enc.backbone_parameters())
    (group,) = enc.param_groups(5e-4)
    assert group["lr"] == 5e-4 and {id(p) for p in group["params"]} == {
        id(p) for p in enc.parameters() if p.requires_grad
    }


def test_audio_gates_follow_the_flag_visual_ones_stay() -> None:
    towers = preset_towers("smoke")
    enc = AvmoeEncoder(towers.audio, towers.visual, CLS, AvmoeConfig(gates=False))
    assert all(e.gate is None for e in enc.audio_p1.modules() if isinstance(e, UnimodalExpert))
    assert all(e.gate is not None for e in enc.visual_p2.modules() if isinstance(e, UnimodalExpert))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_latent": 0}, "AvmoeConfig.num_latent=0 must be an integer >= 1"),
        ({"num_cross": -1}, "AvmoeConfig.num_cross=-1 must be an integer >= 0"),
        ({"reduction": 2.5}, "AvmoeConfig.reduction=2.5 must be an integer >= 1"),
        ({"num_skip": 0}, "AvmoeConfig.num_skip=0 must be an integer >= 1"),
        ({"num_cross": 0, "num_uni": 0}, "AvmoeConfig.num_cross \\+ num_uni must be >= 1"),
        ({"router_noise": -0.1}, "AvmoeConfig.router_noise=-0.1 must be >= 0"),
        ({"balance_weight": float("nan")}, "AvmoeConfig.balance_weight=nan must be >= 0"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AvmoeConfig(**kwargs)  # type: ignore[arg-type]


def test_groups_must_divide_the_widths_and_the_visual_tower_expose_branches() -> None:
    towers = preset_towers("smoke_vit")
    with pytest.raises(ValueError, match="AvmoeConfig.reduction=8 / groups=3"):
        AvmoeEncoder(towers.audio, towers.visual, CLS, AvmoeConfig(groups=3))
    smoke = preset_towers("smoke")
    with pytest.raises(ValueError, match="a htsat tower does not expose"):
        AvmoeEncoder(smoke.audio, smoke.audio, CLS, AvmoeConfig())
