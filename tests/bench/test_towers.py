"""Tower construction from checkpoint files (bench/towers.py): timm towers through timm's
loader, HTS-AT strictly from its official layout, each with its audio front-end."""

from pathlib import Path

import pytest
import timm.models._builder
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from bench.config import ConfigError
from bench.frontends import FbankFrontend, LogMelFrontend
from bench.presets import get_preset
from bench.towers import build_backbone

SMOKE, SMOKE_VIT = get_preset("smoke"), get_preset("smoke_vit")


def _refuse(self, checkpoint_path, prefix=""):
    raise ValueError(f"the .npz loader was asked to read {checkpoint_path}")


@pytest.fixture
def vit_weights(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(3)
    state = {k: v.contiguous() for k, v in build_backbone(SMOKE_VIT.audio, SMOKE_VIT.shape).model.state_dict().items()}
    path = tmp_path / "audio.safetensors"
    save_file(state, str(path))
    return path, state


def test_pytorch_weights_bypass_the_npz_loader_of_augreg_configs(monkeypatch, vit_weights):
    """vit_tiny's timm config sends files to VisionTransformer.load_pretrained, which reads
    only JAX .npz before timm 1.0.31: a PyTorch checkpoint must take the state-dict path.
    Emptying the source keys makes timm >= 1.0.31 keep the registry's custom_load, as older
    versions did."""
    path, state = vit_weights
    monkeypatch.setattr(timm.models._builder, "_PRETRAINED_SOURCE_KEYS", (), raising=False)
    monkeypatch.setattr(VisionTransformer, "load_pretrained", _refuse)
    model = build_backbone(SMOKE_VIT.audio, SMOKE_VIT.shape, path).model
    assert model.pretrained_cfg["custom_load"] is False
    loaded = model.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())


def test_npz_files_still_go_to_the_models_own_loader(monkeypatch, tmp_path):
    npz = tmp_path / "augreg.npz"
    npz.write_bytes(b"not read")
    monkeypatch.setattr(VisionTransformer, "load_pretrained", _refuse)
    with pytest.raises(ValueError, match="the .npz loader was asked to read .*augreg.npz"):
        build_backbone(SMOKE_VIT.audio, SMOKE_VIT.shape, npz)


def test_a_pth_checkpoint_loads_like_safetensors(tmp_path, vit_weights):
    _, state = vit_weights
    pth = tmp_path / "audio.pth"
    torch.save(state, pth)
    loaded = build_backbone(SMOKE_VIT.audio, SMOKE_VIT.shape, pth).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_a_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors does not exist"):
        build_backbone(SMOKE.visual, SMOKE.shape, tmp_path / "nope.safetensors")


@pytest.mark.parametrize("kind", ["keys", "shape"])
def test_a_checkpoint_of_another_tower_is_refused_naming_the_file(tmp_path, vit_weights, kind):
    """Strict loading: a file that does not fit the tower is a usage error naming the file
    and the tower, not a silent partial load or a bare KeyError from timm's key filter."""
    _, state = vit_weights
    state = {"head.weight": torch.zeros(2, 2)} if kind == "keys" else {**state, "blocks.0.norm1.weight": torch.zeros(3)}
    other = tmp_path / "other.safetensors"
    save_file(state, str(other))
    with pytest.raises(ConfigError, match=r"tower checkpoint .*other.safetensors does not fit vit_tiny_patch16_224"):
        build_backbone(SMOKE_VIT.audio, SMOKE_VIT.shape, other)


def test_each_tower_gets_its_own_front_end_told_the_data_rate():
    audio = build_backbone(SMOKE.audio, SMOKE.shape)
    shared = build_backbone(SMOKE.shared, SMOKE.shape)
    assert isinstance(audio.audio_frontend, LogMelFrontend) and isinstance(shared.audio_frontend, FbankFrontend)
    assert build_backbone(SMOKE.visual, SMOKE.shape).audio_frontend is None
    paper = get_preset("paper")
    with torch.device("meta"):
        lavish = build_backbone(paper.shared, paper.shape)
    # the paper's data is 32 kHz for HTS-AT; LAVisH's fbank resamples it to its own 16 kHz
    assert paper.shape.sample_rate == 32000 and paper.shared.audio.params["sample_rate"] == 16000
    assert isinstance(lavish.audio_frontend, FbankFrontend)


def test_htsat_checkpoint_written_by_pretraining_loads_strictly(tmp_path):
    torch.manual_seed(1)
    state = {k: v.contiguous() for k, v in build_backbone(SMOKE.audio, SMOKE.shape).model.state_dict().items()}
    path = tmp_path / "htsat.safetensors"
    save_file(state, str(path))
    loaded = build_backbone(SMOKE.audio, SMOKE.shape, path).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    save_file({**state, "layers.0.blocks.0.attn.qkv.weight": torch.zeros(3, 16)}, str(path))
    with pytest.raises(ConfigError, match=r"htsat.safetensors: key 'layers.0.blocks.0.attn.qkv.weight' has shape"):
        build_backbone(SMOKE.audio, SMOKE.shape, path)
