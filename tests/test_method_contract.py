"""The contract every registered method passes: builds, forward shapes, backward,
gradients reach exactly the parameters it declares trainable, a state-dict round trip
reproduces its outputs, and the optional hooks it offers (memory floor, parameters by
part) are consistent with what a step measures."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny import FAMILIES, assert_state_dict_round_trip, av_batch

from bench.measure import activation_bytes
from bench.presets import get_preset
from bench.registry import METHODS
from bench.towers import build_towers
from bench.weights import WeightSource
from mettle_core.interface import AdaptedEncoder, TaskSpec

SPECS = {
    "classification": TaskSpec("contract_cls", num_segments=3),
    "segmentation": TaskSpec("contract_seg", num_segments=2, needs_maps=True, kind="segmentation"),
}


def build(method: str, spec: TaskSpec, preset: str, seed: int = 0) -> AdaptedEncoder:
    """The registered method on its declared towers of a test preset, random weights."""
    entry = METHODS.get(method)
    torch.manual_seed(seed)
    sources = {role: WeightSource(role, "random", "random") for role in entry.towers}
    return entry.build(build_towers(get_preset(preset), sources, seed), spec, entry.config_cls())


def inputs(spec: TaskSpec, preset: str, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return av_batch(preset, batch, spec.num_segments)


def feature_loss(feats) -> torch.Tensor:
    loss = feats.a.square().mean() + feats.v.square().mean()
    for m in feats.maps or []:
        loss = loss + m.square().mean()
    return loss


def open_gates(encoder: AdaptedEncoder) -> None:
    """Zero-initialised gates block gradients to what they gate at step 0; open them so
    that every declared trainable parameter must receive a gradient."""
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if p.requires_grad and "gate" in name.rsplit(".", 1)[-1] and p.numel() == 1:
                p.fill_(0.5)


@pytest.fixture(params=METHODS.names())
def method(request) -> str:
    return request.param


@pytest.fixture(params=list(SPECS))
def spec(request) -> TaskSpec:
    return SPECS[request.param]


@pytest.fixture(params=FAMILIES)
def preset(request) -> str:
    return request.param


def test_forward_shapes(method, spec, preset):
    encoder = build(method, spec, preset)
    audio, visual = inputs(spec, preset)
    feats = encoder(audio, visual)
    assert feats.a.shape == (2, spec.num_segments, encoder.audio_dim)
    assert feats.v.shape == (2, spec.num_segments, encoder.visual_dim)
    if spec.needs_maps:
        assert feats.maps is not None and len(feats.maps) == 4
        assert tuple(m.shape[1] for m in feats.maps) == tuple(encoder.map_channels)
        assert all(m.shape[0] == 2 * spec.num_segments for m in feats.maps)


def test_gradients_reach_exactly_the_declared_parameters(method, spec, preset):
    encoder = build(method, spec, preset)
    encoder.train()
    open_gates(encoder)
    grouped = {id(p) for g in encoder.param_groups(1e-3) for p in g["params"]}
    trainable = {id(p) for p in encoder.parameters() if p.requires_grad}
    assert grouped == trainable, "param_groups must hold every trainable parameter and nothing else"
    backbone = {id(p) for p in encoder.backbone_parameters()}
    if method == "full":
        assert backbone <= trainable
    else:
        assert not backbone & trainable, "backbone weights must stay frozen"
    loss = feature_loss(encoder(*inputs(spec, preset)))
    assert loss.requires_grad == bool(trainable)
    if trainable:
        loss.backward()
    for name, p in encoder.named_parameters():
        if id(p) in trainable:
            assert p.grad is not None, f"{method}: trainable {name} got no gradient"
        else:
            assert p.grad is None, f"{method}: frozen {name} got a gradient"
    reached = sum(int(p.grad.abs().sum() > 0) for p in encoder.parameters() if p.grad is not None)
    assert (reached > 0) == bool(trainable)


def test_optional_hooks_agree_with_a_measured_step(method, spec, preset):
    """A memory floor, when stated, is positive and no more than what a training step saves
    (the harness's activation_bytes); a parameter breakdown, when given, adds up to the
    trainable count."""
    encoder = build(method, spec, preset)
    encoder.train()
    audio, visual = inputs(spec, preset)
    floor = encoder.memory_floor_bytes(audio, visual)
    if floor is not None:
        exclude = [*encoder.parameters(), *encoder.buffers(), audio, visual]
        saved = activation_bytes(lambda: feature_loss(encoder(audio, visual)), exclude)
        assert 0 < floor <= saved, f"{method}: floor {floor} B, a step saves {saved} B"
    parts = encoder.param_breakdown()
    if parts is not None:
        assert all(n >= 0 for n in parts.values())
        assert sum(parts.values()) == sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    assert method != "mettle" or (floor is not None and parts is not None)  # the method that states both


def test_state_dict_round_trip(method, spec, preset):
    assert_state_dict_round_trip(lambda seed: build(method, spec, preset, seed), *inputs(spec, preset))


def test_config_is_a_validated_dataclass(method):
    cfg_cls = METHODS.get(method).config_cls
    assert dataclasses.is_dataclass(cfg_cls)
    cfg_cls()  # defaults are valid


def test_train_defaults_name_train_fields_and_sit_between_the_preset_and_the_user(method: str) -> None:
    """A method's own training defaults (its learning rate, chosen on val) replace the preset's
    and yield to `--set train.KEY=VALUE`; a key that is not a TrainConfig field would be
    silently ignored, so none may exist."""
    from bench.config import TrainConfig
    from bench.plan import RunPlan, resolve

    entry = METHODS.get(method)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(entry.train_defaults) <= fields
    preset = get_preset("smoke")
    (run,) = resolve(RunPlan(methods=[method], tasks=["ave"], preset="smoke"))
    for key in fields:
        want = entry.train_defaults.get(key, preset.train.get(key, getattr(TrainConfig(), key)))
        assert getattr(run.train, key) == want, key
    (user,) = resolve(RunPlan(methods=[method], tasks=["ave"], preset="smoke", overrides=["train.lr=0.0123"]))
    assert user.train.lr == 0.0123
