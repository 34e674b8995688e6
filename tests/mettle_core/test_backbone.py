import pytest
import torch
from tiny import tiny_swin, tiny_vit

from mettle_core.backbone import Backbone
from mettle_core.interface import Towers


def vit(chans: int = 3) -> Backbone:
    torch.manual_seed(0)
    return tiny_vit(chans, depth=4)


def swin() -> Backbone:
    torch.manual_seed(0)
    return tiny_swin()


@pytest.mark.parametrize("make", [vit, swin])
def test_unit_loop_reproduces_timm_forward(make):
    bb = make().eval()
    x = torch.randn(2, 3, *bb.img_size)
    last, kept = bb.forward_units(bb.prepare(x))
    assert torch.allclose(bb.pool(last), bb.model(x), atol=1e-5)
    assert sorted(kept) == list(range(bb.depth))


def test_swin_units_run_downsample_first_and_report_stage_widths():
    bb = swin()
    assert [u.dim for u in bb.units] == [16, 32, 64, 64, 128]
    assert [u.downsample is not None for u in bb.units] == [False, True, True, False, True]
    assert bb.stage_dims == (16, 32, 64, 128)
    _, kept = bb.forward_units(torch.randn(1, 3, 64, 64), keep=set(bb.pyramid_units()))
    shapes = [tuple(bb.grid(kept[i]).shape) for i in bb.pyramid_units()]
    assert shapes == [(1, 16, 16, 16), (1, 32, 8, 8), (1, 64, 4, 4), (1, 128, 2, 2)]


def test_vit_grid_drops_the_class_token_and_pyramid_spreads_over_depth():
    bb = vit()
    last, _ = bb.forward_units(torch.randn(2, 3, 16, 16))
    assert last.shape == (2, 17, 32)
    assert bb.grid(last).shape == (2, 32, 4, 4)
    assert bb.pyramid_units() == (0, 1, 2, 3)
    assert bb.pyramid_channels() == (32, 32, 32, 32)


def test_prepare_repeats_one_channel_and_resizes():
    bb = vit()
    x = torch.randn(2, 1, 8, 12)
    y = bb.prepare(x)
    assert y.shape == (2, 3, 16, 16)
    assert torch.equal(y[:, 0], y[:, 2])
    with pytest.raises(ValueError, match="tower expects 3"):
        bb.prepare(torch.randn(1, 2, 16, 16))


def test_towers_build_only_what_is_read():
    built = []

    def factory(name):
        def make():
            built.append(name)
            return vit()

        return make

    towers = Towers(factory("audio"), factory("visual"), factory("shared"))
    assert towers.shared is towers.shared
    assert built == ["shared"]
