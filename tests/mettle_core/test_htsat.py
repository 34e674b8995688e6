"""HTS-AT audio tower: parameter count and the input path (fold, SpecAugment, length limit)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mettle_core.htsat import HTSAT, HtsatConfig, drop_stripes, htsat_param_count

OFFICIAL_PARAMS = 27_534_488


TINY = HtsatConfig(mel_bins=16, spec_size=64, patch_size=2, embed_dim=8, depths=(2, 2, 2, 1), num_heads=(2, 2, 4, 4))


def test_parameter_count_matches_the_official_encoder_and_the_closed_form():
    with torch.device("meta"):
        model = HTSAT(HtsatConfig())
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS
    assert htsat_param_count(HtsatConfig()) == OFFICIAL_PARAMS
    for cfg in (TINY, HtsatConfig(mel_bins=32, spec_size=128, embed_dim=12, num_heads=(1, 2, 3, 4), mlp_ratio=3.0)):
        assert htsat_param_count(cfg) == sum(p.numel() for p in HTSAT(cfg).parameters())


def test_one_second_input_at_the_official_settings():
    model = HTSAT(HtsatConfig()).eval()
    x = torch.randn(2, 1, 101, 64)  # 1 s at 32 kHz, hop 320
    with torch.no_grad():
        assert model.embed(x).shape == (2, 64, 64, 96)
        assert model(x[:1]).shape == (1, 768)


def test_fold_stacks_time_chunks_along_frequency():
    model = HTSAT(TINY)
    t = torch.arange(256.0).view(1, 1, 256, 1).expand(1, 1, 256, 16)  # value = frame index
    image = model.fold(t)[0, 0]
    assert image.shape == (64, 64)
    assert torch.equal(image[0], torch.arange(64.0)) and torch.equal(image[16], torch.arange(64.0, 128.0))
    assert torch.equal(image[63], torch.arange(192.0, 256.0))


def test_too_long_or_wrong_shaped_input_is_a_value_error():
    model = HTSAT(TINY)
    with pytest.raises(ValueError, match="T=257.*256"):
        model.embed(torch.randn(1, 1, 257, 16))
    with pytest.raises(ValueError, match="16"):
        model.embed(torch.randn(1, 1, 100, 32))


def test_spec_augment_zeroes_stripes_in_training_only():
    def folded(model: HTSAT, x: torch.Tensor) -> torch.Tensor:
        """The spectrogram embed hands to fold: after bn0 and any SpecAugment."""
        seen = []
        fold = model.fold

        def spy(image: torch.Tensor) -> torch.Tensor:
            seen.append(image)
            return fold(image)

        model.fold = spy  # type: ignore[method-assign]
        model.embed(x)
        return seen[0]

    x = torch.randn(4, 1, 200, 16)
    torch.manual_seed(0)
    evaluated = folded(HTSAT(TINY).eval(), x)
    augmented = folded(HTSAT(TINY).train(), x)
    plain = folded(HTSAT(replace(TINY, spec_augment=False)).train(), x)
    assert not (evaluated == 0).any() and not (plain == 0).any()
    zero_frames = (augmented == 0).all(dim=3).sum(dim=(1, 2))
    zero_bins = (augmented == 0).all(dim=2).sum(dim=(1, 2))
    assert (zero_frames > 0).all() and (zero_frames <= 2 * 63).all()
    assert (zero_bins > 0).all() and (zero_bins <= 2 * 7).all()
    kept = augmented != 0
    assert torch.equal(augmented[kept], plain[kept])


def test_drop_stripes_follows_torchlibrosa():
    torch.manual_seed(0)
    out = drop_stripes(torch.ones(2048, 1, 100, 3), dim=2, width=64, stripes=1)
    dropped = out[:, 0, :, 0] == 0
    assert torch.equal(out == 0, dropped[:, None, :, None].expand_as(out))  # whole frames
    widths = dropped.sum(dim=1)
    assert widths.max() == 63 and widths.min() == 0  # uniform in [0, width)
    assert (dropped.int().diff(dim=1).abs().sum(dim=1) <= 2).all()  # one contiguous stripe
    # starts uniform in [0, size - width): from the first frame on, never over the last one
    assert dropped[:, 0].any() and dropped[:, -2].any() and not dropped[:, -1].any()
    short = drop_stripes(torch.ones(64, 1, 10, 3), dim=2, width=64, stripes=2)  # wider than the axis
    assert (short == 0).any()


def test_gradients_reach_every_encoder_parameter():
    torch.manual_seed(0)
    model = HTSAT(replace(TINY, drop_path_rate=0.0)).train()
    model(torch.randn(2, 1, 120, 16)).square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"spec_size": 100}, "spec_size"),
        ({"mel_bins": 16, "spec_size": 80, "window_size": 5}, "spec_size"),  # grid 20 -> 10 -> 5: odd merge
        ({"num_heads": (4, 8, 16)}, "num_heads"),
        ({"num_heads": (5, 8, 16, 32)}, "num_heads"),
        ({"window_size": 6}, "window_size"),
        ({"depths": (2, 0, 6, 2)}, "depths"),
        ({"drop_path_rate": 1.0}, "drop_path_rate"),
        ({"stripes": -1}, "stripes"),
    ],
)
def test_config_errors_name_the_field(change, field):
    with pytest.raises(ValueError, match=rf"HtsatConfig\.{field}="):
        HtsatConfig(**change)
