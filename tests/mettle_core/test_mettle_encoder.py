"""Contract of the Mettle encoder: gradients, parameter count, memory, switches, state dict."""

from __future__ import annotations

from itertools import groupby
from typing import get_args, get_type_hints

import pytest
import torch
from mettle_helpers import CLS, SEG, av_batch, probe_loss, saved_bytes, towers, vit
from tiny import assert_state_dict_round_trip
from tolerances import FLOAT64

import mettle_core
from bench.build import param_groups
from bench.plan import RunPlan, resolve
from bench.tasks.base import TaskModel
from mettle_core import MettleConfig, MettleEncoder, mettle_param_count, select_layers
from mettle_core.backbone import Backbone
from mettle_core.interface import TaskSpec, Towers
from mettle_core.method import METHOD

FAMILIES = ("vit", "swinv2")
SPECS = pytest.mark.parametrize("spec", [CLS, SEG], ids=["cls", "seg"])


@pytest.fixture(scope="module")
def smoke() -> tuple[Backbone, Backbone]:
    """One pair of smoke towers for the tests that only build encoders on them (frozen: encoders
    never change them)."""
    return towers("swinv2")


def build(family: str, spec: TaskSpec = CLS, seed: int = 0, **overrides: object) -> MettleEncoder:
    audio_bb, visual_bb = towers(family, seed)
    return MettleEncoder(audio_bb, visual_bb, spec, MettleConfig(**overrides))  # type: ignore[arg-type]


def on(pair: tuple[Backbone, Backbone], spec: TaskSpec = CLS, **overrides: object) -> MettleEncoder:
    torch.manual_seed(0)
    return MettleEncoder(*pair, spec, MettleConfig(**overrides))  # type: ignore[arg-type]


def set_gates(enc: MettleEncoder, value: float) -> None:
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name.endswith("gate"):
                p.fill_(value)


def trainable_count(enc: MettleEncoder) -> int:
    return sum(p.numel() for p in enc.parameters() if p.requires_grad)


def stages(bb: Backbone, units: tuple[int, ...]) -> list[tuple[int, int]]:
    """(layers, width) per stage of the selected units, from the tower's own units."""
    groups = [list(g) for _, g in groupby(units, key=lambda i: bb.units[i].stage)]
    return [(len(g), bb.units[g[0]].dim) for g in groups]


def test_registered_build_uses_the_separate_towers() -> None:
    audio_bb, visual_bb = towers("vit")
    shared = vit(3)
    entry = METHOD
    assert entry.config_cls is mettle_core.MettleConfig
    enc = entry.build(Towers(audio_bb, visual_bb, shared), CLS, MettleConfig())
    assert isinstance(enc, MettleEncoder) and enc.audio_bb is audio_bb and enc.visual_bb is visual_bb
    groups = enc.param_groups(1e-3)
    assert [g["name"] for g in groups] == ["mettle", "mettle_tokens_gates_norms"]
    assert all(g["lr"] == 1e-3 for g in groups)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in enc.parameters() if p.requires_grad)


@pytest.mark.parametrize("family", FAMILIES)
@SPECS
@pytest.mark.parametrize(
    "overrides",
    [{}, {"preserve": "lowrank", "aggregate": "learned_weights", "width": "block", "pool": "attention"}],
    ids=["default", "variants"],
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


@pytest.mark.parametrize("order", ["parallel", "series"])
def test_zero_gates_leave_the_adaptation_branch_without_gradient_at_init(order: str) -> None:
    enc = build("vit", adapt_order=order)
    probe_loss(enc, *av_batch()).backward()
    for name, p in enc.named_parameters():
        if ".down_" in name or ".up_" in name:
            assert p.grad is not None and torch.count_nonzero(p.grad) == 0, name
        elif name.endswith("gate"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("family", FAMILIES)
@SPECS
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"preserve": "lowrank", "rank_ratio": 4, "aggregate": "learned_weights", "num_tokens": 3, "pool": "concat"},
        {"adapt": False, "layers": "every_k", "every_k": 2, "width": "block", "pool": "attention"},
        {"layers": "last_n", "last_n": 2, "bottleneck_ratio": 2, "mti": "off"},
        {"mti": "film"},
    ],
)
def test_param_count_matches_formula(family: str, spec: TaskSpec, overrides: dict[str, object]) -> None:
    enc = build(family, spec, **overrides)
    cfg = enc.cfg
    if spec.needs_maps:
        layers = ([(1, enc.audio_bb.out_dim)], [(1, enc.visual_bb.out_dim)])
        channels: tuple[int, ...] | None = enc.visual_bb.pyramid_channels()
    else:
        layers = tuple(stages(bb, select_layers(bb.depth, cfg)) for bb in (enc.audio_bb, enc.visual_bb))
        channels = None
    assert trainable_count(enc) == mettle_param_count(cfg, *layers, channels)
    assert sum(enc.param_breakdown().values()) == trainable_count(enc)


def test_param_count_by_hand(smoke: tuple[Backbone, Backbone]) -> None:
    # LCD(D), K=8, r=8: meta 8D + norm 2D + down D*D/8 + D/8 + up D/8*D + D + gate 1.
    # ViT D=32: 256 + 64 + 132 + 160 + 1 = 613, three blocks, two towers, one stage: no projection.
    # Mean pooling (no parameters) first; the pools' own parameters are counted at the end.
    assert trainable_count(build("vit", pool="mean")) == 2 * 3 * 613
    # Swin-V2 widths 16 | 32 | 64 64 64 | 128: LCDs 243 + 613 + 3 * 1737 + 5521 = 11588; HTS-AT widths
    # 16 | 32 | 64 | 128: 243 + 613 + 1737 + 5521 = 8114.
    lcd = 11588 + 8114
    # width=stage: one projection per narrower stage in each tower, (16 + 1 + 32 + 1 + 64 + 1) * 128.
    per_stage = 2 * 115 * 128
    enc = on(smoke, pool="mean")
    assert trainable_count(enc) == lcd + per_stage == 49142
    assert enc.param_breakdown() == {"lcd": lcd, "aggregation": per_stage, "pool": 0, "mti": 0}
    # width=block: one per narrower layer: Swin-V2's third stage has three, (17 + 33 + 3 * 65) * 128.
    assert trainable_count(on(smoke, width="block", pool="mean")) == lcd + (17 + 33 + 3 * 65) * 128 + 115 * 128
    # pool: a query per tower (D) or a K*D -> D projection per tower.
    assert trainable_count(on(smoke, pool="attention")) == 49142 + 2 * 128
    assert trainable_count(on(smoke, pool="concat")) == 49142 + 2 * (8 * 128 * 128 + 128)


def test_optimiser_groups_exempt_every_token_gate_and_norm_from_weight_decay(smoke) -> None:
    """As train.py builds it: bench.build.param_groups, then AdamW with the run's weight decay."""
    switches = ["mettle.preserve=lowrank", "mettle.pool=attention", "mettle.no_decay_lr_scale=3"]
    (run,) = resolve(RunPlan(["mettle"], ["avs_s4"], "smoke", overrides=[*switches, "train.weight_decay=0.05"]))
    torch.manual_seed(0)
    enc = MettleEncoder(*smoke, SEG, run.method_cfg)
    model = TaskModel(enc, torch.nn.Linear(4, 4))
    optimizer = torch.optim.AdamW(param_groups(model, run), weight_decay=run.train.weight_decay)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    names = {n: p for n, p in enc.named_parameters() if p.requires_grad}
    exempt = [n for n in names if n.rsplit(".", 1)[-1] in ("meta", "gate", "query") or "norm" in n or "bias" in n]
    projections = [n for n in names if n.endswith(("_weight", ".weight")) and "norm" not in n]
    assert len(exempt) > 10 and len(projections) > 10 and set(exempt) | set(projections) == set(names)
    for n in exempt:
        assert group_of[id(names[n])]["weight_decay"] == 0.0 and group_of[id(names[n])]["lr"] == 3 * run.train.lr, n
    for n in projections:
        assert group_of[id(names[n])]["weight_decay"] == 0.05 and group_of[id(names[n])]["lr"] == run.train.lr, n
    decay_all = on(smoke, SEG, decay="all").param_groups(1e-3)
    assert all("weight_decay" not in g for g in decay_all)  # the optimiser's own value, for every parameter


def test_stage_buffers_are_the_memory_floor(smoke: tuple[Backbone, Backbone]) -> None:
    """One preallocated buffer per stage, holding every selected block's tokens, and nothing else kept:
    the floor is exactly their bytes."""
    enc = on(smoke)
    audio, visual = av_batch()
    kept = enc.frozen_features(audio, visual)
    frames = 4
    # Swin-V2 on 32 px, 4 px patches: 64, 16, 4, 1 tokens of widths 16, 32, 64, 128 (3 blocks in stage 3);
    # HTS-AT on its 64 x 64 log-mel image, 8 px patches: the same grids and widths, one block each.
    assert [tuple(x.shape) for x in kept.visual] == [
        (1, frames, 64, 16),
        (1, frames, 16, 32),
        (3, frames, 4, 64),
        (1, frames, 1, 128),
    ]
    assert [x.shape[0] for x in kept.audio] == [1, 1, 1, 1]
    tokens = frames * (64 * 16 + 16 * 32 + 4 * 64 + 1 * 128)
    assert enc.memory_floor_bytes(audio, visual) == 4 * (tokens + tokens + frames * 2 * 4 * 64)


@pytest.mark.parametrize("recompute", [True, False], ids=["recompute", "keep"])
def test_saved_bytes_are_the_floor_plus_k_token_activations_with_normalised_keys(recompute: bool) -> None:
    """Everything autograd saves in a step is, per read layer and tower, the kept (normalised) frozen
    tokens plus, unless LCD recomputes them, its activations on K tokens; nothing else depends on depth."""
    audio, visual = av_batch()
    frames, tokens, dim, k, hidden = 4, 17, 32, 8, 4  # B*T, 16 patches + class token, D, K, D/r
    kept = frames * tokens * dim * 4
    # fp32 [N, K, D]: bottleneck input, adapt output, norm input and output; [N, K, D/r]: GELU input and
    # output; [N, K]: norm mean and rstd.
    lcd = 0 if recompute else 4 * frames * k * (4 * dim + 2 * hidden + 2)
    probe = 2 * frames * dim * 4  # the probe loss's two random projections

    def measure(depth: int) -> tuple[int, int]:
        torch.manual_seed(0)
        cfg = MettleConfig(key_norm="layernorm", recompute=recompute, pool="mean")  # LCD alone, no pool parameters
        enc = MettleEncoder(vit(1, depth), vit(3, depth), CLS, cfg)
        saved = saved_bytes(enc, lambda: probe_loss(enc, audio, visual))
        return saved, enc.memory_floor_bytes(audio, visual)

    (saved2, floor2), (saved4, floor4) = measure(2), measure(4)
    assert floor2 == 2 * 2 * kept and floor4 == 2 * 4 * kept

    def layer_weights(depth: int) -> int:  # the mean's weights over the layers, one tensor per tower
        return 2 * 4 * depth

    assert saved2 == floor2 + 2 * 2 * lcd + probe + layer_weights(2)
    assert saved4 - saved2 == 2 * 2 * (kept + lcd) + layer_weights(4) - layer_weights(2)


@pytest.mark.parametrize("spec", [CLS, SEG], ids=["cls", "seg"])
def test_batched_and_per_layer_encoders_agree(spec: TaskSpec) -> None:
    """In float64 (towers of their own: the shared ones stay float32), where the two forms
    differ only in the order of their sums."""
    audio_bb, visual_bb = towers("swinv2")
    pair = (audio_bb.double(), visual_bb.double())
    audio, visual = (x.double() for x in av_batch())

    def run(batched: bool) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        enc = on(pair, spec, batched=batched).double()
        set_gates(enc, 0.5)
        out = enc(audio, visual)
        probe_loss(enc, audio, visual).backward()
        return [out.a, out.v, *(out.maps or [])], {n: p.grad for n, p in enc.named_parameters() if p.requires_grad}

    (outs_b, grads_b), (outs_p, grads_p) = run(True), run(False)
    for x, y in zip(outs_b, outs_p, strict=True):
        torch.testing.assert_close(x, y, **FLOAT64)
    for name, grad in grads_b.items():
        torch.testing.assert_close(grad, grads_p[name], **FLOAT64, msg=name)


def _values(name: str, hint: object) -> tuple[object, ...]:
    if hint is bool:
        return (True, False)
    if hint is float:
        return {"meta_init_std": (0.02, 1.0), "no_decay_lr_scale": (0.5, 2.0)}[name]
    return get_args(hint)


CLASSIFICATION_ONLY = {"layers", "aggregate", "width"}
SEGMENTATION_ONLY = {"mti"}
CHOICES = [
    pytest.param(name, value, spec, id=f"{name}={value}-{spec.kind[:3]}")
    for name, hint in get_type_hints(MettleConfig).items()
    if hint is not int
    for value in _values(name, hint)
    for spec in (CLS, SEG)
    if name not in (SEGMENTATION_ONLY if spec is CLS else CLASSIFICATION_ONLY)
]


@pytest.mark.parametrize(("field", "value", "spec"), CHOICES)
def test_every_switch_value_runs(smoke: tuple[Backbone, Backbone], field: str, value: object, spec: TaskSpec) -> None:
    enc = on(smoke, spec, **{"last_n": 2, field: value})
    set_gates(enc, 0.5)
    audio, visual = av_batch(b=3, t=2)
    out = enc(audio, visual)
    assert out.a.shape == (3, 2, enc.audio_bb.out_dim) and out.v.shape == (3, 2, enc.visual_bb.out_dim)
    assert out.a.dtype == out.v.dtype == torch.float32 and (out.maps is None) == (spec is CLS)
    optimizer = torch.optim.AdamW(enc.param_groups(1e-3), weight_decay=0.01)
    probe_loss(enc, audio, visual).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.mettle_parameters())
    optimizer.step()


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_features_halve_the_kept_bytes(family: str) -> None:
    """Kept bytes halve, and so do the bytes autograd saves for them (no fp32 copy kept)."""
    audio, visual = av_batch()
    full, half = build(family), build(family, feature_dtype="bf16")
    kept = full.memory_floor_bytes(audio, visual)
    assert kept == 2 * half.memory_floor_bytes(audio, visual)
    saved_full = saved_bytes(full, lambda: probe_loss(full, audio, visual))
    saved_half = saved_bytes(half, lambda: probe_loss(half, audio, visual))
    assert saved_full - saved_half == kept // 2


@SPECS
@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_round_trip(family: str, spec: TaskSpec) -> None:
    assert_state_dict_round_trip(lambda seed: build(family, spec, seed=seed), *av_batch())
