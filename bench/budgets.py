"""Memory budgets: CI fails when a change inflates a method's memory.

results/budgets.toml holds, per preset and method, the activation bytes and the
estimated training memory measured on CPU with random weights at the preset's batch
size (deterministic figures), and one relative tolerance. A measured figure above
budget * (1 + tolerance) exceeds it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.measure import memory_figures
from bench.presets import get_preset
from bench.profile import ProfileSpec, build_step, resolve_point
from bench.results import atomic_write_text

BUDGETS_FILE = Path("results/budgets.toml")
BUDGET_KEYS = ("activation_bytes", "train_mem_bytes_est")
DEFAULT_TOLERANCE = 0.05
Figures = dict[str, dict[str, dict[str, int]]]  # preset -> method -> key -> bytes


@dataclass(frozen=True)
class Excess:
    preset: str
    method: str
    key: str
    measured: int
    budget: int | None  # None: no budget recorded for it
    limit: int | None


def measure(presets: list[str], methods: list[str]) -> Figures:
    """The budgeted figures of every (preset, method): one memory pass each, CPU, AVE task."""
    out: Figures = {}
    for preset in presets:
        spec = ProfileSpec(methods=methods, preset=preset, device="cpu")
        batch = get_preset(preset).train["batch_size"]
        for method in methods:
            run = resolve_point(spec, method, batch, spec.segments)
            figures = memory_figures(build_step(run, get_preset(preset), torch.device("cpu")))
            out.setdefault(preset, {})[method] = {k: int(figures[k]) for k in BUDGET_KEYS}
    return out


def load(path: Path) -> tuple[Figures, float]:
    data = tomllib.loads(path.read_text())
    tolerance = float(data.pop("tolerance", DEFAULT_TOLERANCE))
    return data, tolerance


def dumps(figures: Figures, tolerance: float) -> str:
    """TOML by hand (integers and one float only): no writer dependency."""
    lines = [
        "# Memory budgets per preset and method (CPU, random weights, AVE task, the preset's batch size).",
        "# A measured figure above budget * (1 + tolerance) fails `python -m bench check-budgets`.",
        "# Regenerate with `python -m bench check-budgets --update` and say why in the commit.",
        f"tolerance = {tolerance}",
    ]
    for preset, methods in figures.items():
        for method, values in methods.items():
            lines += ["", f"[{preset}.{method}]", *(f"{k} = {v}" for k, v in values.items())]
    return "\n".join(lines) + "\n"


def check(measured: Figures, budgets: Figures, tolerance: float) -> list[Excess]:
    """Every figure above its limit, and every measured figure with no budget."""
    excess = []
    for preset, methods in measured.items():
        for method, values in methods.items():
            for key, value in values.items():
                budget = budgets.get(preset, {}).get(method, {}).get(key)
                limit = None if budget is None else int(budget * (1 + tolerance))
                if limit is None or value > limit:
                    excess.append(Excess(preset, method, key, value, budget, limit))
    return excess


def write(path: Path, figures: Figures, tolerance: float) -> None:
    atomic_write_text(path, dumps(figures, tolerance))
