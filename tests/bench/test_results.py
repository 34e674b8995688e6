import json
import subprocess

from bench.results import ResultsStore, atomic_write_text, git_state, run_key


def test_append_and_load_round_trip(tmp_path):
    store = ResultsStore(tmp_path)
    store.append({"key": "a", "status": "ok"})
    store.append({"key": "b", "status": "error"})
    report = store.load()
    assert [r["key"] for r in report.records] == ["a", "b"]
    assert report.bad_lines == []
    assert store.finished_keys() == {"a"}


def test_torn_last_line_is_reported_ignored_and_isolated(tmp_path):
    store = ResultsStore(tmp_path)
    store.append({"key": "a", "status": "ok"})
    with open(store.path, "ab") as f:
        f.write(b'{"key": "b", "sta')  # a writer killed mid-line
    report = store.load()
    assert [r["key"] for r in report.records] == ["a"]
    assert report.bad_lines == [(2, "torn last line (interrupted write)")]
    store.append({"key": "c", "status": "ok"})
    lines = store.path.read_text().splitlines()
    assert json.loads(lines[-1])["key"] == "c"
    report = store.load()
    assert [r["key"] for r in report.records] == ["a", "c"]
    assert report.bad_lines[0][0] == 2 and "not a JSON record" in report.bad_lines[0][1]


def test_run_key_depends_on_config_and_seed():
    base = run_key("mettle", "ave", "tiny", "synthetic", 0, {"train": {"lr": 1e-3}})
    assert base == run_key("mettle", "ave", "tiny", "synthetic", 0, {"train": {"lr": 1e-3}})
    assert base != run_key("mettle", "ave", "tiny", "synthetic", 1, {"train": {"lr": 1e-3}})
    assert base != run_key("mettle", "ave", "tiny", "synthetic", 0, {"train": {"lr": 2e-3}})


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
