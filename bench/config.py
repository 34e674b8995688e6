"""Typed run configuration: presets give defaults, `--set key=value` overrides.

Sections are `train`, `measure`, `towers`, every method name and every task
name. Values are parsed by the field's type; a bad section, key or value raises
ConfigError naming it and what is allowed. The resolved config is stored in
every record.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin, get_type_hints

if TYPE_CHECKING:
    from bench.data.fingerprint import DataSource
    from bench.weights import WeightSource


class ConfigError(ValueError):
    """A bad configuration item; the CLI exits 2 with this message."""


def unkeyed(default: Any) -> Any:
    """A field that says how a run reads its data, not what it computes (the samples and
    their order are the same whatever its value): left out of the stored config, and so
    of the run key, so that setting it reruns nothing."""
    return field(default=default, metadata={"keyed": False})


def keyed_when_set(default: Any) -> Any:
    """A field added after runs were recorded, whose default computes exactly what those runs
    computed: stored (and so in the run key) only when it, or another such field of its
    section, differs from its default, so that the recorded runs keep their keys and configs
    and a rerun of them skips."""
    return field(default=default, metadata={"keyed": "when_set"})


@dataclass
class TrainConfig:
    epochs: int = 6
    batch_size: int = 16
    lr: float = 1e-3  # the method's own parameters (adapters, meta-tokens, LoRA)
    head_lr: float = 1e-3  # the task head, identical for every method
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    amp: Literal["off", "bf16"] = "off"  # bf16 autocast, CUDA only
    # epochs: the preset's epochs. flops: the training FLOPs that `budget_reference` (a method,
    # at its default config) spends in those epochs, so that cheap steps buy more of them.
    budget: Literal["epochs", "flops"] = "epochs"
    budget_reference: str = "lavish"
    # adamw: decoupled weight decay; adam: torch's Adam, whose weight decay is an L2 term in the gradient
    optimizer: Literal["adamw", "adam"] = keyed_when_set("adamw")
    # the learning rate's multiplier at each optimizer step (bench.schedule): constant; step: times
    # `gamma` every `step_size` epochs (the official AVE recipes: 3 / 0.35); cosine: half a cosine
    # from 1 to 0 over the run's optimizer steps. `warmup_steps` ramps it up linearly first.
    schedule: Literal["constant", "step", "cosine"] = keyed_when_set("constant")
    step_size: int = keyed_when_set(3)  # epochs
    gamma: float = keyed_when_set(0.35)
    warmup_steps: int = keyed_when_set(0)  # optimizer steps
    accumulate: int = keyed_when_set(1)  # batches whose gradients add up to one optimizer step
    patience: int = keyed_when_set(0)  # stop after this many epochs without a better val selection metric; 0: never
    # DataLoader worker processes reading real data; None: chosen from the run's cores (bench.data.loader)
    loader_workers: int | None = unkeyed(None)

    def __post_init__(self) -> None:
        _positive(self, "epochs", "batch_size", "lr", "head_lr", "step_size", "accumulate")
        _non_negative(self, "weight_decay", "grad_clip", "warmup_steps", "patience")
        if not 0 < self.gamma <= 1:  # also refuses NaN
            raise ConfigError(f"TrainConfig.gamma must be in (0, 1], got {self.gamma!r}")
        if self.loader_workers is not None:
            _non_negative(self, "loader_workers")
        _choices(self)


@dataclass
class MeasureConfig:
    warmup: int = 2
    repeats: int = 5
    enabled: bool = True

    def __post_init__(self) -> None:
        _positive(self, "repeats")
        _non_negative(self, "warmup")


@dataclass
class TowersConfig:
    """Each role's weights (bench.weights): a local file, hf-hub:ORG/REPO[/FILE], timm:MODEL.TAG,
    `shipped` or `random`; empty means the preset's own. An empty `shared` follows a set
    `visual` (LAVisH shares the visual tower). Checked by bench.weights before any run."""

    audio: str = ""
    visual: str = ""
    shared: str = ""


BASE_SECTIONS: dict[str, type] = {"train": TrainConfig, "measure": MeasureConfig, "towers": TowersConfig}


def _positive(cfg: Any, *names: str) -> None:
    for name in names:
        _finite(cfg, name)
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{type(cfg).__name__}.{name} must be > 0, got {getattr(cfg, name)!r}")


def _non_negative(cfg: Any, *names: str) -> None:
    for name in names:
        _finite(cfg, name)
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{type(cfg).__name__}.{name} must be >= 0, got {getattr(cfg, name)!r}")


def _finite(cfg: Any, name: str) -> None:
    """NaN passes every comparison above (`nan <= 0` is False), and inf every lower bound."""
    if not math.isfinite(getattr(cfg, name)):
        raise ConfigError(f"{type(cfg).__name__}.{name} must be finite, got {getattr(cfg, name)!r}")


def _choices(cfg: Any) -> None:
    from mettle_core.interface import validate_config

    try:
        validate_config(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def parse_value(text: str, hint: Any, key: str) -> Any:
    """Parse `text` as a value of type `hint` (int, float, bool, str, Literal,
    Optional, tuple of ints)."""
    origin = get_origin(hint)
    if origin is Literal:
        allowed = get_args(hint)
        for a in allowed:
            if str(a) == text:
                return a
        raise ConfigError(f"{key}={text!r} is not allowed (allowed: {', '.join(map(str, allowed))})")
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if text.lower() in ("none", "null") and len(args) < len(get_args(hint)):
            return None
        return parse_value(text, args[0], key)
    if origin is tuple:
        (item, *_rest) = get_args(hint)
        return tuple(parse_value(t.strip(), item, key) for t in text.split(",") if t.strip())
    if hint is bool:
        low = text.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}={text!r} is not a boolean (expected true or false)")
    if hint in (int, float):
        try:
            value = hint(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r} is not {'an integer' if hint is int else 'a number'}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{key}={text!r} is not a finite number")
        return value
    if hint is str:
        return text
    raise ConfigError(f"{key}: fields of type {hint} cannot be set from the command line")


@dataclass(frozen=True)
class Override:
    section: str
    key: str
    value: str

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.key}"


def parse_overrides(items: list[str], sections: Mapping[str, type]) -> list[Override]:
    """Check `section.key=value` items against the known sections and fields
    (values are checked too, by parsing them) before anything runs."""
    out = []
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        dotted, value = item.split("=", 1)
        section, key = dotted.split(".", 1)
        if section not in sections:
            raise ConfigError(f"--set {dotted}: unknown section {section!r}{_hint(section, sections)}")
        cls = sections[section]
        names = [f.name for f in dataclasses.fields(cls)]
        if key not in names:
            allowed = ", ".join(names) if names else "none: it has no settings"
            raise ConfigError(f"--set {dotted}: unknown key {key!r} of {section}{_hint(key, names)} (valid: {allowed})")
        parse_value(value, get_type_hints(cls)[key], dotted)
        out.append(Override(section, key, value))
    return out


def _hint(name: str, valid: Any) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f"; did you mean {close[0]!r}?" if close else f" (valid: {', '.join(sorted(valid))})"


def build_section(cls: type, section: str, defaults: dict[str, Any], overrides: list[Override]) -> Any:
    """Instantiate config `cls` from preset `defaults` (for fields it has) and the
    overrides of `section`; its own validation runs in __post_init__."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in defaults.items() if k in names}
    for name, value in values.items():  # a preset's values reach here without parse_value
        if not _is_finite(value):
            raise ConfigError(f"{section}.{name}={value!r} is not a finite number")
    for o in overrides:
        if o.section == section:
            values[o.key] = parse_value(o.value, hints[o.key], o.dotted)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{section}: {err}") from None


def _is_finite(value: Any) -> bool:
    """False for a NaN or infinite float, alone or in a tuple."""
    items = value if isinstance(value, tuple) else (value,)
    return not any(isinstance(v, float) and not math.isfinite(v) for v in items)


def as_dict(cfg: Any) -> dict[str, Any]:
    """A config section as records store it: every field but the `unkeyed` ones, and the
    `keyed_when_set` ones only where one of them differs from its default (a run that uses
    them says all of them, e.g. a step schedule's step size and gamma at their defaults)."""
    if not dataclasses.is_dataclass(cfg):
        return dict(cfg)
    values = dataclasses.asdict(cfg)
    fields = dataclasses.fields(cfg)
    added = [f for f in fields if f.metadata.get("keyed") == "when_set"]
    any_set = any(values[f.name] != f.default for f in added)  # then the record says all of them
    return {f.name: values[f.name] for f in fields if f.metadata.get("keyed", True) is True or (f in added and any_set)}


@dataclass
class ResolvedRun:
    """Everything one run needs, fully resolved; `to_dict` is what the record stores."""

    method: str
    task: str
    preset: str
    source: str
    seed: int
    device: str
    train: TrainConfig
    measure: MeasureConfig
    towers: TowersConfig
    method_cfg: Any
    task_cfg: Any
    tags: dict[str, str] = field(default_factory=dict)
    # resolved once, when the plan is: each tower role's weights (with their digest), and the
    # real data's directory and fingerprint (None: synthetic)
    weights: dict[str, WeightSource] = field(default_factory=dict)
    data: DataSource | None = None

    @property
    def source_identity(self) -> str:
        """What the run key holds of the data: "synthetic", or the resolved directory and fingerprint."""
        return self.source if self.data is None else self.data.identity

    def to_dict(self) -> dict[str, Any]:
        return {
            "train": as_dict(self.train),
            "measure": as_dict(self.measure),
            "towers": as_dict(self.towers),
            "method": as_dict(self.method_cfg),
            "task": as_dict(self.task_cfg),
        }
