"""Where tower weights come from (bench/weights.py): local files, the Hugging Face cache
(offline, a cache directory the test writes), timm tags, shipped files, random."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import bench.shipped as shipped
from bench.config import ConfigError, TowersConfig
from bench.presets import get_preset
from bench.weights import file_digest, hub_file, requested, resolve

REPO = "timm/swinv2_tiny_window8_256.ms_in1k"  # a timm tag's hub repository
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def populate_cache(cache: Path, repo: str, filename: str, content: bytes = b"weights") -> Path:
    """A Hugging Face hub cache entry laid out as huggingface_hub writes it: refs/main names
    the snapshot that holds the file."""
    entry = cache / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(SNAPSHOT)
    path = entry / "snapshots" / SNAPSHOT / filename
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    return path


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hf_hub_and_timm_names_resolve_from_the_cache_offline(hf_cache: Path) -> None:
    cached = populate_cache(hf_cache, REPO, "model.safetensors")
    assert hub_file("visual", f"hf-hub:{REPO}") == cached
    assert hub_file("visual", "timm:swinv2_tiny_window8_256.ms_in1k") == cached  # timm's tag names that repository
    other = populate_cache(hf_cache, "someone/htsat", "ckpt/HTSAT_AudioSet_Saved_1.ckpt")
    assert hub_file("audio", "hf-hub:someone/htsat/ckpt/HTSAT_AudioSet_Saved_1.ckpt") == other


def test_pytorch_bin_is_the_fallback_file(hf_cache: Path) -> None:
    cached = populate_cache(hf_cache, REPO, "pytorch_model.bin")
    assert hub_file("visual", f"hf-hub:{REPO}") == cached


def test_a_name_missing_from_the_cache_says_how_to_fetch_it(hf_cache: Path) -> None:
    with pytest.raises(ConfigError, match=rf"towers.visual='hf-hub:{REPO}': .* not in the Hugging Face cache") as err:
        hub_file("visual", f"hf-hub:{REPO}")
    assert f"hf download {REPO}" in str(err.value) and str(hf_cache) in str(err.value)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("timm:no_such_model.tag", "timm knows no pretrained tag 'no_such_model.tag'"),
        ("hf-hub:justone", "expected hf-hub:ORG/REPO"),
    ],
)
def test_malformed_hub_names_are_usage_errors(hf_cache: Path, value: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        hub_file("visual", value)


def test_local_random_and_missing_files(tmp_path: Path) -> None:
    ckpt = tmp_path / "visual.safetensors"
    save_file({"w": torch.zeros(2)}, str(ckpt))
    smoke = get_preset("smoke")
    sources = resolve(smoke, TowersConfig(visual=str(ckpt)), ("audio", "visual", "shared"))
    assert sources["audio"].origin == "random" and sources["audio"].file is None
    assert sources["visual"].origin == "explicit" and sources["visual"].sha256 == file_digest(ckpt)
    assert sources["shared"].file == ckpt  # LAVisH shares the visual tower that was set
    with pytest.raises(ConfigError, match=r"towers.audio='/nope.ckpt': no such file"):
        resolve(smoke, TowersConfig(audio="/nope.ckpt"))


def _pickled(path: Path) -> None:
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)


@pytest.mark.parametrize(
    ("name", "write", "expected"),
    [
        ("random.safetensors", lambda p: p.write_bytes(bytes(range(256)) * 8), "is not a readable safetensors file"),
        ("random.pth", lambda p: p.write_bytes(b"\x00\x01" * 1000), "is not a PyTorch checkpoint"),
        ("empty.ckpt", lambda p: p.write_bytes(b""), "is not a PyTorch checkpoint"),
        ("pickled.npz", _pickled, "is not a NumPy .npz"),
        ("weights.h5", lambda p: p.write_bytes(b"x"), "has no checkpoint suffix"),
    ],
)
def test_a_checkpoint_that_is_not_one_is_a_usage_error_naming_it(tmp_path: Path, name, write, expected) -> None:
    path = tmp_path / name
    write(path)
    with pytest.raises(ConfigError, match=rf"towers.visual='{path}': {path} {expected}"):
        resolve(get_preset("smoke"), TowersConfig(visual=str(path)), ("visual",))


@pytest.mark.parametrize("save", [lambda p: torch.save({"w": torch.zeros(2)}, p), _pickled])
def test_both_pytorch_formats_pass_the_check(tmp_path: Path, save) -> None:
    path = tmp_path / "tower.pth"
    save(path)
    assert resolve(get_preset("smoke"), TowersConfig(visual=str(path)), ("visual",))["visual"].file == path


def test_a_role_the_preset_cannot_fill_must_be_set() -> None:
    paper = get_preset("paper")
    with pytest.raises(ConfigError, match=r"towers.audio: preset 'paper' ships no audio weights.*HTSAT_AudioSet"):
        requested(paper, TowersConfig())
    assert requested(paper, TowersConfig(audio="random"))["visual"] == "timm:swinv2_large_window12_192.ms_in22k"


def test_digest_identifies_content_not_path(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"same")
    b.write_bytes(b"same")
    assert file_digest(a) == file_digest(b)
    b.write_bytes(b"other bytes")
    assert file_digest(a) != file_digest(b)


def test_missing_shipped_weights_point_at_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", tmp_path / "not-shipped")
    monkeypatch.setenv("METTLE_BENCH_CACHE", str(tmp_path / "cache"))
    files, origin = shipped.shipped_files(get_preset("tiny"))
    assert origin == "cache" and files["audio"].is_relative_to(tmp_path / "cache")
    assert not any(tmp_path.joinpath("cache").rglob("*"))  # resolving never trains
    source = resolve(get_preset("tiny"), TowersConfig())["audio"]
    assert source.origin == "cache" and source.missing and source.sha256 is None
