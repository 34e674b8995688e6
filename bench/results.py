"""The append-only results store, and the one record type it holds.

Every run and every profile point ends in one `RunRecord`, appended to OUT/runs.jsonl (or
OUT/profile.jsonl) as one JSON line: a single write of a whole line, then flushed and
fsynced, so a killed run can tear at most the last line; a torn line is reported and
ignored, and the next append starts on a fresh line. A line that is JSON but not a record
(fields missing, an unknown status) is reported and ignored the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import timm
import torch

SCHEMA_VERSION = 2  # 2: `kind`, and the method's and task's `versions` (in the run key too)


class Status(StrEnum):
    """How a run or profile point ended; only `ok` counts as finished."""

    OK = "ok"
    NAN = "nan"  # the loss diverged
    OOM = "oom"  # the device ran out of memory
    ERROR = "error"  # any other exception, or a worker process that died
    KILLED = "killed"  # a profile point's process killed by the system (CPU out of memory)


class Kind(StrEnum):
    RUN = "run"  # bench run / sweep: trained, selected on val, tested, measured
    PROFILE = "profile"  # bench profile: one measured training step, random weights


class RecordError(ValueError):
    """A JSON line that is not a record: what is wrong with it."""


# fields every record of a kind has, with their JSON types; a line lacking one is not a record
REQUIRED: dict[Kind, dict[str, type]] = {
    Kind.RUN: {"method": str, "task": str, "preset": str, "source": str, "seed": int, "status": str, "config": dict},
    Kind.PROFILE: {"method": str, "task": str, "preset": str, "status": str, "config": dict, "batch_size": int},
}
FINISHED: dict[str, type] = {"metrics": dict, "efficiency": dict}  # what a finished record's figures are
OPTIONAL: dict[str, type] = {"key": str, "tags": dict, "versions": dict, "metrics_per_item": dict}
JSON_TYPES = {str: "a string", int: "an integer", dict: "a JSON object"}


def _field_problem(data: dict[str, Any], kind: Kind) -> str | None:
    """What makes `data` no record of `kind`: a field missing or of the wrong JSON type."""
    fields = REQUIRED[kind] | (FINISHED if data.get("status") == Status.OK else {})
    if missing := [k for k in fields if k not in data]:
        return f"not a {kind} record: lacks {', '.join(missing)}"
    for name, expected in (fields | OPTIONAL).items():
        value = data.get(name)
        if name in data and (not isinstance(value, expected) or isinstance(value, bool)):
            return f"{name!r} is {value!r}, expected {JSON_TYPES[expected]}"
    for section, values in data["config"].items():
        if not isinstance(values, dict):
            return f"'config' section {section!r} is {values!r}, expected a JSON object"
    return None


@dataclass
class RunRecord:
    """One run or profile point: identity, what ran (config, versions, weights, data), how it
    ended, its metrics and efficiency figures, and where it ran (env, git, command).
    Serialised flat, as schema-1 records were, so that old records still load."""

    kind: Kind
    method: str
    task: str
    preset: str
    status: Status
    config: dict[str, Any]
    error: str | None = None
    key: str | None = None  # runs: identity of the experiment (run_key); a rerun skips a finished key
    source: str | None = None  # runs: "synthetic" or the resolved data directory
    seed: int | None = None
    versions: dict[str, int] = field(default_factory=dict)  # {"method": m, "task": t}
    metrics: dict[str, Any] = field(default_factory=dict)
    efficiency: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    git: dict[str, Any] = field(default_factory=dict)
    command: str | None = None
    wall_s: float | None = None
    # runs
    best_epoch: int | None = None
    val_history: list[float] | None = None
    weights: dict[str, Any] | None = None  # tower role -> its weights, architecture and size
    budget: dict[str, Any] | None = None  # the steps taken and where their number comes from
    data: dict[str, Any] | None = None  # real data: its directory and fingerprint
    metrics_per_item: dict[str, list[float]] | None = None  # test scores per item, for bootstrap intervals
    # profile points
    batch_size: int | None = None
    segments: int | None = None  # None: the task fixes its frames
    sweep: str | None = None
    reference: str | None = None
    argv: list[str] | None = None
    cuda_alloc_conf: str | None = None
    cpu_allocator: str | None = None
    traceback: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # fields of a newer schema, kept as they were
    schema: int = SCHEMA_VERSION
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: unset optional fields left out (`error` always present)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out = {k: v for k, v in out.items() if v is not None or k == "error"}
        return out | self.extra

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """A record from its JSON form, any schema; RecordError says what makes it none."""
        try:
            kind = Kind(data.get("kind", Kind.RUN))  # schema 1 marked profile points only
        except ValueError:
            raise RecordError(f"unknown kind {data.get('kind')!r}") from None
        if problem := _field_problem(data, kind):
            raise RecordError(problem)
        try:
            status = Status(data["status"])
        except ValueError:
            raise RecordError(f"unknown status {data['status']!r} (expected one of {', '.join(Status)})") from None
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known | {"kind": kind, "status": status}, extra={k: v for k, v in data.items() if k not in names})


def run_key(
    method: str,
    task: str,
    preset: str,
    source: str,
    seed: int,
    config: dict[str, Any],
    versions: dict[str, int] | None = None,
) -> str:
    """Identity of a run: the same key means the same experiment, so a rerun skips it. The
    method's and task's versions are part of it, so a changed method or task never reuses an
    old record; `source` is "synthetic" or the data's resolved directory and fingerprint."""
    blob = json.dumps([method, task, preset, source, seed, config, versions or {}], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def git_state(out_dir: Path | None = None, cwd: Path | None = None) -> dict[str, Any]:
    """The commit the code comes from, and whether tracked files differ from it. Files under
    `out_dir` are results, not code: a resumed run that appends to `results/runs.jsonl` in the
    repository must not call its own code dirty."""
    root = (cwd or Path(__file__).parent.parent).resolve()
    out = out_dir.resolve() if out_dir is not None else None
    pathspec = []
    if out is not None and out != root and out.is_relative_to(root):
        pathspec = ["--", ".", f":(exclude){out.relative_to(root).as_posix()}"]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = ["git", "status", "--porcelain", "-uno", *pathspec]
        dirty = subprocess.run(status, cwd=root, capture_output=True, text=True, check=True)
        return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"sha": None, "dirty": None}


def environment(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "device": device.type,
        "device_name": name,
        "threads": torch.get_num_threads(),
    }


@dataclass
class LoadReport:
    records: list[dict[str, Any]]  # each a valid record's JSON form
    bad_lines: list[tuple[int, str]]  # (line number, why)


class ResultsStore:
    def __init__(self, out_dir: Path, filename: str = "runs.jsonl") -> None:
        self.path = Path(out_dir) / filename

    def load(self, check: Callable[[dict[str, Any]], str | None] | None = None) -> LoadReport:
        """Every record, and (line, why) for each line that is none: torn, not JSON, not a
        record, or refused by `check` (a reader's own condition, e.g. a task it knows)."""
        if not self.path.exists():
            return LoadReport([], [])
        records, bad = [], []
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        for i, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            last = i == len(lines)  # no newline after it: the write was cut short
            try:
                rec = json.loads(raw)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except ValueError as err:
                why = "torn last line (interrupted write)" if last else f"not a JSON record ({err})"
                bad.append((i, why))
                continue
            try:
                RunRecord.from_dict(rec)
            except RecordError as err:
                bad.append((i, str(err)))
                continue
            if check is not None and (why := check(rec)) is not None:
                bad.append((i, why))
                continue
            records.append(rec)
        return LoadReport(records, bad)

    def finished_keys(self) -> set[str]:
        return {r["key"] for r in self.load().records if r["status"] == Status.OK and "key" in r}

    def append(self, record: RunRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(record.to_dict(), sort_keys=True, default=str) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size > 0 and not self._ends_with_newline():
                line = b"\n" + line  # isolate a torn line left by a killed writer
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
