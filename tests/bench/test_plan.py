"""Plan files (experiments as files): every shipped plan resolves, and bad ones name the key."""

from pathlib import Path

import pytest

from bench.config import ConfigError
from bench.plan import RunPlan, load_plan, resolve

PLANS = sorted((Path(__file__).resolve().parents[2] / "bench" / "plans").glob("*.toml"))


@pytest.mark.parametrize("path", PLANS, ids=[p.stem for p in PLANS])
def test_every_shipped_plan_resolves_every_candidate(path: Path) -> None:
    plan = load_plan(path)
    runs = resolve(RunPlan(plan.methods, plan.tasks, plan.preset, plan.seeds, candidates=plan.candidates))
    sizes = {m: len(c) for m, c in plan.candidates.items()}
    assert len(runs) == len(plan.tasks) * len(plan.seeds) * sum(sizes.values())
    assert len({n for m, n in sizes.items() if m != "frozen"}) == 1  # the same budget for every adapted method


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("tasks = ['ave']\n", "candidates"),
        ("[candidates]\nlora = [['lora.r=2'], ['lora.r=2']]\n", "candidates.lora lists a candidate twice"),
        ("[candidates]\nlora = ['lora.r=2']\n", "candidates.lora must be a non-empty list of lists"),
        ("seeds = ['0']\n[candidates]\nlora = [[]]\n", "seeds must be a list of integers"),
        ("methods = ['lora']\n[candidates]\nlora = [[]]\n", "unknown keys \\['methods'\\]"),
    ],
)
def test_a_bad_plan_names_what_is_wrong(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_plan(path)
