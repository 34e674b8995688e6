"""Tiny random-weight towers of the registered test presets, shared by every test module.

`smoke` holds the paper's families in miniature (a Swin-V2 visual tower, an HTS-AT audio
tower, LAVisH's shared Swin-V2 hearing through a Kaldi fbank); `smoke_vit` the ViT family
of the `base` preset. Seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.presets import get_preset
from bench.towers import build_backbone
from mettle_core.backbone import Backbone
from mettle_core.interface import AdaptedEncoder, Towers

FAMILIES = ("smoke", "smoke_vit")  # one test preset per tower family


def tower(preset: str, role: str, seed: int = 0) -> Backbone:
    """A random tower of `preset`'s `role`. timm zero-initialises Swin-V2's post-norm weights,
    which makes every random block an identity with zero weight gradients; they are set near
    1, as in a trained tower, so that the blocks matter to the tests."""
    p = get_preset(preset)
    torch.manual_seed(seed)
    bb = build_backbone(getattr(p, role), p.shape)
    with torch.no_grad():
        for name, mod in bb.model.named_modules():
            if bb.family == "swinv2" and name.endswith(("norm1", "norm2")):
                mod.weight.copy_(1 + 0.1 * torch.randn_like(mod.weight))
    return bb


def preset_towers(preset: str, seed: int = 0) -> Towers:
    """Three independent towers of one preset (separate audio / visual, and a shared one)."""
    return Towers(*(tower(preset, role, seed * 10 + i) for i, role in enumerate(("audio", "visual", "shared"))))


def av_batch(preset: str, b: int = 2, t: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """audio [B, T, S] one-second waveforms at the preset's rate; visual [B, T, 3, S', S'] at a
    size no tower uses (towers resize)."""
    shape = get_preset(preset).shape
    g = torch.Generator().manual_seed(seed)
    audio = 0.1 * torch.randn(b, t, shape.sample_rate, generator=g)
    return audio, torch.randn(b, t, 3, shape.image_size - 4, shape.image_size - 4, generator=g)


def probe_loss(enc: AdaptedEncoder, audio: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """A loss with non-trivial gradients: random projections of every output (a plain sum of
    LayerNorm outputs has a zero gradient)."""
    out = enc(audio, visual)
    g = torch.Generator().manual_seed(7)
    loss = sum((x * torch.randn(x.shape, generator=g)).sum() for x in [out.a, out.v, *(out.maps or [])])
    assert isinstance(loss, torch.Tensor)
    return loss


def assert_state_dict_round_trip(
    build: Callable[[int], AdaptedEncoder], audio: torch.Tensor, visual: torch.Tensor
) -> None:
    """An encoder built from other random towers (`build(seed)`) reproduces the first one's
    features and maps exactly once it loads the first one's state dict. The method's own
    weights (gates included) are moved off their init first, so the check can fail."""
    first, second = build(0), build(1)
    with torch.no_grad():
        for p in first.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    second.load_state_dict(first.state_dict())
    first.eval()
    second.eval()
    with torch.no_grad():
        x, y = first(audio, visual), second(audio, visual)
    assert torch.equal(x.a, y.a) and torch.equal(x.v, y.v)
    assert (x.maps is None) == (y.maps is None)
    for mx, my in zip(x.maps or [], y.maps or [], strict=True):
        assert torch.equal(mx, my)
