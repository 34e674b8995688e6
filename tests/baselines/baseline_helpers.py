"""Tiny random-weight towers of both test presets, inputs and checks shared by the baseline tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tiny import FAMILIES, av_batch, preset_towers, probe_loss
from tiny import assert_state_dict_round_trip as shared_round_trip
from torch import nn

from mettle_core.backbone import Backbone, Modality
from mettle_core.interface import AdaptedEncoder, TaskSpec, Towers

__all__ = [
    "CLS",
    "FAMILIES",
    "SEG",
    "av_batch",
    "frozen_reference",
    "logit_only_params",
    "preset_towers",
    "probe_loss",
]
CLS = TaskSpec("ave", num_segments=2)
SEG = TaskSpec("avs_s4", num_segments=2, needs_maps=True, kind="segmentation")


def assert_state_dict_round_trip(build: Callable[[Towers], AdaptedEncoder], family: str) -> None:
    """The shared round-trip check on two sets of tiny towers of `family`."""
    shared_round_trip(lambda seed: build(preset_towers(family, seed=seed)), *av_batch(family))


def logit_only_params(enc: nn.Module) -> set[str]:
    """Parameters with an exactly zero gradient by construction: in a block whose window
    holds one token the softmax over one key is constant, so what only shapes the attention
    logits cannot learn."""
    names = set()
    for name, mod in enc.named_modules():
        attn = getattr(mod, "attn", None)
        if attn is not None and 1 in (getattr(mod, "window_area", None), getattr(attn, "window_area", None)):
            for pn, _ in mod.attn.named_parameters():
                if pn.startswith(("logit_scale", "q_bias", "cpb_mlp", "relative_position_bias_table")):
                    names.add(f"{name}.attn.{pn}")
    return names


def frozen_reference(
    bb: Backbone, x: torch.Tensor, modality: Modality, keep: tuple[int, ...]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The plain tower's pooled output and pyramid maps on [B, T, ...] input."""
    with torch.no_grad():
        last, kept = bb.forward_units(bb.prepare(x.flatten(0, 1), modality))
    return bb.pool(last).reshape(*x.shape[:2], -1), [bb.grid(kept[i]) for i in keep]
