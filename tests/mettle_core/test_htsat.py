"""HTS-AT audio tower: the official checkpoint layout, parameter count, numerical equivalence
with the official code, and the input path (fold, SpecAugment, length limit).

Fixtures under tests/fixtures/ were generated once from the official code
(RetroCirce/HTS-Audio-Transformer, model/htsat.py, model/layers.py and config.py copied to a
scratch directory outside the repository, with a stub for its utils.py, whose imports are
training-only; torch 2.14, torchlibrosa 0.1.0):

- htsat_official_keys.json: every key of `HTSAT_Swin_Transformer(...)` built exactly as the
  official main.py builds it from config.py, with the `sed_model.` prefix its Lightning
  wrapper adds, and each tensor's shape and dtype.
- htsat_tiny_official.npz: a tiny official model (mel 16, spec 64, patch 2, embed 8, depths
  2-2-2-1, heads 2-2-4-4, window 8, mlp ratio 2; STFT 64/32 so the front-end stays small),
  torch.manual_seed(0), every parameter redrawn from a seeded normal (norm weights near 1)
  and bn0 given non-trivial running statistics. Its state dict (unprefixed, with derived
  buffers, head and front-end) is stored under `state/`, with two eval-mode runs of the
  official path from log-mel: bn0 (mel axis as channels), reshape_wav2img, forward_features.
  `tokens` are the output of the official final norm (captured by a forward hook) reshaped
  to NHWC; `latent` is forward_features' `latent_output`. `short` has 50 frames (stretched
  to 256), `full` has 256.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mettle_core.htsat import (
    HTSAT,
    CheckpointMismatch,
    HtsatConfig,
    drop_stripes,
    htsat_param_count,
    load_htsat_checkpoint,
    split_official_state_dict,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"
OFFICIAL_PARAMS = 27_534_488


def official_keys() -> dict[str, dict]:
    return json.loads((FIXTURES / "htsat_official_keys.json").read_text())


def lightning(state: dict[str, torch.Tensor]) -> dict:
    return {"state_dict": state, "epoch": 0, "global_step": 0, "pytorch-lightning_version": "1.5.9"}


def placeholder_state() -> dict[str, torch.Tensor]:
    """Official keys and shapes backed by one element each (expanded): tiny on disk."""
    state = {}
    for key, spec in official_keys().items():
        state[key] = torch.zeros((), dtype=getattr(torch, spec["dtype"])).expand(spec["shape"])
    return state


def tiny_fixture() -> tuple[HtsatConfig, dict[str, torch.Tensor], np.lib.npyio.NpzFile]:
    data = np.load(FIXTURES / "htsat_tiny_official.npz")
    raw = json.loads(str(data["config"]))
    cfg = HtsatConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    state = {k.removeprefix("state/"): torch.from_numpy(data[k]) for k in data.files if k.startswith("state/")}
    return cfg, state, data


TINY = HtsatConfig(mel_bins=16, spec_size=64, patch_size=2, embed_dim=8, depths=(2, 2, 2, 1), num_heads=(2, 2, 4, 4))


def test_official_lightning_checkpoint_loads_strictly(tmp_path):
    torch.manual_seed(0)
    state = {}
    for key, spec in official_keys().items():
        dtype = getattr(torch, spec["dtype"])
        state[key] = torch.randn(spec["shape"]).to(dtype) if dtype.is_floating_point else torch.zeros(spec["shape"])
    path = tmp_path / "HTSAT_AudioSet_Saved_1.ckpt"
    torch.save(lightning(state), path)
    model = HTSAT(HtsatConfig())
    front = load_htsat_checkpoint(model, path)
    assert sorted(front) == [
        "logmel_extractor.melW",
        "spectrogram_extractor.stft.conv_imag.weight",
        "spectrogram_extractor.stft.conv_real.weight",
    ]
    assert torch.equal(front["logmel_extractor.melW"], state["sed_model.logmel_extractor.melW"])
    loaded = model.state_dict()
    for key in ("bn0.running_var", "patch_embed.proj.weight", "layers.2.blocks.5.attn.qkv.weight", "norm.bias"):
        assert torch.equal(loaded[key], state[f"sed_model.{key}"]), key
    # the checkpoint's (here random) masks are derived, so the computed ones stay
    assert model.layers[0].blocks[1].attn_mask.unique().tolist() == [-100.0, 0.0]


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda s: s.update({"sed_model.layers.1.blocks.0.mlp.fc1.weight": torch.zeros(768, 190)}), "fc1.weight"),
        (lambda s: s.update({"sed_model.layers.3.blocks.2.norm1.weight": torch.zeros(768)}), "layers.3.blocks.2"),
        (lambda s: s.update({"sed_model.absolute_pos_embed": torch.zeros(1, 4096, 96)}), "absolute_pos_embed"),
        (lambda s: s.pop("sed_model.layers.2.downsample.reduction.weight"), "layers.2.downsample.reduction.weight"),
    ],
    ids=["wrong-shape", "extra-block", "unknown", "missing"],
)
def test_checkpoint_mismatch_names_the_file_and_key(tmp_path, edit, named):
    state = placeholder_state()
    edit(state)
    path = tmp_path / "bad.ckpt"
    torch.save(lightning(state), path)
    with torch.device("meta"):
        model = HTSAT(HtsatConfig())
    with pytest.raises(CheckpointMismatch, match=named) as err:
        load_htsat_checkpoint(model, path)
    assert str(path) in str(err.value)


def test_parameter_count_matches_the_official_encoder_and_the_closed_form():
    with torch.device("meta"):
        model = HTSAT(HtsatConfig())
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS
    assert htsat_param_count(HtsatConfig()) == OFFICIAL_PARAMS
    for cfg in (TINY, HtsatConfig(mel_bins=32, spec_size=128, embed_dim=12, num_heads=(1, 2, 3, 4), mlp_ratio=3.0)):
        assert htsat_param_count(cfg) == sum(p.numel() for p in HTSAT(cfg).parameters())


@pytest.mark.parametrize("fmt", ["memory", "ckpt", "pth", "safetensors"])
def test_reproduces_the_official_model(tmp_path, fmt):
    cfg, state, data = tiny_fixture()
    model = HTSAT(cfg).eval()
    # the cases the fixture must exercise: a shifted block with a mask, a grid that is one
    # window (odd block unshifted), a grid smaller than the window (window clamped)
    blocks = [layer.blocks for layer in model.layers]
    assert blocks[0][1].shift_size == (4, 4) and blocks[0][1].attn_mask.shape == (16, 64, 64)
    assert blocks[2][1].shift_size == (0, 0) and blocks[2][1].attn_mask is None
    assert blocks[3][0].window_size == (4, 4)
    if fmt == "memory":
        encoder, front = split_official_state_dict(state, "fixture")
        model.load_state_dict(encoder, strict=True)
    else:
        path = tmp_path / f"tiny.{fmt}"
        if fmt == "ckpt":
            torch.save(lightning({f"sed_model.{k}": v for k, v in state.items()}), path)
        elif fmt == "pth":
            torch.save(state, path)
        else:
            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        front = load_htsat_checkpoint(model, path)
    assert sorted(front) == [k for k in sorted(state) if k.startswith(("logmel", "spectrogram"))]
    # Ours runs in float64, so what remains is the official float32 run's own rounding, stored
    # in the fixture: 4.5e-6 at most, the same on every machine; a wrong mask, shift or norm
    # moves the tokens by 1e-2 and more.
    model.double()
    with torch.no_grad():
        for case in ("short", "full"):
            x = torch.from_numpy(data[f"{case}/input"]).double()
            tokens = model.forward_features(x)
            assert (tokens - torch.from_numpy(data[f"{case}/tokens"])).abs().max() <= 1e-5, case
            assert (model(x) - torch.from_numpy(data[f"{case}/latent"])).abs().max() <= 1e-5, case


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
