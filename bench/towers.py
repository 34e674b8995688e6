"""Tower construction with timm; real weights come from local files only."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from safetensors import safe_open

from bench.config import ConfigError
from bench.presets import Preset, TowerSpec
from mettle_core.backbone import Backbone
from mettle_core.interface import Towers


def build_backbone(spec: TowerSpec, checkpoint: Path | None = None) -> Backbone:
    """A frozen, eval-mode tower. `checkpoint` is a local file (.safetensors, .pth,
    .bin) read through timm's pretrained_cfg_overlay, so timm's key filters run
    (position-embedding resizing, channel adaptation); nothing is downloaded. Some timm
    configs (the augreg ViTs) mark their hub weights as JAX .npz files for the model's own
    loader; that loader is kept for .npz files only, since before timm 1.0.31 it refuses
    a PyTorch state dict."""
    kwargs = dict(spec.kwargs, num_classes=0, in_chans=spec.in_chans, img_size=spec.img_size)
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"tower checkpoint {checkpoint} does not exist")
        overlay = dict(file=str(checkpoint), num_classes=0, custom_load=checkpoint.suffix == ".npz")
        chans = _checkpoint_in_chans(checkpoint)
        if chans is not None:  # timm assumes 3 source channels unless told; it adapts (sums) otherwise
            overlay["input_size"] = (chans, *spec.img_size)
        kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
    try:
        model = timm.create_model(spec.model, **kwargs)
    except (KeyError, RuntimeError) as err:  # timm's key filter or the strict state-dict load
        if checkpoint is None:
            raise
        why = " ".join(str(err).split())[:300]
        raise ConfigError(
            f"tower checkpoint {checkpoint} does not fit {spec.model} with {spec.kwargs} "
            f"({spec.in_chans} channels, {spec.img_size}): {type(err).__name__}: {why}"
        ) from err
    model.requires_grad_(False)
    model.eval()
    return Backbone(model)


def _checkpoint_in_chans(checkpoint: Path) -> int | None:
    """Input channels of a safetensors checkpoint's patch embedding, read from its header
    alone; None for other formats or layouts (timm then assumes 3)."""
    if checkpoint.suffix != ".safetensors":
        return None
    with safe_open(str(checkpoint), framework="pt") as f:
        key = "patch_embed.proj.weight"
        return int(f.get_slice(key).get_shape()[1]) if key in f.keys() else None


def build_towers(preset: Preset, checkpoints: dict[str, Path | None], seed: int) -> Towers:
    """Lazy audio / visual / shared towers for `preset`. Each tower's random init is
    seeded by its role, so a method's towers do not depend on which others it built."""

    def factory(role: str, spec: TowerSpec):
        def build() -> Backbone:
            with torch.random.fork_rng():
                torch.manual_seed(seed * 100 + ("audio", "visual", "shared").index(role))
                return build_backbone(spec, checkpoints.get(role))

        return build

    return Towers(
        audio=factory("audio", preset.audio),
        visual=factory("visual", preset.visual),
        shared=factory("shared", preset.shared),
    )
