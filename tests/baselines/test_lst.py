"""Ladder Side-Tuning: parameter-count formula (tiny and paper towers), towers under no_grad, the
ladders' gate, the stated memory floor against a measured step, config validation."""

from __future__ import annotations

import pytest
import torch
from baseline_helpers import CLS, SEG, av_batch, preset_towers, probe_loss
from tolerances import FLOAT64

from baselines.lst import LstConfig, LstEncoder, frozen_floats
from bench.presets import TINY_HTSAT, TINY_SWIN, TINY_VIT, get_preset
from bench.profile import ProfileSpec, build_step, memory_figures, resolve_point
from bench.towers import build_backbone
from mettle_core.interface import TaskSpec


def block_count(d: int) -> int:
    """A pre-norm transformer block of width d, 4x MLP: two norms, qkv, output projection, MLP."""
    m = 4 * d
    return 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d)


def tower_count(widths: list[int], depths: list[int], r: int, maps: list[int]) -> int:
    """One tower's side network: a down-projection of the embedded tokens and of every block's output
    (Linear D -> D / r with bias) with one gate each, a side block per block, a patch merging (Linear
    4 d -> d', no bias, then LayerNorm) at each stage change, the final LayerNorm and up-projection
    d -> D, and one up-projection per map level of width D_k."""
    side = [w // r for w in widths]
    n = widths[0] * side[0] + side[0]
    for s, (w, d, depth) in enumerate(zip(widths, side, depths, strict=True)):
        n += depth * (w * d + d + 1 + block_count(d))
        if s > 0:
            n += 4 * side[s - 1] * d + 2 * d
    n += 2 * side[-1] + side[-1] * widths[-1] + widths[-1]
    return n + sum(w // r * w + w for w in maps)


def stage_widths(embed: int, stages: int) -> list[int]:
    return [embed * 2**s for s in range(stages)]


TINY_VISUAL = stage_widths(TINY_SWIN["embed_dim"], 4), list(TINY_SWIN["depths"])
TINY_AUDIO = stage_widths(TINY_HTSAT["embed_dim"], 4), list(TINY_HTSAT["depths"])
SMOKE_VIT = [TINY_VIT["embed_dim"]], [TINY_VIT["depth"]]
FAMILY_SHAPES = {"smoke": (TINY_AUDIO, TINY_VISUAL), "smoke_vit": (SMOKE_VIT, SMOKE_VIT)}


@pytest.mark.parametrize("r", [4, 8])
@pytest.mark.parametrize("spec", [CLS, SEG], ids=["cls", "seg"])
def test_param_count_formula(family: str, r: int, spec: TaskSpec) -> None:
    enc = LstEncoder(*_towers(family), spec, LstConfig(r=r))
    audio, visual = FAMILY_SHAPES[family]
    # maps: the last block of each stage (Swin-V2), or ViT blocks 0, 0, 0, 1 (both of width 32)
    maps = visual[0] if family == "smoke" else [visual[0][0]] * 4
    want = tower_count(*audio, r, []) + tower_count(*visual, r, maps if spec.needs_maps else [])
    trainable = sum(p.numel() for p in enc.parameters() if p.requires_grad)
    assert trainable == want
    assert sum(enc.param_breakdown().values()) == trainable


def test_paper_count() -> None:
    """Swin-V2-L (192-1536, depths 2-2-18-2) and HTS-AT (96-768, depths 2-2-6-2) at the official r = 8: about
    6.1 M trainable parameters (2.7 % of the towers' 222.7 M)."""
    p = get_preset("paper")
    with torch.device("meta"):
        audio, visual = build_backbone(p.audio, p.shape), build_backbone(p.visual, p.shape)
        enc = LstEncoder(audio, visual, TaskSpec("ave", num_segments=10), LstConfig(r=8))
    audio_count = tower_count(stage_widths(96, 4), [2, 2, 6, 2], 8, [])
    visual_count = tower_count(stage_widths(192, 4), [2, 2, 18, 2], 8, [])
    assert sum(p.numel() for p in enc.parameters() if p.requires_grad) == audio_count + visual_count == 6_120_072


def _towers(family: str):
    towers = preset_towers(family)
    return towers.audio, towers.visual


def test_towers_run_under_no_grad_and_get_no_gradient(family: str) -> None:
    enc = LstEncoder(*_towers(family), SEG, LstConfig()).train()
    grad_modes: list[bool] = []
    tower_outputs: list[torch.Tensor] = []

    def record(module: torch.nn.Module, args: object, out: torch.Tensor) -> None:
        grad_modes.append(torch.is_grad_enabled())
        tower_outputs.append(out)

    for bb in (enc.audio_bb, enc.visual_bb):
        assert not bb.training  # the frozen towers stay in eval mode
        for unit in bb.units:
            unit.block.register_forward_hook(record)
        bb.model.patch_embed.register_forward_hook(record)
    probe_loss(enc, *av_batch(family)).backward()
    assert grad_modes and not any(grad_modes)
    assert all(out.grad_fn is None for out in tower_outputs)  # no autograd graph through a tower
    assert all(not p.requires_grad and p.grad is None for p in enc.backbone_parameters())
    for name, p in enc.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(("alpha", "side_share"), [(0.0, 0.5), (10.0, 1.0), (-10.0, 0.0)])
def test_ladder_gate_mixes_side_and_down_projected_tower(alpha: float, side_share: float) -> None:
    """Side block l reads g * side + (1 - g) * down_l(h_l), g = sigmoid(alpha / 0.1): at the
    official alpha = 0 an even mix; a gate at +-10 (g = 1 or 0 in float32) passes only the side
    stream or only the tower. Checked at the first Swin-V2 stage change, where the side stream is
    patch-merged first."""
    enc = LstEncoder(*_towers("smoke"), CLS, LstConfig(r=8, gate_init=alpha))
    side_net = enc.side_v.double()  # float64: the two forms of the mix agree to its round-off on any CPU
    g = torch.Generator().manual_seed(0)
    side = torch.randn(2, 8, 8, 2, generator=g, dtype=torch.float64)  # after the first block: 8 x 8, width 16 / 8
    frozen = torch.randn(2, 4, 4, 32, generator=g, dtype=torch.float64)  # the second block's output: 4 x 4, width 32
    seen: list[torch.Tensor] = []
    side_net.blocks[1].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        side_net.rung(1, side, frozen)
        merged, down = side_net.merges[1](side), side_net.downs[1](frozen)
    want = side_share * merged + (1 - side_share) * down
    torch.testing.assert_close(seen[0], want.flatten(1, 2), **FLOAT64)


def test_memory_floor_bounds_a_profiled_step_on_the_smoke_preset() -> None:
    """The stated floor (frozen features the ladders read + side activations) is at most what
    `bench profile` measures for one AVE training step, head included, and within 1.15 of it."""
    spec = ProfileSpec(methods=["lst"], preset="smoke", device="cpu")
    run = resolve_point(spec, "lst", batch_size=2, segments=3)
    figures = memory_figures(build_step(run, get_preset("smoke"), torch.device("cpu")))
    floor, saved = figures["memory_floor_bytes"], figures["activation_bytes"]
    assert floor <= saved <= 1.15 * floor, (floor, saved)


def test_floor_features_are_what_the_ladders_read_and_scale_with_frames(family: str) -> None:
    """The floor's frozen part per frame is the size of the tokens entering the first block plus
    every block's output, as a real pass of each tower makes them; the floor is per frame."""
    enc = LstEncoder(*_towers(family), CLS, LstConfig())
    audio, visual = av_batch(family, b=2, t=3)
    for bb, x, modality in ((enc.audio_bb, audio, "audio"), (enc.visual_bb, visual, "visual")):
        with torch.no_grad():
            embedded = bb.embed(bb.prepare(x[0, :1], modality))
            _, outputs = bb.forward_units(bb.prepare(x[0, :1], modality))
        assert frozen_floats(bb) == embedded.numel() + sum(o.numel() for o in outputs.values())
    assert enc.memory_floor_bytes(audio, visual) == 6 * enc.memory_floor_bytes(audio[:1, :1], visual[:1, :1])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"r": 0}, "LstConfig.r"),
        ({"r": 2.0}, "LstConfig.r"),
        ({"gate_temperature": 0.0}, "LstConfig.gate_temperature"),
        ({"gate_temperature": True}, "LstConfig.gate_temperature"),
        ({"gate_init": "0"}, "LstConfig.gate_init"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        LstConfig(**kwargs)  # type: ignore[arg-type]


def test_side_width_must_stay_positive() -> None:
    with pytest.raises(ValueError, match=r"LstConfig.r=32: block 0 of width 16 leaves a side width of 0"):
        LstEncoder(*_towers("smoke"), CLS, LstConfig(r=32))
