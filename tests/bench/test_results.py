import json
import subprocess
from pathlib import Path

import pytest

from bench.results import (
    SCHEMA_VERSION,
    Kind,
    RecordError,
    ResultsStore,
    RunRecord,
    Status,
    atomic_write_text,
    git_state,
    run_key,
)

REPO = Path(__file__).resolve().parents[2]


def record(key: str, status: Status = Status.OK, **fields) -> RunRecord:
    return RunRecord(
        kind=Kind.RUN, key=key, method="frozen", task="ave", preset="smoke", source="synthetic", seed=0,
        status=status, config={"train": {"lr": 1e-3}}, **fields,
    )  # fmt: skip


def test_append_and_load_round_trip(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(record("a", versions={"method": 1, "task": 2}))
    store.append(record("b", Status.ERROR, error="ValueError: x"))
    report = store.load()
    assert [r["key"] for r in report.records] == ["a", "b"]
    assert report.bad_lines == []
    assert store.finished_keys() == {"a"}
    first = report.records[0]
    assert first["schema"] == SCHEMA_VERSION == 2 and first["kind"] == "run" and first["versions"]["task"] == 2
    assert RunRecord.from_dict(first) == RunRecord.from_dict(json.loads(json.dumps(first)))
    assert RunRecord.from_dict(report.records[1]).status is Status.ERROR


def test_the_json_form_leaves_out_what_another_kind_has():
    data = record("a").to_dict()
    assert "batch_size" not in data and "traceback" not in data and data["error"] is None
    assert json.loads(json.dumps(data))["status"] == "ok"  # the enum is written as its plain value


def test_torn_last_line_is_reported_ignored_and_isolated(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(record("a"))
    with open(store.path, "ab") as f:
        f.write(b'{"key": "b", "sta')  # a writer killed mid-line
    report = store.load()
    assert [r["key"] for r in report.records] == ["a"]
    assert report.bad_lines == [(2, "torn last line (interrupted write)")]
    store.append(record("c"))
    lines = store.path.read_text().splitlines()
    assert json.loads(lines[-1])["key"] == "c"
    report = store.load()
    assert [r["key"] for r in report.records] == ["a", "c"]
    assert report.bad_lines[0][0] == 2 and "not a JSON record" in report.bad_lines[0][1]


def test_json_lines_that_are_no_records_are_reported_and_skipped(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(record("a"))
    with open(store.path, "a") as f:
        f.write(json.dumps({"key": "b", "status": "ok", "method": "frozen"}) + "\n")
        f.write(json.dumps(record("c").to_dict() | {"status": "finished"}) + "\n")
    store.append(record("d"))
    report = store.load()
    assert [r["key"] for r in report.records] == ["a", "d"]
    (line2, why2), (line3, why3) = report.bad_lines
    assert line2 == 2 and why2.startswith("not a run record: lacks task, preset, source, seed, config")
    assert line3 == 3 and "unknown status 'finished'" in why3


def test_schema_1_records_still_load():
    first = json.loads((REPO / "results" / "runs.jsonl").read_text().splitlines()[0])
    assert first["schema"] == 1 and "kind" not in first and "versions" not in first
    old = RunRecord.from_dict(first)
    assert old.kind is Kind.RUN and old.versions == {} and old.ok and old.schema == 1
    assert old.to_dict() | {"kind": "run", "versions": {}} == first | {"kind": "run", "versions": {}}
    with pytest.raises(RecordError, match="unknown kind"):
        RunRecord.from_dict(first | {"kind": "sweep"})


def test_run_key_depends_on_config_seed_and_versions():
    base = run_key("mettle", "ave", "tiny", "synthetic", 0, {"train": {"lr": 1e-3}}, {"method": 1, "task": 1})
    assert base == run_key("mettle", "ave", "tiny", "synthetic", 0, {"train": {"lr": 1e-3}}, {"method": 1, "task": 1})
    assert base != run_key("mettle", "ave", "tiny", "synthetic", 1, {"train": {"lr": 1e-3}}, {"method": 1, "task": 1})
    assert base != run_key("mettle", "ave", "tiny", "synthetic", 0, {"train": {"lr": 2e-3}}, {"method": 1, "task": 1})
    assert base != run_key("mettle", "ave", "tiny", "synthetic", 0, {"train": {"lr": 1e-3}}, {"method": 1, "task": 2})


def test_atomic_write_text_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "t.md"
    atomic_write_text(path, "x")
    atomic_write_text(path, "y")
    assert path.read_text() == "y"
    assert [p.name for p in path.parent.iterdir()] == ["t.md"]


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_git_state_calls_changed_results_clean_and_changed_code_dirty(tmp_path):
    repo = tmp_path / "repo"
    (repo / "results").mkdir(parents=True)
    (repo / "code.py").write_text("x = 1\n")
    (repo / "results" / "runs.jsonl").write_text("{}\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    (repo / "results" / "runs.jsonl").write_text("{}\n{}\n")  # a resumed run appended a record
    state = git_state(repo / "results", cwd=repo)
    assert len(state["sha"]) == 40 and state["dirty"] is False
    assert git_state(cwd=repo)["dirty"] is True  # without an output directory, every change counts
    (repo / "code.py").write_text("x = 2\n")
    assert git_state(repo / "results", cwd=repo)["dirty"] is True
    assert git_state(tmp_path / "elsewhere", cwd=repo)["dirty"] is True


def test_git_state_outside_a_repository_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # even if TMPDIR is in a repo
    assert git_state(cwd=tmp_path) == {"sha": None, "dirty": None}
