"""Which records a report reads: whole records of known tasks, the latest one per run."""

from __future__ import annotations

from typing import Any

from bench.registry import task_names
from bench.results import LoadReport, ResultsStore, run_key


def unknown_task(record: dict[str, Any]) -> str | None:
    """Why the tables cannot read a record that is otherwise whole: a task this harness does not
    know (a plug-in since removed); None when they can."""
    if record["task"] not in task_names():
        return f"'task' is {record['task']!r}, not a task of this harness ({', '.join(task_names())})"
    return None


def load_usable(store: ResultsStore) -> LoadReport:
    """The store's records that the tables can read; the others are among its bad lines."""
    return store.load(check=unknown_task)


def record_key(record: dict[str, Any]) -> str:
    """The run's key: the stored one, else the same hash the runner stores."""
    identity = (record[k] for k in ("method", "task", "preset", "source", "seed", "config"))
    return record.get("key") or run_key(*identity)


def latest_per_key(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per run key, the last appended (a --force rerun or a retried run replaces
    the earlier one), in the order the keys first appear."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        latest[record_key(record)] = record
    return list(latest.values())
