"""Experiments as files: a plan names the methods, tasks, seeds and each method's candidate
configurations of a `bench run` (e.g. bench/plans/reference.toml, the reference results).

    preset = "tiny"
    tasks = ["ave", "avvp"]
    seeds = [0, 1, 2]
    set = ["train.epochs=5"]                  # overrides for every run
    [candidates]                              # per method: a list of override lists
    frozen = [[]]                             # one candidate: the defaults
    lora = [["lora.r=4"], ["lora.r=8", "train.lr=3e-3"]]

Every method runs every one of its candidates on every task and seed; the tables keep, per
method, the candidate with the best mean rank of its val metric over the tasks
(bench.report.select_candidates), a rule that never reads a test number.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import ConfigError

Candidate = tuple[str, ...]  # `section.key=value` overrides


@dataclass(frozen=True)
class PlanFile:
    path: Path
    preset: str | None = None
    tasks: list[str] | None = None
    seeds: list[int] | None = None
    overrides: list[str] = field(default_factory=list)
    candidates: dict[str, list[Candidate]] = field(default_factory=dict)

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
    allowed = {"description", "preset", "tasks", "seeds", "set", "candidates"}
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
    seeds = data.get("seeds")
    if seeds is not None and not (isinstance(seeds, list) and all(type(s) is int for s in seeds)):
        raise ConfigError(f"--plan {path}: seeds must be a list of integers")
    return PlanFile(path, data.get("preset"), data.get("tasks"), seeds, list(data.get("set", [])), checked)


def _is_strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
