"""The small contract shared by every adaptation method and the harness.

Methods (Mettle and the baselines) depend on this module only; the harness
(`bench`) consumes it. Nothing here imports the runner, the CLI or reporting.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, get_args, get_origin, get_type_hints

import torch
from torch import nn

from mettle_core.backbone import Backbone


@dataclass
class AVFeatures:
    """What an encoder hands to a task head.

    a: [B, T, D_a] audio embedding per segment; v: [B, T, D_v] visual embedding per
    segment; maps: optional multi-scale visual maps, each [B*T, C_s, H_s, W_s],
    finest first (segmentation only).
    """

    a: torch.Tensor
    v: torch.Tensor
    maps: list[torch.Tensor] | None = None


@dataclass(frozen=True)
class TaskSpec:
    """What a method must know about the task it serves."""

    name: str
    num_segments: int
    needs_maps: bool = False
    kind: str = "classification"  # classification | segmentation


class Towers:
    """The frozen pretrained towers a method adapts, built on first use.

    `shared` is a single tower used for both modalities (LAVisH); `audio` and
    `visual` are separate towers (every other method). A preset offers all three
    so that each method picks what its paper uses; only the ones a method reads
    are ever built. Each argument is a Backbone, a zero-argument factory, or None
    for a role the method did not declare (reading it is an error).
    """

    def __init__(
        self,
        audio: Backbone | Callable[[], Backbone] | None,
        visual: Backbone | Callable[[], Backbone] | None,
        shared: Backbone | Callable[[], Backbone] | None,
    ) -> None:
        self._sources = {"audio": audio, "visual": visual, "shared": shared}
        self._built: dict[str, Backbone] = {}

    def _get(self, role: str) -> Backbone:
        if role not in self._built:
            source = self._sources[role]
            if source is None:
                raise ValueError(f"the {role} tower was not provided: the method must declare the towers it reads")
            self._built[role] = source if isinstance(source, Backbone) else source()
        return self._built[role]

    @property
    def built(self) -> dict[str, Backbone]:
        """The towers a method has actually read, by role."""
        return dict(self._built)

    @property
    def audio(self) -> Backbone:
        return self._get("audio")

    @property
    def visual(self) -> Backbone:
        return self._get("visual")

    @property
    def shared(self) -> Backbone:
        return self._get("shared")


class AdaptedEncoder(nn.Module):
    """Base of every method's encoder: (audio, visual) -> AVFeatures.

    audio: [B, T, S] one-second waveforms (each tower's front-end makes its features);
    visual: [B, T, 3, H, W] frames.
    Subclasses set `audio_dim`, `visual_dim` and, for segmentation, `map_channels`.
    """

    audio_dim: int
    visual_dim: int
    map_channels: tuple[int, ...] = ()

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Trainable parameter groups with their learning rates (one group by default)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "name": "adapter"}] if params else []

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the pretrained towers (as opposed to the method's own)."""
        raise NotImplementedError

    def memory_floor_bytes(self, audio: torch.Tensor, visual: torch.Tensor) -> int | None:
        """Optional hook: the bytes a training step on this input cannot save below (what the
        method must keep for backward by design), so that reports can set the saved
        activations against it. None: the method states no floor."""
        return None

    def param_breakdown(self) -> dict[str, int] | None:
        """Optional hook: the trainable parameters split by part (name -> count, summing to
        the encoder's trainable count), for reports. None: no breakdown."""
        return None

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> AVFeatures:  # pragma: no cover
        raise NotImplementedError


def validate_config(config: Any) -> None:
    """Check every `Literal[...]` field of a config dataclass against its allowed
    values; raise ValueError naming the field, the bad value and the choices.
    Config dataclasses call this from `__post_init__`."""
    hints = get_type_hints(type(config))
    for field in dataclasses.fields(config):
        hint = hints[field.name]
        if get_origin(hint) is Literal:
            value = getattr(config, field.name)
            allowed = get_args(hint)
            if value not in allowed:
                raise ValueError(
                    f"{type(config).__name__}.{field.name}={value!r} is not allowed "
                    f"(allowed: {', '.join(map(str, allowed))})"
                )


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> entry, filled by decorators at import time."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} (valid: {', '.join(sorted(self._entries))})")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


TowerRole = Literal["audio", "visual", "shared"]


@dataclass(frozen=True)
class MethodEntry:
    """A registered method: its config dataclass, its builder and the tower roles it reads
    (so that the harness resolves, and records, exactly those towers' weights)."""

    name: str
    config_cls: type
    build: Callable[[Towers, TaskSpec, Any], AdaptedEncoder]
    description: str
    towers: tuple[TowerRole, ...]


METHODS: Registry[MethodEntry] = Registry("method")


def register_method(
    name: str, config_cls: type, description: str = "", towers: tuple[TowerRole, ...] = ("audio", "visual")
) -> Callable:
    """Register `build(towers, task_spec, config) -> AdaptedEncoder` under `name`; it reads
    only the tower roles listed in `towers`."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"config of method {name!r} must be a dataclass")

    def wrap(build: Callable[[Towers, TaskSpec, Any], AdaptedEncoder]) -> Callable:
        entry = MethodEntry(name, config_cls, build, description or (build.__doc__ or "").strip(), towers)
        METHODS.add(name, entry)
        return build

    return wrap
