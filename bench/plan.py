"""What to run: a `RunPlan` (methods x tasks x seeds x candidates), resolved into checked
`ResolvedRun`s before any work, and experiments as files: a plan file names the methods,
tasks, seeds and each method's candidate configurations of a `bench run` (e.g.
bench/plans/reference.toml, the reference results).

    preset = "tiny"
    tasks = ["ave", "avvp"]
    seeds = [0, 1, 2]
    set = ["train.epochs=5"]                  # overrides for every run
    recipe = "official"                       # optional: each method's official recipe (bench.recipe)
    [candidates]                              # per method: a list of override lists
    frozen = [[]]                             # one candidate: the defaults
    lora = [["lora.r=4"], ["lora.r=8", "train.lr=3e-3"]]

Every method runs every one of its candidates on every task and seed; the tables keep, per
method, the candidate with the best mean rank of its val metric over the tasks
(bench.report.select_candidates), a rule that never reads a test number.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from bench.claims import DEFAULT_TIMEOUT_S
from bench.config import (
    BASE_SECTIONS,
    ConfigError,
    MeasureConfig,
    Override,
    ResolvedRun,
    TowersConfig,
    TrainConfig,
    build_section,
    parse_overrides,
)
from bench.data.fingerprint import DataSource, data_source
from bench.device import check_workers, resolve_device
from bench.presets import get_preset
from bench.recipe import applied, recipes_for
from bench.registry import METHODS, TASKS, get_method, get_task, task_names
from bench.tasks.base import Task
from bench.tracking import Tracking
from bench.weights import resolve as resolve_weights

Candidate = tuple[str, ...]  # `section.key=value` overrides


@dataclass(frozen=True)
class PlanFile:
    path: Path
    preset: str | None = None
    tasks: list[str] | None = None
    seeds: list[int] | None = None
    overrides: list[str] = field(default_factory=list)
    candidates: dict[str, list[Candidate]] = field(default_factory=dict)
    recipe: str | None = None

    @property
    def methods(self) -> list[str]:
        return list(self.candidates)


def candidate_label(candidate: Candidate) -> str:
    """How records and tables name a candidate: its overrides, or `defaults`."""
    return " ".join(candidate) or "defaults"


def load_plan(path: Path) -> PlanFile:
    """Read and check a plan file; a bad key or value is a ConfigError naming it."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"--plan {path}: {err}") from None
    allowed = {"description", "preset", "tasks", "seeds", "set", "candidates", "recipe"}
    if unknown := set(data) - allowed:
        raise ConfigError(f"--plan {path}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")
    candidates = data.get("candidates")
    if not isinstance(candidates, dict) or not candidates:
        raise ConfigError(f"--plan {path}: [candidates] must map each method to a list of override lists")
    checked: dict[str, list[Candidate]] = {}
    for method, items in candidates.items():
        if not isinstance(items, list) or not items or not all(_is_strings(c) for c in items):
            raise ConfigError(
                f"--plan {path}: candidates.{method} must be a non-empty list of lists of 'section.key=value' strings"
            )
        checked[method] = [tuple(c) for c in items]
        if len(set(checked[method])) != len(checked[method]):
            raise ConfigError(f"--plan {path}: candidates.{method} lists a candidate twice")
    for key in ("tasks", "set"):
        if key in data and not _is_strings(data[key]):
            raise ConfigError(f"--plan {path}: {key} must be a list of strings")
    if "recipe" in data and not isinstance(data["recipe"], str):
        raise ConfigError(f'--plan {path}: recipe must be a string (e.g. "official")')
    seeds = data.get("seeds")
    if seeds is not None and not (isinstance(seeds, list) and all(type(s) is int for s in seeds)):
        raise ConfigError(f"--plan {path}: seeds must be a list of integers")
    overrides = list(data.get("set", []))
    return PlanFile(path, data.get("preset"), data.get("tasks"), seeds, overrides, checked, data.get("recipe"))


def _is_strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


@dataclass
class RunPlan:
    methods: list[str]
    tasks: list[str]
    preset: str = "tiny"
    seeds: list[int] = field(default_factory=lambda: [0])
    device: str = "auto"
    source: dict[str, str] = field(default_factory=dict)  # task -> data path; synthetic when absent
    overrides: list[str] = field(default_factory=list)
    force: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    # per method, the candidate configurations (override lists) run on every task and seed;
    # the tables keep the one with the best mean val rank over the tasks (bench.report)
    candidates: dict[str, list[Candidate]] = field(default_factory=dict)
    tune: str | None = None  # "section.key=v1,v2,...": the same candidates for every method
    command: str | None = None  # the command line that asked for these runs; every record keeps it
    workers: int | None = 1  # runs at once, each in a process of its own (bench.workers); None: one per core
    claim_timeout: float = DEFAULT_TIMEOUT_S  # seconds without a heartbeat before a run's claim is taken over
    keep_checkpoints: bool = False  # keep OUT/checkpoints/<run key> once the run has its record
    recipe: str | None = None  # "official" or a recipe's name (bench.recipe): overrides before `overrides`
    tracking: Tracking = field(default_factory=Tracking)  # experiment trackers (`--log`, bench.tracking)

    def candidates_of(self, method: str) -> list[Candidate]:
        if self.tune:
            key, _, values = self.tune.partition("=")
            items = [v.strip() for v in values.split(",") if v.strip()]
            if not key or not items:
                raise ConfigError(f"--tune {self.tune!r}: expected section.key=v1,v2,...")
            return [(f"{key}={v}",) for v in items]
        return self.candidates.get(method, [()])


class Sections(Mapping[str, type]):
    """Config section name -> its dataclass: the base sections, then every method's and task's
    config, whose module is imported only when its section is looked up (an override names it)."""

    def __getitem__(self, name: str) -> type:
        if name in BASE_SECTIONS:
            return BASE_SECTIONS[name]
        if name in METHODS:
            return METHODS.get(name).config_cls
        if name in TASKS:
            return TASKS.get(name).config_cls
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter([*BASE_SECTIONS, *METHODS.names(), *task_names()])

    def __len__(self) -> int:
        return len(list(iter(self)))


def all_sections() -> Sections:
    return Sections()


def resolve(plan: RunPlan) -> list[ResolvedRun]:
    """Check every name and override before anything runs (bad usage exits 2)."""
    preset = get_preset(plan.preset)
    resolve_device(plan.device)
    check_workers(plan.workers, plan.device)
    for m in plan.methods:
        get_method(m)
    for t in plan.tasks:
        get_task(t)
    sections = all_sections()
    base = parse_overrides(plan.overrides, sections)
    recipes = recipes_for(plan.recipe, product(plan.methods, plan.tasks)) if plan.recipe else {}
    tagged = bool(plan.tune or plan.candidates)
    data: dict[str, DataSource] = {}
    for task_name, path in plan.source.items():
        if path == "synthetic":
            continue
        if not Path(path).is_dir():
            raise ConfigError(f"--data {task_name}={path}: not a directory")
        data[task_name] = data_source(path)
    runs = []
    for task_name in plan.tasks:
        task = get_task(task_name)
        real = data.get(task_name)
        source = real.path if real is not None else "synthetic"
        for method in plan.methods:
            recipe = recipes.get((method, task_name))
            for seed in plan.seeds:
                for candidate in plan.candidates_of(method):
                    overrides = (applied(recipe) if recipe else []) + base + parse_overrides(list(candidate), sections)
                    tags = {"candidate": candidate_label(candidate)} if tagged else {}
                    tags |= recipe.tags if recipe else {}
                    task_cfg = build_section(task.config_cls, task_name, preset.data, overrides)
                    runs.append(
                        ResolvedRun(
                            method=method,
                            task=task_name,
                            preset=preset.name,
                            source=source,
                            seed=seed,
                            device=plan.device,
                            train=build_section(
                                TrainConfig, "train", {**preset.train, **get_method(method).train_defaults}, overrides
                            ),
                            measure=build_section(MeasureConfig, "measure", {}, overrides),
                            towers=build_section(TowersConfig, "towers", {}, overrides),
                            method_cfg=build_section(get_method(method).config_cls, method, {}, overrides),
                            task_cfg=for_source(task, source, task_cfg, overrides),
                            tags={**plan.tags, **tags},
                            data=real,
                        )
                    )
    for run in runs:  # weights that cannot be found, or a budget reference that is no method, are usage errors too
        run.weights = resolve_weights(preset, run.towers, get_method(run.method).towers)
        if run.train.budget == "flops":  # loaded only when used: a run imports only its own plug-ins
            get_method(run.train.budget_reference)
    return runs


def for_source(task: Task, source: str, cfg: Any, overrides: list[Override]) -> Any:
    """`cfg` with the values real data decides (AVE and LLP clips have 10 segments,
    whatever the preset says), so that the record says what ran. Setting one of them to
    another value for real data is a usage error."""
    if source == "synthetic" or not task.real_fixes:
        return cfg
    for o in overrides:
        if o.section == task.name and o.key in task.real_fixes and getattr(cfg, o.key) != task.real_fixes[o.key]:
            raise ConfigError(f"{o.dotted}={o.value}: real {task.name} data has {o.key}={task.real_fixes[o.key]}")
    return dataclasses.replace(cfg, **task.real_fixes)
