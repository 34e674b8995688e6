"""Tower construction from local checkpoint files (bench/towers.py)."""

from pathlib import Path

import pytest
import timm.models._builder
import torch
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer

from bench.config import ConfigError
from bench.presets import get_preset
from bench.towers import build_backbone

TINY = get_preset("tiny")
AUDIO = Path(__file__).resolve().parents[2] / "bench" / "weights" / "tiny_audio.safetensors"


def _refuse(self, checkpoint_path, prefix=""):
    raise ValueError(f"the .npz loader was asked to read {checkpoint_path}")


def test_pytorch_weights_bypass_the_npz_loader_of_augreg_configs(monkeypatch):
    """vit_tiny's timm config sends files to VisionTransformer.load_pretrained, which reads
    only JAX .npz before timm 1.0.31: a PyTorch checkpoint must take the state-dict path.
    Emptying the source keys makes timm >= 1.0.31 keep the registry's custom_load, as older
    versions did."""
    monkeypatch.setattr(timm.models._builder, "_PRETRAINED_SOURCE_KEYS", (), raising=False)
    monkeypatch.setattr(VisionTransformer, "load_pretrained", _refuse)
    model = build_backbone(TINY.audio, AUDIO).model
    assert model.pretrained_cfg["custom_load"] is False
    loaded = model.state_dict()
    expected = load_file(str(AUDIO))
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())


def test_npz_files_still_go_to_the_models_own_loader(monkeypatch, tmp_path):
    npz = tmp_path / "augreg.npz"
    npz.write_bytes(b"not read")
    monkeypatch.setattr(VisionTransformer, "load_pretrained", _refuse)
    with pytest.raises(ValueError, match="the .npz loader was asked to read .*augreg.npz"):
        build_backbone(TINY.audio, npz)


def test_a_pth_checkpoint_loads_like_safetensors(tmp_path):
    state = load_file(str(AUDIO))
    pth = tmp_path / "audio.pth"
    torch.save(state, pth)
    loaded = build_backbone(TINY.audio, pth).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_a_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors does not exist"):
        build_backbone(TINY.audio, tmp_path / "nope.safetensors")


@pytest.mark.parametrize(
    "state",
    [
        {"head.weight": torch.zeros(2, 2)},  # another model's keys
        {**load_file(str(AUDIO)), "blocks.0.norm1.weight": torch.zeros(3)},  # right keys, wrong shape
    ],
    ids=["keys", "shape"],
)
def test_a_checkpoint_of_another_tower_is_refused_naming_the_file(tmp_path, state):
    """Strict loading: a file that does not fit the tower is a usage error naming the file
    and the tower, not a silent partial load or a bare KeyError from timm's key filter."""
    other = tmp_path / "other.safetensors"
    save_file(state, str(other))
    with pytest.raises(ConfigError, match=r"tower checkpoint .*other.safetensors does not fit vit_tiny_patch16_224"):
        build_backbone(TINY.audio, other)
