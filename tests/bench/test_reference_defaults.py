"""The committed reference selection and the code agree: every candidate of
bench/plans/reference.toml still resolves to the configuration its committed records ran
(results/runs.jsonl), and each method's defaults are the candidate chosen on val
(results/tables/selection.csv). Changing a default without redoing the selection fails here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bench.plan import RunPlan, load_plan, resolve

REPO = Path(__file__).resolve().parents[2]
PLAN_TAG = "bench/plans/reference.toml"
PLAN = load_plan(REPO / PLAN_TAG)
RECORDS = [json.loads(line) for line in (REPO / "results/runs.jsonl").read_text().splitlines() if line.strip()]
SELECTION = pd.read_csv(REPO / "results/tables/selection.csv")


def ran(method: str) -> dict[str, dict[str, Any]]:
    """Candidate label -> the train and method config its AVE records ran, in plan order."""
    out: dict[str, dict[str, Any]] = {}
    for r in RECORDS:
        if r["method"] == method and r["task"] == "ave" and r["tags"].get("plan") == PLAN_TAG:
            config = {"train": r["config"]["train"], "method": r["config"]["method"]}
            assert out.setdefault(r["tags"]["candidate"], config) == config
    return out


def config_now(method: str, overrides: list[str]) -> dict[str, Any]:
    (run,) = resolve(RunPlan(methods=[method], tasks=["ave"], preset=PLAN.preset or "tiny", overrides=overrides))
    config = run.to_dict()
    return {"train": config["train"], "method": config["method"]}


@pytest.mark.parametrize("method", list(PLAN.candidates))
def test_every_candidate_still_means_the_runs_it_recorded(method: str) -> None:
    recorded = list(ran(method).values())
    assert [config_now(method, list(c)) for c in PLAN.candidates[method]] == recorded


# methods whose reference runs are not all recorded yet: no candidate is chosen until each has
# run every task (bench.report.candidate_selection), so their defaults wait for it
PENDING: set[str] = set()


def test_a_pending_method_has_not_run_every_task_yet() -> None:
    """Once a pending method's records cover every task of the plan, its candidate is chosen
    and it must leave PENDING, so that the test below checks its defaults."""
    for method in PENDING:
        tasks = {r["task"] for r in RECORDS if r["method"] == method and r["tags"].get("plan") == PLAN_TAG}
        assert tasks < set(PLAN.tasks), f"{method} has run every task: choose its defaults and drop it from PENDING"


@pytest.mark.parametrize("method", [m for m in PLAN.candidates if m not in PENDING])
def test_defaults_are_the_candidate_chosen_on_val(method: str) -> None:
    (chosen,) = SELECTION[(SELECTION["method"] == method) & SELECTION["chosen"]]["candidate"]
    assert config_now(method, []) == ran(method)[chosen]
