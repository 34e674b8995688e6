"""The tiny towers ship pretrained: they load strictly, their card's held-out accuracy
is reproduced, the shared tower sees exactly the specialists' data, the pre-training
command and first-use rebuild write what they say, and runs pick the intended files."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import bench.pretrain as pretrain_mod
import bench.shipped as shipped_mod
from bench.cli import main
from bench.config import TowersConfig
from bench.presets import get_preset
from bench.pretrain import ROLES, PretrainConfig, evaluate, load_heads, recipe, weight_files
from bench.shipped import WEIGHTS_DIR, shipped_files
from bench.towers import build_backbone
from bench.weights import resolve

TINY = get_preset("tiny")
FILES = weight_files("tiny", WEIGHTS_DIR)
FEW_STEPS = PretrainConfig(steps=2, batch_size=8, warmup=1, heldout=16)
ALL_ROLES = ("audio", "visual", "shared")


def test_tiny_towers_load_the_shipped_weights_strictly():
    assert shipped_files(TINY) == ({role: FILES[role] for role in ALL_ROLES}, "shipped")
    assert TINY.shared.arch == TINY.visual.arch  # LAVisH's tower has the visual architecture, hearing through an fbank
    for role in ALL_ROLES:
        spec = getattr(TINY, role)
        saved = load_file(str(FILES[role]))
        loaded = build_backbone(spec, TINY.shape, FILES[role]).model.state_dict()
        assert set(loaded) == set(saved)  # no missing, unexpected or classifier keys
        assert all(torch.equal(loaded[k], saved[k]) for k in saved)
        random = build_backbone(spec, TINY.shape).model.state_dict()
        key = "layers.0.blocks.0.attn.qkv.weight"
        assert not torch.equal(random[key], saved[key])
        assert FILES[role].stat().st_size < 2 * 2**20  # shipped under 2 MB each


def test_card_accuracy_is_reproduced_on_regenerated_heldout_data():
    card = json.loads(FILES["card"].read_text())
    assert {k: card[k] for k in ("preset", "towers", "shape", "seed", "config")} == json.loads(
        json.dumps(recipe(TINY, card["seed"], PretrainConfig()))
    )  # the shipped weights come from the current recipe
    heads = load_heads(FILES["heads"])
    assert set(heads) == {("audio", "audio"), ("visual", "visual"), ("shared", "audio"), ("shared", "visual")}
    for role in ALL_ROLES:
        backbone = build_backbone(getattr(TINY, role), TINY.shape, FILES[role])
        for corpus in ROLES[role]:
            size = card["heldout"]["size"]
            scores = evaluate(backbone, heads[role, corpus], corpus, TINY.shape, card["seed"], size)
            assert scores["accuracy"] == pytest.approx(card["results"][role][corpus]["accuracy"], abs=0.5)


def test_shared_tower_reads_both_corpora_batch_for_batch_like_the_specialists(tmp_path, monkeypatch):
    drawn: list[tuple[str, float]] = []
    real_sample = pretrain_mod.sample

    def recording_sample(corpus, gen, n, shape):
        x, y = real_sample(corpus, gen, n, shape)
        drawn.append((corpus, x.sum().item()))
        return x, y

    monkeypatch.setattr(pretrain_mod, "sample", recording_sample)
    card = pretrain_mod.pretrain(TINY, tmp_path, seed=1, cfg=FEW_STEPS, log=lambda _: None)
    steps = FEW_STEPS.steps
    audio, visual, shared = drawn[: steps + 1], drawn[steps + 1 : 2 * steps + 2], drawn[2 * steps + 2 :]
    interleaved = [batch for pair in zip(audio[:steps], visual[:steps], strict=True) for batch in pair]
    assert shared[: 2 * steps] == interleaved  # same training batches, one of each corpus per step
    assert shared[2 * steps :] == [audio[-1], visual[-1]]  # scored on the specialists' held-out sets
    result = card["results"]["shared"]
    assert result["accuracy"] == pytest.approx((result["audio"]["accuracy"] + result["visual"]["accuracy"]) / 2)


def test_pretrain_command_writes_loadable_weights_and_card(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain_mod, "PretrainConfig", lambda: FEW_STEPS)
    assert main(["pretrain", "--preset", "tiny", "--seed", "3", "--out", str(tmp_path)]) == 0
    files = weight_files("tiny", tmp_path)
    card = json.loads(files["card"].read_text())
    assert card["seed"] == 3 and card["config"]["steps"] == 2 and card["versions"]["torch"] == torch.__version__
    assert set(card["results"]) == set(ALL_ROLES) and set(card["data"]) == {"audio", "visual"}
    for role in ALL_ROLES:
        assert 0.0 <= card["results"][role]["accuracy"] <= 100.0
        build_backbone(getattr(TINY, role), TINY.shape, files[role])
    assert len(load_heads(files["heads"])) == 4


def test_missing_weights_are_rebuilt_into_the_cache_once(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain_mod, "PretrainConfig", lambda: FEW_STEPS)
    monkeypatch.setattr(shipped_mod, "WEIGHTS_DIR", tmp_path / "shipped")
    monkeypatch.setenv("METTLE_BENCH_CACHE", str(tmp_path / "cache"))
    messages: list[str] = []
    assert pretrain_mod.ensure_shipped(TINY, log=messages.append)
    assert any("first use" in m for m in messages)
    paths, origin = shipped_files(TINY)
    assert origin == "cache" and all(p.is_file() and p.is_relative_to(tmp_path / "cache") for p in paths.values())
    messages.clear()
    assert not pretrain_mod.ensure_shipped(TINY, log=messages.append) and not messages
    assert shipped_files(TINY) == (paths, "cache")
    build_backbone(TINY.audio, TINY.shape, paths["audio"])


def _chosen(preset_name: str, **towers: str) -> dict[str, Path | None]:
    return {role: s.file for role, s in resolve(get_preset(preset_name), TowersConfig(**towers)).items()}


def test_runs_pick_the_shipped_shared_tower_unless_told_otherwise(tmp_path):
    mine = str(tmp_path / "swin.safetensors")
    save_file({"w": torch.zeros(1)}, mine)  # towers.* must name an existing, readable checkpoint
    assert _chosen("tiny") == {role: FILES[role] for role in ALL_ROLES}
    assert _chosen("tiny", visual=mine)["shared"] == Path(mine)  # a given visual tower is what LAVisH shares
    assert _chosen("tiny", visual="random")["shared"] is None
    assert _chosen("tiny", shared=mine)["shared"] == Path(mine)
    assert _chosen("tiny", shared="random") == {"audio": FILES["audio"], "visual": FILES["visual"], "shared": None}
    assert _chosen("smoke") == {"audio": None, "visual": None, "shared": None}  # nothing ships: random towers
    assert _chosen("smoke", visual=mine)["shared"] == Path(mine)
