"""Tower construction: the architecture (timm, or HTS-AT from mettle_core), its weights from a
resolved WeightSource (bench.weights), and its audio front-end. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from safetensors import safe_open
from torch import nn

from bench.config import ConfigError
from bench.data.core import DataShape
from bench.frontends import FbankFrontend, LogMelFrontend
from bench.presets import FrontendSpec, Preset, TowerSpec
from bench.weights import ROLES, WeightSource
from mettle_core.backbone import Backbone
from mettle_core.htsat import HTSAT, HtsatConfig, load_htsat_checkpoint
from mettle_core.interface import Towers

FRONTENDS: dict[str, type[nn.Module]] = {"logmel": LogMelFrontend, "fbank": FbankFrontend}


def build_frontend(spec: FrontendSpec, shape: DataShape) -> nn.Module:
    """The front-end, told the rate of the waveforms the data carries (it resamples to its own)."""
    return FRONTENDS[spec.kind](**spec.params, input_rate=shape.sample_rate)


def build_backbone(spec: TowerSpec, shape: DataShape, weights: Path | None = None) -> Backbone:
    """A frozen, eval-mode tower; `weights` is a local file or None for random initialisation."""
    if weights is not None and not weights.is_file():
        raise FileNotFoundError(f"tower checkpoint {weights} does not exist")
    frontend = build_frontend(spec.audio, shape) if spec.audio is not None else None
    model = _htsat(spec, weights, frontend) if spec.arch == "htsat" else _timm(spec, weights)
    model.requires_grad_(False)
    model.eval()
    backbone = Backbone(model, frontend)
    backbone.eval()
    return backbone


def _htsat(spec: TowerSpec, weights: Path | None, frontend: nn.Module | None) -> nn.Module:
    """HTS-AT, loaded strictly; a checkpoint whose STFT / mel weights disagree with this
    tower's front-end was trained on other input features and is refused."""
    model = HTSAT(HtsatConfig(**spec.kwargs))
    if weights is None:
        return model
    try:
        frontend_state = load_htsat_checkpoint(model, weights)
        if isinstance(frontend, LogMelFrontend):
            frontend.check_checkpoint(frontend_state, str(weights))
    except ValueError as err:  # CheckpointMismatch included
        raise ConfigError(str(err)) from None
    return model


def _timm(spec: TowerSpec, weights: Path | None) -> nn.Module:
    """A timm model. A checkpoint goes through timm's pretrained_cfg_overlay, so timm's key
    filters run (position-embedding and window resizing, channel adaptation). Some timm
    configs (the augreg ViTs) mark their hub weights as JAX .npz files for the model's own
    loader; that loader is kept for .npz files only, since before timm 1.0.31 it refuses a
    PyTorch state dict."""
    kwargs = dict(spec.kwargs, num_classes=0)
    if weights is not None:
        overlay = dict(file=str(weights), num_classes=0, custom_load=weights.suffix == ".npz")
        chans = _checkpoint_in_chans(weights)
        if chans is not None:  # timm assumes 3 source channels unless told; it adapts (sums) otherwise
            size = spec.kwargs.get("img_size", 224)
            overlay["input_size"] = (chans, *((size, size) if isinstance(size, int) else size))
        kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
    try:
        return timm.create_model(spec.arch, **kwargs)
    except (KeyError, RuntimeError) as err:  # timm's key filter or the strict state-dict load
        if weights is None:
            raise
        why = " ".join(str(err).split())[:300]
        raise ConfigError(
            f"tower checkpoint {weights} does not fit {spec.arch} with {spec.kwargs}: {type(err).__name__}: {why}"
        ) from err


def _checkpoint_in_chans(checkpoint: Path) -> int | None:
    """Input channels of a safetensors checkpoint's patch embedding, read from its header
    alone; None for other formats or layouts (timm then assumes 3)."""
    if checkpoint.suffix != ".safetensors":
        return None
    with safe_open(str(checkpoint), framework="pt") as f:
        key = "patch_embed.proj.weight"
        return int(f.get_slice(key).get_shape()[1]) if key in f.keys() else None


def build_towers(preset: Preset, sources: dict[str, WeightSource], seed: int) -> Towers:
    """Lazy towers for the roles in `sources` (the ones the method declared). Each tower's
    random init is seeded by its role, so a method's towers do not depend on which others
    it built."""

    def factory(role: str):
        def build() -> Backbone:
            with torch.random.fork_rng():
                torch.manual_seed(seed * 100 + ROLES.index(role))
                return build_backbone(getattr(preset, role), preset.shape, sources[role].file)

        return build

    return Towers(*(factory(role) if role in sources else None for role in ROLES))
