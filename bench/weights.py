"""Where a run's tower weights come from: the one place that turns a role's setting into a file.

A tower role (audio, visual, shared) is set by `--set towers.ROLE=VALUE` or, left empty,
by its preset. A value is one of:
    random                      random initialisation
    shipped                     the preset's weights shipped in bench/weights/ (rebuilt
                                into the user cache when missing: bench.shipped)
    hf-hub:ORG/REPO[/FILE]      a file of a Hugging Face repository, read from the local
                                Hugging Face cache (model.safetensors or pytorch_model.bin
                                when FILE is omitted); nothing is ever downloaded
    timm:MODEL.TAG              a timm pretrained tag, i.e. the hf-hub repository timm names
    PATH                        a local file (.safetensors, .pth, .pt, .bin, .ckpt, .npz)
Every resolved source carries the file and its content digest, which each record keeps, so
that a rerun notices weights that changed. A run resolves its weights once, when its plan is
resolved (bench.plan), and carries them; nothing here ever trains.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from bench.config import ConfigError, TowersConfig
from bench.shipped import WEIGHTS_DIR, shipped_files

if TYPE_CHECKING:
    from bench.presets import Preset

ROLES = ("audio", "visual", "shared")
Origin = Literal["explicit", "hub", "shipped", "cache", "random"]
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".npz")
PICKLE_PROTO = 0x80  # first byte of a pickle of protocol 2 or later
__all__ = ["ROLES", "WEIGHTS_DIR", "WeightSource", "file_digest", "hub_file", "random_sources", "requested", "resolve"]


@dataclass(frozen=True)
class WeightSource:
    """One tower's weights: what was asked for, where it was found, and its digest."""

    role: str
    origin: Origin
    name: str
    file: Path | None = None
    sha256: str | None = None

    @property
    def missing(self) -> bool:
        """Shipped weights whose rebuild has not been made yet (bench.pretrain.ensure_shipped)."""
        return self.file is not None and not self.file.is_file()

    def with_digest(self) -> WeightSource:
        """This source with the digest of its file (once the file exists)."""
        if self.file is None or not self.file.is_file():
            return self
        return WeightSource(self.role, self.origin, self.name, self.file, file_digest(self.file))

    def record(self) -> dict[str, str | None]:
        return {
            "name": self.name,
            "origin": self.origin,
            "file": None if self.file is None else str(self.file),
            "sha256": self.sha256,
        }


def requested(preset: Preset, towers: TowersConfig) -> dict[str, str]:
    """Each role's setting: the explicit one, else the preset's. An unset shared tower follows
    an explicitly set visual one (LAVisH shares the visual tower, as in its paper)."""
    out: dict[str, str] = {}
    for role in ROLES:
        value = getattr(towers, role)
        if not value and role == "shared" and towers.visual:
            value = out["visual"]
        if not value:
            if role not in preset.weights:
                raise ConfigError(
                    f"towers.{role}: preset {preset.name!r} ships no {role} weights; "
                    f"pass --set towers.{role}=PATH ({preset.weights_hint.get(role, 'a checkpoint of that tower')}), "
                    f"or towers.{role}=random"
                )
            value = preset.weights[role]
        out[role] = value
    return out


def resolve(preset: Preset, towers: TowersConfig, roles: tuple[str, ...] = ROLES) -> dict[str, WeightSource]:
    """WeightSource per role, with its digest. A setting that cannot be found is a ConfigError
    (exit 2). Missing shipped weights resolve to their rebuild's place in the cache, without a
    digest until `bench.pretrain.ensure_shipped` has built them."""
    wanted = requested(preset, towers)
    return {role: _resolve(role, wanted[role], preset) for role in roles}


def random_sources(roles: tuple[str, ...] = ROLES) -> dict[str, WeightSource]:
    """Random initialisation for `roles`: what a model that is only counted or timed is built from."""
    return {role: WeightSource(role, "random", "random") for role in roles}


def _resolve(role: str, value: str, preset: Preset) -> WeightSource:
    if value == "random":
        return WeightSource(role, "random", value)
    if value == "shipped":
        files, origin = shipped_files(preset)
        return WeightSource(role, origin, value, files[role]).with_digest()
    if value.startswith(("hf-hub:", "timm:")):
        return WeightSource(role, "hub", value, checked(role, value, hub_file(role, value))).with_digest()
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"towers.{role}={value!r}: no such file (expected a local checkpoint, an hf-hub:ORG/REPO or "
            "timm:MODEL.TAG name, 'shipped' or 'random')"
        )
    return WeightSource(role, "explicit", value, checked(role, value, path)).with_digest()


def checked(role: str, value: str, path: Path) -> Path:
    """`path`, once its container is what its suffix says (read from its first bytes only), so that
    a corrupt or mistaken file is a usage error naming it, not a failed run after the data loads."""
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise ConfigError(
            f"towers.{role}={value!r}: {path} has no checkpoint suffix "
            f"(expected one of {', '.join(CHECKPOINT_SUFFIXES)})"
        )
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt"):
                return path
        except (SafetensorError, OSError) as err:
            raise ConfigError(f"towers.{role}={value!r}: {path} is not a readable safetensors file ({err})") from None
    with open(path, "rb") as f:
        head = f.read(2)
    pickled = len(head) == 2 and head[0] == PICKLE_PROTO and 2 <= head[1] <= 5  # torch's legacy format
    if not (zipfile.is_zipfile(path) or (pickled and suffix != ".npz")):
        expected = "a NumPy .npz (zip) archive" if suffix == ".npz" else "a PyTorch checkpoint (zip archive or pickle)"
        raise ConfigError(f"towers.{role}={value!r}: {path} is not {expected}; is it truncated or another format?")
    return path


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (huggingface_hub
    reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hub_file(role: str, value: str) -> Path:
    """The cached file an hf-hub: or timm: name stands for; a ConfigError saying how to fetch it
    when it is not in the cache. Only the cache is read, so HF_HUB_OFFLINE=1 changes nothing."""
    from huggingface_hub import try_to_load_from_cache

    repo, files = _hub_target(role, value)
    cache = hf_cache_dir()
    for filename in files:
        found = try_to_load_from_cache(repo, filename, cache_dir=cache)
        if isinstance(found, str):
            return Path(found)
    raise ConfigError(
        f"towers.{role}={value!r}: {' or '.join(files)} of {repo} is not in the Hugging Face cache {cache} "
        f"(this harness never downloads). Fetch it once where there is a network: "
        f"`hf download {repo}{' ' + files[0] if len(files) == 1 else ''}` (huggingface_hub's CLI; set HF_HUB_CACHE "
        "or HF_HOME to use another cache), or point the tower at a local file."
    )


def _hub_target(role: str, value: str) -> tuple[str, tuple[str, ...]]:
    """(repository, candidate file names) of an hf-hub: or timm: name."""
    if value.startswith("timm:"):
        import timm

        tag = value.removeprefix("timm:")
        try:
            cfg = timm.models.get_pretrained_cfg(tag, allow_unregistered=False)
        except (RuntimeError, ValueError):
            cfg = None
        if cfg is None or not cfg.hf_hub_id:
            raise ConfigError(f"towers.{role}={value!r}: timm knows no pretrained tag {tag!r} hosted on the hub")
        repo = cfg.hf_hub_id
        return repo, (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HUB_FILES
    parts = value.removeprefix("hf-hub:").split("/", 2)
    if len(parts) < 2 or not all(parts[:2]):
        raise ConfigError(f"towers.{role}={value!r}: expected hf-hub:ORG/REPO or hf-hub:ORG/REPO/FILE")
    return "/".join(parts[:2]), (parts[2],) if len(parts) == 3 else HUB_FILES


def file_digest(path: Path) -> str:
    stat = path.stat()
    return _digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, read once per (path, size, mtime): large checkpoints are hashed once.
    The digest, not the path, identifies the weights: a checkout elsewhere matches, and a
    file replaced in place does not."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:16]
