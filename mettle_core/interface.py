"""The small contract shared by every adaptation method and the harness.

Methods (Mettle and the baselines) depend on this module only; the harness
(`bench`) consumes it. Nothing here imports the runner, the CLI or reporting.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from collections.abc import Callable, Iterator, Mapping
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
    finest first (segmentation only); aux_loss: an optional scalar the method adds to the
    task's training loss (e.g. a router's load-balancing term), None when it adds nothing.
    """

    a: torch.Tensor
    v: torch.Tensor
    maps: list[torch.Tensor] | None = None
    aux_loss: torch.Tensor | None = None


@dataclass(frozen=True)
class TaskSpec:
    """What a method must know about the task it serves."""

    name: str
    num_segments: int
    needs_maps: bool = False
    kind: str = "classification"  # classification | segmentation
    head_attends_time: bool = False  # the head runs the AVE code's temporal attention itself (DG-SCT's CMBS head)


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
    """Name -> entry. An entry is added directly (`add`) or named by a place, "module:attr",
    imported on first `get`: listing names imports nothing, and a run imports only the plug-ins
    it uses (peft only for LoRA). A loaded entry must be an `entry_type` whose `name` is the
    name it is registered under."""

    def __init__(self, kind: str, places: Mapping[str, str] | None = None, entry_type: type | None = None) -> None:
        self.kind = kind
        self._places = dict(places or {})
        self._entry_type = entry_type
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries or name in self._places:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        if name in self._entries:
            return self._entries[name]
        if name not in self._places:
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} (valid: {', '.join(self.names())})")
        module, _, attr = self._places[name].partition(":")
        entry = getattr(importlib.import_module(module), attr)
        if self._entry_type is not None and not isinstance(entry, self._entry_type):
            raise TypeError(f"{self.kind} {name!r}: {self._places[name]} is not a {self._entry_type.__name__}")
        if getattr(entry, "name", name) != name:
            raise ValueError(f"{self.kind} {name!r}: {self._places[name]} is named {entry.name!r}")
        self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        return sorted({*self._entries, *self._places})

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._places


def unique_parameters(*modules: nn.Module) -> Iterator[nn.Parameter]:
    """The parameters of `modules`, each once: two roles may hold one tower (a tower passed as
    both), and an optimiser or a count must not see its weights twice."""
    seen: set[int] = set()
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                yield p


TowerRole = Literal["audio", "visual", "shared"]


@dataclass(frozen=True)
class MethodEntry:
    """A method: its config dataclass, its builder `build(towers, task_spec, config) ->
    AdaptedEncoder` and the tower roles it reads (so that the harness resolves, and records,
    exactly those towers' weights). Each method module holds one as `METHOD`; the harness's
    registry names where. `train_defaults` are the method's own defaults for the harness's
    training settings (its learning rate, chosen on val like its config's defaults); the
    preset's come first, then these, then the user's `--set train.KEY=VALUE`. `version` is
    bumped whenever what the method computes changes: run keys hold it, so records of an older
    version are never taken as this one's."""

    name: str
    config_cls: type
    build: Callable[[Towers, TaskSpec, Any], AdaptedEncoder]
    description: str
    towers: tuple[TowerRole, ...]
    train_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    version: int = 1

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.config_cls):
            raise TypeError(f"config of method {self.name!r} must be a dataclass")
