"""Which records a report reads: those holding every field the tables read, one per run."""

from __future__ import annotations

from typing import Any

from bench.registry import task_names
from bench.results import LoadReport, ResultsStore, run_key

EXPECTED = {str: "a string", int: "an integer", dict: "a JSON object"}
IDENTITY = {"method": str, "task": str, "preset": str, "source": str, "seed": int, "status": str, "config": dict}
FINISHED = {"metrics": dict, "efficiency": dict}  # what a finished run's row is made of
OPTIONAL = {"key": str, "tags": dict}


def unusable(record: dict[str, Any]) -> str | None:
    """Why the tables cannot read `record` (a field missing or of the wrong type, or a task
    this harness does not know), or None when they can."""
    fields = {**IDENTITY, **(FINISHED if record.get("status") == "ok" else {})}
    for name, kind in fields.items():
        if name not in record:
            whose = "a finished run's record" if name in FINISHED else "the record"
            return f"{whose} lacks {name!r} (expected {EXPECTED[kind]})"
    for name, kind in {**fields, **OPTIONAL}.items():
        value = record.get(name)
        if name in record and (not isinstance(value, kind) or isinstance(value, bool)):
            return f"{name!r} is {value!r}, expected {EXPECTED[kind]}"
    for section, values in record["config"].items():
        if not isinstance(values, dict):
            return f"'config' section {section!r} is {values!r}, expected a JSON object"
    if record["task"] not in task_names():
        return f"'task' is {record['task']!r}, not a task of this harness ({', '.join(task_names())})"
    return None


def usable_records(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """The records the tables can read, and (index in `records`, why) for each of the others."""
    kept, dropped = [], []
    for i, record in enumerate(records):
        why = unusable(record)
        if why is None:
            kept.append(record)
        else:
            dropped.append((i, why))
    return kept, dropped


def load_usable(store: ResultsStore) -> LoadReport:
    """The store's records less those the tables cannot read, each of which joins the bad
    lines with its line number (the store skips blank lines and counts them)."""
    report = store.load()
    kept, dropped = usable_records(report.records)
    if not dropped:
        return report
    bad = dict(report.bad_lines)
    lines = [i for i, raw in enumerate(store.path.read_bytes().split(b"\n"), 1) if raw.strip() and i not in bad]
    return LoadReport(kept, sorted([*report.bad_lines, *((lines[i], why) for i, why in dropped)]))


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
