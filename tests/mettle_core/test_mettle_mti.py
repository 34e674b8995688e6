"""Meta-Token Injection on the visual pyramid (segmentation)."""

from __future__ import annotations

import pytest
import torch
from mettle_helpers import SEG, av_batch, towers

from mettle_core import MettleConfig, MettleEncoder
from mettle_core.backbone import Backbone


def seg_encoder(family: str = "swinv2", **overrides: object) -> MettleEncoder:
    return MettleEncoder(*towers(family), SEG, MettleConfig(**overrides))  # type: ignore[arg-type]


def frozen_pyramid(bb: Backbone, visual: torch.Tensor) -> list[torch.Tensor]:
    """The maps straight from the tower, without Mettle."""
    with torch.no_grad():
        _, kept = bb.forward_units(bb.prepare(visual.flatten(0, 1), "visual"), keep=set(bb.pyramid_units()))
    return [bb.grid(kept[i]) for i in bb.pyramid_units()]


def test_adapted_pyramid_has_the_decoder_shapes() -> None:
    enc = seg_encoder()
    audio, visual = av_batch(b=2, t=3)
    maps = enc(audio, visual).maps
    assert maps is not None
    # Swin-V2 with 4x4 patches on 32x32 frames: stage grids 8, 4, 2, 1 at widths 16, 32, 64, 128.
    assert enc.map_channels == enc.visual_bb.pyramid_channels() == (16, 32, 64, 128)
    assert [tuple(m.shape) for m in maps] == [(6, 16, 8, 8), (6, 32, 4, 4), (6, 64, 2, 2), (6, 128, 1, 1)]
    assert all(m.dtype == torch.float32 and m.requires_grad for m in maps)


@pytest.mark.parametrize("family", ["vit", "swinv2"])
@pytest.mark.parametrize(
    "overrides",
    [{}, {"mti": "film"}, {"mti": "off"}, {"feature_dtype": "bf16"}],
    ids=["attention", "film", "off", "bf16"],
)
def test_closed_gates_or_mti_off_give_the_frozen_pyramid_exactly(family: str, overrides: dict[str, object]) -> None:
    enc = seg_encoder(family, **overrides)
    audio, visual = av_batch()
    out = enc(audio, visual)
    assert out.maps is not None and (enc.mti is None) == (overrides.get("mti") == "off")
    for got, want in zip(out.maps, frozen_pyramid(enc.visual_bb, visual), strict=True):
        assert got.dtype == torch.float32 and torch.equal(got, want)
    assert out.a.shape == (2, 2, enc.audio_dim) and out.v.shape == (2, 2, enc.visual_dim)


@pytest.mark.parametrize("kind", ["attention", "film"])
def test_gradients_from_the_maps_reach_mti_and_top_lcd_but_no_backbone_parameter(kind: str) -> None:
    enc = seg_encoder(mti=kind, pool="mean")  # the maps are made without the pooled vectors' queries
    assert enc.audio_units == (enc.audio_bb.depth - 1,) and enc.visual_units == (enc.visual_bb.depth - 1,)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name.endswith("gate"):
                p.fill_(0.5)
    audio, visual = av_batch()
    maps = enc(audio, visual).maps
    assert maps is not None
    g = torch.Generator().manual_seed(3)
    sum((m * torch.randn(m.shape, generator=g)).sum() for m in maps).backward()  # type: ignore[union-attr]
    assert all(p.grad is None for p in enc.backbone_parameters())
    for name, p in enc.named_parameters():
        if p.requires_grad:  # MTI's projections and gates, both towers' top-layer LCD
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert any(not torch.equal(m, f) for m, f in zip(maps, frozen_pyramid(enc.visual_bb, visual), strict=True))
