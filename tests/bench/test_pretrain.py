"""The tiny towers ship pretrained: they load strictly, their card's held-out accuracy
is reproduced, and the pre-training command and first-use rebuild write what they say."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

import bench.pretrain as pretrain_mod
from bench.cli import main
from bench.presets import get_preset
from bench.pretrain import PretrainConfig, default_checkpoints, evaluate, load_heads, recipe, weight_files
from bench.towers import build_backbone

TINY = get_preset("tiny")
FILES = weight_files("tiny", next(iter(TINY.default_weights.values())).parent)
FEW_STEPS = PretrainConfig(steps=2, batch_size=8, warmup=1, heldout=16)


def test_tiny_towers_load_the_shipped_weights_strictly():
    assert default_checkpoints(TINY) == {role: FILES[role] for role in ("audio", "visual")}
    for role in ("audio", "visual"):
        spec = getattr(TINY, role)
        saved = load_file(str(FILES[role]))
        loaded = build_backbone(spec, FILES[role]).model.state_dict()
        assert set(loaded) == set(saved)  # no missing, unexpected or classifier keys
        assert all(torch.equal(loaded[k], saved[k]) for k in saved)
        random = build_backbone(spec).model.state_dict()
        assert not torch.equal(random["blocks.0.attn.qkv.weight"], saved["blocks.0.attn.qkv.weight"])


def test_card_accuracy_is_reproduced_on_regenerated_heldout_data():
    card = json.loads(FILES["card"].read_text())
    assert {k: card[k] for k in ("preset", "towers", "shape", "seed", "config")} == json.loads(
        json.dumps(recipe(TINY, card["seed"], PretrainConfig()))
    )  # the shipped weights come from the current recipe
    heads = load_heads(FILES["heads"])
    for role in ("audio", "visual"):
        backbone = build_backbone(getattr(TINY, role), FILES[role])
        x = torch.randn(4, backbone.in_chans, *backbone.img_size)
        last, _ = backbone.forward_units(backbone.prepare(x))
        torch.testing.assert_close(backbone.pool(last), backbone.model(x))  # methods see what the head saw
        scores = evaluate(backbone.model, heads[role], role, TINY.shape, card["seed"], card["heldout"]["size"])
        assert scores["accuracy"] == pytest.approx(card["results"][role]["accuracy"], abs=0.5)


def test_pretrain_command_writes_loadable_weights_and_card(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain_mod, "PretrainConfig", lambda: FEW_STEPS)
    assert main(["pretrain", "--preset", "tiny", "--seed", "3", "--out", str(tmp_path)]) == 0
    files = weight_files("tiny", tmp_path)
    card = json.loads(files["card"].read_text())
    assert card["seed"] == 3 and card["config"]["steps"] == 2 and card["versions"]["torch"] == torch.__version__
    assert set(card["results"]) == {"audio", "visual"} and set(card["data"]) == {"audio", "visual"}
    for role in ("audio", "visual"):
        assert 0.0 <= card["results"][role]["accuracy"] <= 100.0
        build_backbone(getattr(TINY, role), files[role])
    assert set(load_heads(files["heads"])) == {"audio", "visual"}


def test_missing_weights_are_rebuilt_into_the_cache_once(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain_mod, "PretrainConfig", lambda: FEW_STEPS)
    monkeypatch.setenv("METTLE_BENCH_CACHE", str(tmp_path / "cache"))
    gone = {role: tmp_path / "shipped" / f"tiny_{role}.safetensors" for role in ("audio", "visual")}
    preset = dataclasses.replace(TINY, default_weights=gone)
    messages: list[str] = []
    paths = default_checkpoints(preset, messages.append)
    assert any("first use" in m for m in messages)
    assert all(p.is_file() and p.is_relative_to(tmp_path / "cache") for p in paths.values())
    messages.clear()
    assert default_checkpoints(preset, messages.append) == paths and not messages
    build_backbone(TINY.audio, paths["audio"])
