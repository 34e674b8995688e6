"""The paper's setting with a checkpoint in the official HTS-AT release layout: it loads
strictly on the `paper` preset through `--set towers.audio=PATH`, every method takes one
training step on it, and a checkpoint that does not fit is a usage error naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.config import ConfigError
from bench.presets import get_preset
from bench.profile import ProfileSpec, build_step, resolve_point
from bench.registry import METHODS
from bench.towers import build_backbone, build_frontend

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "htsat_official_keys.json"
PAPER = get_preset("paper")
SMALL = ["ave.num_train=1", "ave.num_val=1", "ave.num_test=1"]


def official_checkpoint(path: Path, mel: torch.Tensor | None = None) -> Path:
    """A Lightning .ckpt with every key and shape of the official AudioSet model (the fixture,
    listed from the official code), random encoder weights, and the mel filterbank the
    official front-end holds (HTS-AT's settings), or `mel`."""
    keys = json.loads(FIXTURE.read_text())
    torch.manual_seed(0)
    state = {k: 0.02 * torch.randn(spec["shape"]) for k, spec in keys.items()}
    state = {k: v.abs() + 1 if k.endswith("running_var") else v for k, v in state.items()}
    state["sed_model.bn0.num_batches_tracked"] = torch.tensor(10)
    state["sed_model.logmel_extractor.melW"] = (
        build_frontend(PAPER.audio.audio, PAPER.shape).mel if mel is None else mel
    )
    torch.save({"state_dict": state, "epoch": 3, "pytorch-lightning_version": "1.5.9"}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return official_checkpoint(tmp_path_factory.mktemp("htsat") / "HTSAT_AudioSet_Saved_1.ckpt")


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_takes_a_step_on_the_official_checkpoint(checkpoint: Path, method: str) -> None:
    spec = ProfileSpec([method], preset="paper", segments=2, overrides=[f"towers.audio={checkpoint}", *SMALL])
    step = build_step(resolve_point(spec, method, 1, 2), PAPER, torch.device("cpu"))
    if "audio" in METHODS.get(method).towers:
        loaded = step.towers["audio"]
        assert loaded["origin"] == "explicit" and loaded["file"] == str(checkpoint)
        assert loaded["params"] == 27_534_488
        audio = step.model.encoder.audio_bb.model.state_dict()
        official = torch.load(checkpoint, weights_only=True)["state_dict"]
        assert torch.equal(
            audio["layers.2.blocks.5.mlp.fc2.weight"], official["sed_model.layers.2.blocks.5.mlp.fc2.weight"]
        )
    optimizer = step.make_optimizer()
    loss = step.loss()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)


def test_a_wrong_shape_checkpoint_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = official_checkpoint(tmp_path / "bad.ckpt")
    ckpt = torch.load(bad, weights_only=True)
    ckpt["state_dict"]["sed_model.layers.1.blocks.0.attn.qkv.weight"] = torch.zeros(576, 191)
    torch.save(ckpt, bad)
    argv = ["run", "--preset", "paper", "--methods", "frozen", "--tasks", "ave", "--out", str(tmp_path / "out")]
    code = main(
        [*argv, "--set", f"towers.audio={bad}", "--set", "towers.visual=random", "--set", "ave.segments=2"]
        + [arg for item in SMALL for arg in ("--set", item)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "bad.ckpt" in err and "layers.1.blocks.0.attn.qkv.weight" in err and "[576, 191]" in err


def test_a_checkpoint_trained_on_other_input_features_is_refused(tmp_path: Path) -> None:
    """HTS-AT's release has 16 kHz models too (hop 160): their mel filterbank is not this
    tower's, so their weights would read features they never saw."""
    other = build_frontend(PAPER.audio.audio, PAPER.shape).mel.clone()
    other[:, 0] = 0.0
    ckpt = official_checkpoint(tmp_path / "scv2.ckpt", mel=other)
    with pytest.raises(ConfigError, match="logmel_extractor.melW .* not this tower's mel filterbank"):
        build_backbone(PAPER.audio, PAPER.shape, ckpt)
