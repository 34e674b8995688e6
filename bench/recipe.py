"""Official recipes: the training protocol a paper released, as data (bench/recipes/NAME.toml).

`bench run --recipe official` gives each run its method's recipe for its task,
bench/recipes/<method>_<task>.toml, as overrides applied before the user's `--set` (flags
win); `--recipe NAME` gives every run the one recipe NAME (a published head's own protocol,
e.g. avsbench_avs_s4), which must be for the runs' task. A file:

    task = "ave"                 # the task it is for
    method = "dgsct"             # the method it is for; absent in a head's own protocol
    source = "haoyi-duan/DG-SCT@<commit> DG-SCT/AVE/train.sh: --lr=5e-04 ..."
    notes = ["what the official code does that the harness cannot express"]
    [train]                      # TrainConfig fields
    lr = 5e-4
    [ave]                        # the task's section: only the keys of TASK_KEYS
    head = "cmbs"
    [dgsct]                      # the method's own section (its config fields)
    num_tokens = 32

A run keeps the recipe's name and content hash in its record's tags; its run key changes only
through the overrides the recipe applies. Best-epoch selection stays on val whatever the
recipe (some official scripts select on test; the recipes note it and do not copy it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

from bench.config import BASE_SECTIONS, ConfigError, Override, parse_value
from bench.registry import METHODS, TASKS, get_method, get_task

RECIPES_DIR = Path(__file__).parent / "recipes"
OFFICIAL = "official"
# what a recipe may set of a task's config: the published head, and the segments per video
TASK_KEYS = frozenset({"head", "segments"})
TOP_KEYS = frozenset({"task", "method", "source", "notes"})


@dataclass(frozen=True)
class Recipe:
    name: str  # the file's stem
    path: Path
    task: str
    method: str | None  # None: a head's own protocol, for any method
    source: str
    notes: tuple[str, ...]
    overrides: tuple[Override, ...]
    sha256: str  # of the file's bytes

    @property
    def tags(self) -> dict[str, str]:
        """What a run's record keeps of it."""
        return {"recipe": self.name, "recipe_sha256": self.sha256}


def load_recipe(path: Path) -> Recipe:
    """Read and check a recipe file; a bad key or value is a ConfigError naming the file and the key."""
    try:
        raw = path.read_bytes()
        data: dict[str, Any] = tomllib.loads(raw.decode())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"recipe {path}: {err}") from None
    task = _name(data, "task", path, TASKS.names(), required=True)
    method = _name(data, "method", path, METHODS.names(), required=False)
    source = data.get("source")
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"recipe {path}: `source` must name the official file, its commit and flags")
    notes = data.get("notes", [])
    if not (isinstance(notes, list) and all(isinstance(n, str) for n in notes)):
        raise ConfigError(f"recipe {path}: `notes` must be a list of strings")
    sections = {"train": BASE_SECTIONS["train"], task: get_task(task).config_cls}
    if method is not None:
        sections[method] = get_method(method).config_cls
    if unknown := sorted(set(data) - TOP_KEYS - set(sections)):
        allowed = sorted(TOP_KEYS | set(sections))
        raise ConfigError(f"recipe {path}: unknown key or section {unknown[0]!r} (allowed: {', '.join(allowed)})")
    overrides = []
    for section, cls in sections.items():
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"recipe {path}: [{section}] must be a table of settings")
        allowed_keys = TASK_KEYS if section == task else None
        overrides += [_override(path, section, cls, key, value, allowed_keys) for key, value in table.items()]
    digest = hashlib.sha256(raw).hexdigest()
    return Recipe(path.stem, path, task, method, source.strip(), tuple(notes), tuple(overrides), digest)


def _name(data: dict[str, Any], key: str, path: Path, known: list[str], required: bool) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if value not in known:
        raise ConfigError(f"recipe {path}: {key} = {value!r} is not a known {key} (known: {', '.join(known)})")
    return value


def _override(path: Path, section: str, cls: type, key: str, value: Any, allowed: frozenset[str] | None) -> Override:
    """One `section.key=value` of a recipe, its key and value checked against the config class.
    A task key of TASK_KEYS the class lacks (a head not in this version) is checked when applied."""
    where = f"recipe {path}: {section}.{key}"
    fields = [f.name for f in dataclasses.fields(cls)]
    if allowed is not None and key not in allowed:
        raise ConfigError(f"{where}: a recipe sets only {', '.join(sorted(allowed))} of a task")
    if allowed is None and key not in fields:
        raise ConfigError(f"{where}: unknown key (valid: {', '.join(fields)})")
    if isinstance(value, dict | list):
        raise ConfigError(f"{where}: expected a single value, got {value!r}")
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if key in fields:
        parse_value(text, get_type_hints(cls)[key], where)
    return Override(section, key, text)


def recipe_for(choice: str, method: str, task: str) -> Recipe:
    """The recipe a run of `method` on `task` gets under `--recipe choice` (`official` or a name)."""
    if choice == OFFICIAL:
        path = RECIPES_DIR / f"{method}_{task}.toml"
        if not path.is_file():
            raise ConfigError(f"--recipe official: no recipe for {method} on {task} (looked for {path})")
        recipe = load_recipe(path)
        if (recipe.method, recipe.task) != (method, task):
            raise ConfigError(f"recipe {path}: says method {recipe.method!r}, task {recipe.task!r}")
        return recipe
    path = RECIPES_DIR / f"{choice}.toml"
    if not path.is_file():
        known = ", ".join([OFFICIAL, *shipped_names()])
        raise ConfigError(f"--recipe {choice}: no such recipe (looked for {path}; known: {known})")
    recipe = load_recipe(path)
    if recipe.task != task:
        raise ConfigError(f"--recipe {choice}: it is for task {recipe.task}, not {task} ({path})")
    return recipe


def recipes_for(choice: str, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Recipe]:
    """Each (method, task) pair's recipe; every pair without one is named in one ConfigError."""
    found, missing = {}, []
    for method, task in pairs:
        try:
            found[method, task] = recipe_for(choice, method, task)
        except ConfigError as err:
            missing.append(str(err))
    if missing:
        raise ConfigError("; ".join(missing))
    return found


def shipped_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def applied(recipe: Recipe) -> list[Override]:
    """The recipe's overrides, once its task's config has every key it sets: a task key of
    TASK_KEYS that this version's config lacks (the published heads arrive in their own change)
    is an error naming the recipe file, before anything runs."""
    names = {f.name for f in dataclasses.fields(get_task(recipe.task).config_cls)}
    for o in recipe.overrides:
        if o.section == recipe.task and o.key not in names:
            where = f"recipe {recipe.path}: {o.dotted}"
            raise ConfigError(f"{where}: this version's {recipe.task} has no {o.key!r} setting")
    return list(recipe.overrides)
