"""Per-block access to the three tower families, their pooling and their front-ends."""

import pytest
import torch
from tiny import tower
from tolerances import FLOAT64

from mettle_core.backbone import Backbone
from mettle_core.htsat import HTSAT, HtsatConfig
from mettle_core.interface import Towers


@pytest.mark.parametrize(
    ("preset", "role", "modality"),
    [("smoke_vit", "visual", "visual"), ("smoke", "visual", "visual"), ("smoke", "audio", "audio")],
    ids=["vit", "swinv2", "htsat"],
)
def test_unit_loop_reproduces_the_towers_own_forward(preset: str, role: str, modality: str) -> None:
    """Running unit by unit (downsample attached to the block after it) is the tower's own
    forward pass: timm's for ViT and Swin-V2, HTS-AT's latent output for HTS-AT. In float64,
    where a reordered sum moves nothing by 1e-9; a unit skipped or run twice moves it by 1e-1."""
    bb = tower(preset, role).eval().double()
    x = 0.1 * torch.randn(2, 8000) if modality == "audio" else torch.randn(2, 3, 32, 32)
    prepared = bb.prepare(x.double(), modality)
    last, kept = bb.forward_units(prepared)
    torch.testing.assert_close(bb.pool(last), bb.model(prepared), **FLOAT64)
    assert sorted(kept) == list(range(bb.depth))
    torch.testing.assert_close(bb.features(x.double(), modality), bb.pool(last), **FLOAT64)


def test_swin_units_run_downsample_first_and_report_stage_widths() -> None:
    bb = tower("smoke", "visual")
    assert [u.dim for u in bb.units] == [16, 32, 64, 64, 64, 128]
    assert [u.downsample is not None for u in bb.units] == [False, True, True, False, False, True]
    assert bb.stage_dims == (16, 32, 64, 128)
    _, kept = bb.forward_units(torch.randn(1, 3, 32, 32), keep=set(bb.pyramid_units()))
    shapes = [tuple(bb.grid(kept[i]).shape) for i in bb.pyramid_units()]
    assert shapes == [(1, 16, 8, 8), (1, 32, 4, 4), (1, 64, 2, 2), (1, 128, 1, 1)]


def test_htsat_merges_at_the_end_of_a_stage_which_the_next_unit_runs_first() -> None:
    bb = tower("smoke", "audio")
    assert bb.family == "htsat" and isinstance(bb.model, HTSAT)
    assert [u.dim for u in bb.units] == [16, 32, 64, 128]
    downs = [u.downsample for u in bb.units]
    assert downs[0] is None and [d is bb.model.layers[s].downsample for s, d in enumerate(downs[1:])] == [True] * 3
    assert bb.model.layers[-1].downsample is None
    logmel = bb.prepare(0.1 * torch.randn(3, 8000), "audio")
    assert logmel.shape == (3, 1, 101, 32)  # 1 s at hop 80: the log-mel before HTS-AT folds it
    _, kept = bb.forward_units(logmel, keep=set(bb.pyramid_units()))
    assert [tuple(bb.grid(kept[i]).shape) for i in bb.pyramid_units()] == [
        (3, 16, 8, 8),
        (3, 32, 4, 4),
        (3, 64, 2, 2),
        (3, 128, 1, 1),
    ]


def test_vit_grid_drops_the_class_token_and_pyramid_spreads_over_depth() -> None:
    bb = tower("smoke_vit", "visual")
    last, _ = bb.forward_units(torch.randn(2, 3, 32, 32))
    assert last.shape == (2, 17, 32)
    assert bb.grid(last).shape == (2, 32, 4, 4)
    assert bb.pyramid_units() == (0, 0, 0, 1)
    assert bb.pyramid_channels() == (32, 32, 32, 32)


def test_prepare_runs_the_front_end_then_fits_channels_and_size() -> None:
    shared = tower("smoke", "shared")  # LAVisH's Swin-V2 hears through a 32 x 32 Kaldi fbank
    y = shared.prepare(0.1 * torch.randn(2, 8000), "audio")
    assert y.shape == (2, 3, 32, 32) and torch.equal(y[:, 0], y[:, 2])
    assert shared.prepare(torch.randn(2, 3, 20, 20), "visual").shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="tower expects 3"):
        shared.prepare(torch.randn(1, 2, 32, 32), "visual")
    with pytest.raises(ValueError, match="swinv2 tower has no audio front-end"):
        tower("smoke", "visual").prepare(torch.randn(2, 8000), "audio")


def test_pool_is_the_mean_token_without_a_class_token_and_the_class_token_with_one() -> None:
    swin = tower("smoke", "visual").double()
    x = torch.randn(2, 2, 2, 128, dtype=torch.float64)
    torch.testing.assert_close(swin.pool(x), swin.final_norm(x).mean(dim=(1, 2)), **FLOAT64)
    vit = tower("smoke_vit", "visual")
    tokens = torch.randn(2, 17, 32)
    assert torch.equal(vit.pool(tokens), vit.final_norm(tokens)[:, 0])


def test_tower_params_count_the_tower_proper_not_its_front_end() -> None:
    bb = Backbone(HTSAT(HtsatConfig()), torch.nn.Linear(2, 2))
    assert bb.tower_params == 27_534_488


def test_towers_build_only_what_is_read_and_refuse_an_undeclared_role() -> None:
    built = []

    def factory(name: str):
        def make() -> Backbone:
            built.append(name)
            return tower("smoke_vit", "visual")

        return make

    towers = Towers(factory("audio"), factory("visual"), None)
    assert towers.visual is towers.visual
    assert built == ["visual"] and list(towers.built) == ["visual"]
    with pytest.raises(ValueError, match="the shared tower was not provided"):
        _ = towers.shared


@pytest.mark.parametrize(
    ("preset", "role", "modality"),
    [("smoke_vit", "visual", "visual"), ("smoke", "visual", "visual"), ("smoke", "audio", "audio")],
    ids=["vit", "swinv2", "htsat"],
)
def test_unit_tokens_are_the_tokens_each_block_sees(preset: str, role: str, modality: str) -> None:
    """Read from each block, not from its stage: a timm 1.x Swin-V2 stage's input_resolution
    is the grid before its downsample, twice the side its blocks run on."""
    bb = tower(preset, role).eval()
    x = 0.1 * torch.randn(1, 8000) if modality == "audio" else torch.randn(1, 3, 32, 32)
    xs = bb.embed(bb.prepare(x, modality))
    for unit in bb.units:
        xs = bb.run_unit(unit, xs)
        assert bb.unit_tokens(unit) == bb.tokens(xs).shape[1]
    if bb.family == "swinv2":
        stage = bb.model.layers[1]
        assert stage.input_resolution[0] == 2 * stage.blocks[0].input_resolution[0]


@pytest.mark.parametrize("preset", ["smoke_vit", "smoke"])
def test_branches_rebuild_the_block(preset: str) -> None:
    """x + attention branch, then + MLP branch, is the block itself (eval: no drop path), in
    float64: a branch left out or doubled moves the output by 1e-2 and more."""
    bb = tower(preset, "visual").eval().double()
    unit = bb.units[1]
    x = bb.embed(bb.prepare(torch.randn(2, 3, 32, 32, dtype=torch.float64), "visual"))
    x = bb.run_unit(bb.units[0], x)
    if unit.downsample is not None:
        x = unit.downsample(x)
    y = x + bb.attn_branch(unit.block, x)
    y = y + bb.mlp_branch(unit.block, y)
    torch.testing.assert_close(y, unit.block(x), **FLOAT64)
    with pytest.raises(ValueError, match="htsat block does not expose"):
        tower("smoke", "audio").attn_branch(unit.block, x)
