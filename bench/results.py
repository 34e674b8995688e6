"""The append-only results store: one JSON record per run in OUT/runs.jsonl.

Each record is appended with a single write of a whole line, then flushed and
fsynced, so a killed run can tear at most the last line; a torn line is reported
and ignored, and the next append starts on a fresh line.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import timm
import torch

SCHEMA_VERSION = 1
FINISHED = "ok"


def run_key(method: str, task: str, preset: str, source: str, seed: int, config: dict[str, Any]) -> str:
    """Identity of a run: the same key means the same experiment, so a rerun skips it."""
    blob = json.dumps([method, task, preset, source, seed, config], sort_keys=True, default=str)
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


def new_record(**fields: Any) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "run_id": uuid.uuid4().hex[:12],
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **fields,
    }


@dataclass
class LoadReport:
    records: list[dict[str, Any]]
    bad_lines: list[tuple[int, str]]  # (line number, why)


class ResultsStore:
    def __init__(self, out_dir: Path, filename: str = "runs.jsonl") -> None:
        self.path = Path(out_dir) / filename

    def load(self) -> LoadReport:
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
                records.append(rec)
            except ValueError as err:
                why = "torn last line (interrupted write)" if last else f"not a JSON record ({err})"
                bad.append((i, why))
        return LoadReport(records, bad)

    def finished_keys(self) -> set[str]:
        return {r["key"] for r in self.load().records if r.get("status") == FINISHED and "key" in r}

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
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
