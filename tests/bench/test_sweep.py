"""Sweeps on shared storage (journal file, PostgreSQL) and torchrun, on the smoke preset.

Slow by nature: worker processes (forked from bench's forkserver, as `--workers` forks them)
and torchrun's. The rest runs in-process.
"""

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from itertools import product
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from bench.cli import build_parser, main, sweep_spec
from bench.device import threads_per_worker
from bench.forkserver import context as forkserver_context
from bench.forkserver import same_command
from bench.plan import RunPlan, resolve
from bench.results import ResultsStore
from bench.sweep import SweepSpec, load_study_file, make_storage

STUDIES = sorted((Path(__file__).parents[2] / "bench" / "studies").glob("*.toml"))

REPO = Path(__file__).resolve().parents[2]
FAST = ["--preset", "smoke", "--device", "cpu", "--set", "measure.enabled=false", "--objectives", "accuracy:max"]
GRID4 = ["--grid", "mettle.num_tokens=1,2", "--grid", "mettle.aggregate=mean,last"]
METRIC_TOL = 1e-4  # torchrun vs one process: same global batch, gradient sums differ only in rounding

pytestmark = pytest.mark.slow


def sweep_cmd(out: Path, study: str, *extra: str) -> list[str]:
    args = ["sweep", "--method", "mettle", "--task", "ave", *FAST, "--study", study, "--out", str(out)]
    return [sys.executable, "-m", "bench", *args, "--heartbeat", "1", *extra]


def in_process(out: Path, study: str, *extra: str) -> list[str]:
    """`bench sweep` arguments for main() on the smoke preset, with one timed step per run."""
    args = ["sweep", "--method", "mettle", "--task", "ave", "--preset", "smoke", "--device", "cpu"]
    fast = ["--set", "measure.repeats=1", "--set", "measure.warmup=0"]
    return [*args, *fast, "--out", str(out), "--study", study, *extra]


def load(study: str, out: Path, storage: str | None = None) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=make_storage(storage, out)).get_trials()


def assert_grid_done(trials: list[optuna.trial.FrozenTrial], points: int) -> None:
    complete = [tuple(sorted(t.params.items())) for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == points and len(set(complete)) == points, [(t.state, t.params) for t in trials]


def study_records(out: Path, study: str) -> list[dict]:
    return [r for r in ResultsStore(out).load().records if r["tags"].get("study") == study]


def test_two_workers_finish_a_grid_exactly_once_with_half_the_cores_each(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert main([*sweep_cmd(tmp_path, "grid", *GRID4, "--workers", "2")[3:]]) == 0  # it starts the two workers
    assert_grid_done(load("grid", tmp_path), 4)
    records = study_records(tmp_path, "grid")
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)
    assert {r["env"]["threads"] for r in records} == {threads_per_worker(2)}


def test_killed_worker_restarted_retries_its_stale_trial(tmp_path):
    # trials long enough (40 smoke epochs, seconds) that the poll below sees one RUNNING
    # before the worker could finish the grid on a fast machine
    cmd = sweep_cmd(tmp_path, "kill", "--grid", "mettle.num_tokens=1,2", "--set", "train.epochs=40")
    worker = forkserver_context().Process(target=same_command, args=(cmd[3:], 1))  # a `bench sweep` process
    worker.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        (tmp_path / "optuna.journal").exists() and any(t.state == TrialState.RUNNING for t in load("kill", tmp_path))
    ):
        time.sleep(0.3)
    os.kill(worker.pid, signal.SIGKILL)  # mid-trial: the smoke run takes seconds
    worker.join()
    killed = [t for t in load("kill", tmp_path) if t.state == TrialState.RUNNING]
    assert len(killed) == 1
    assert main(cmd[3:]) == 0  # the restarted worker, in-process
    trials = load("kill", tmp_path)
    assert_grid_done(trials, 2)
    stale = trials[killed[0].number]
    assert stale.state == TrialState.FAIL
    assert any(t.system_attrs.get("failed_trial") == stale.number and t.state == TrialState.COMPLETE for t in trials)


@pytest.fixture(scope="module")
def postgres_url():
    """BENCH_TEST_POSTGRES_URL, or a throwaway cluster of the Debian package on loopback
    (initdb/pg_ctl; as user postgres when run as root, since the server refuses root)."""
    if url := os.environ.get("BENCH_TEST_POSTGRES_URL"):
        yield url
        return
    initdb = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not initdb:
        pytest.skip("no PostgreSQL server: set BENCH_TEST_POSTGRES_URL or apt-get install postgresql")
    bindir, root = initdb[-1].parent, tempfile.mkdtemp(prefix="bench-pg-")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres")
    data = Path(root) / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        [*as_user, bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust"], check=True, capture_output=True
    )
    opts = f"-h 127.0.0.1 -p {port} -k {root}"
    subprocess.run(
        [*as_user, bindir / "pg_ctl", "-D", data, "-l", f"{root}/log", "-o", opts, "-w", "start"], check=True
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_on_postgresql(tmp_path, postgres_url):
    cmd = sweep_cmd(tmp_path, "pg", "--grid", "mettle.num_tokens=1,2", "--storage", postgres_url, "--workers", "2")
    assert main(cmd[3:]) == 0  # it starts the two workers
    assert_grid_done(load("pg", tmp_path, postgres_url), 2)
    assert not (tmp_path / "optuna.journal").exists()


def test_diverging_trial_fails_with_its_reason_and_the_study_goes_on(tmp_path):
    args = in_process(tmp_path, "lr", "--grid", "train.lr=1e-3,1e30")
    assert main(args) == 1  # like `run`: a failed run exits 1
    trials = {t.params["train.lr"]: t for t in load("lr", tmp_path)}
    assert trials[1e-3].state == TrialState.COMPLETE
    assert trials[1e30].state == TrialState.FAIL and trials[1e30].user_attrs["status"] == "nan"
    assert "loss is" in trials[1e30].user_attrs["error"]
    assert sorted(r["status"] for r in study_records(tmp_path, "lr")) == ["nan", "ok"]
    assert main(["table", "--study", "lr", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "tables" / "ablation_lr.md").read_text()
    assert "| lr |" in table and "nan" in table
    assert main(["plot", "--study", "lr", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "figures" / "ablation_lr_pareto.png").is_file()


def test_torchrun_two_processes_match_one_process(tmp_path):
    run = ["run", "--methods", "mettle", "--tasks", "ave", "--preset", "smoke", "--device", "cpu"]
    run += ["--set", "measure.enabled=false"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "bench"]
    done = subprocess.run([*torchrun, *run, "--out", str(tmp_path / "ddp")], cwd=REPO, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert main([*run, "--out", str(tmp_path / "one")]) == 0
    (ddp,) = ResultsStore(tmp_path / "ddp").load().records  # rank 0 alone wrote
    (one,) = ResultsStore(tmp_path / "one").load().records
    assert ddp["status"] == one["status"] == "ok" and ddp["metrics"].keys() == one["metrics"].keys()
    for key, value in one["metrics"].items():
        assert abs(ddp["metrics"][key] - value) <= METRIC_TOL, (key, ddp["metrics"][key], value)
    assert json.dumps(ddp["config"], sort_keys=True) == json.dumps(one["config"], sort_keys=True)


def test_multi_objective_trials_sample_the_space_under_a_memory_cap(tmp_path):
    args = in_process(tmp_path, "mo", "--grid", "mettle.num_tokens=1,2,4,8", "--trials", "3")
    args += ["--objectives", "accuracy:max,train_mem_bytes_est:min", "--max-memory", "1000"]
    assert main(args) == 0
    study = optuna.load_study(study_name="mo", storage=make_storage(None, tmp_path))
    assert isinstance(study.sampler, optuna.samplers.NSGAIISampler) or len(study.directions) == 2
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(done) == 3 and all(len(t.values) == 2 for t in done)
    for t in done:  # 1000 bytes is below any run: every trial is infeasible by its measured memory
        excess = t.system_attrs["constraints:train_mem_bytes_est"]
        assert excess == pytest.approx(t.values[1] - 1000) and excess > 0
    records = study_records(tmp_path, "mo")
    assert len(records) == 3 and all(r["command"] == shlex.join(["python", "-m", "bench", *args]) for r in records)


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_every_shipped_study_resolves_at_every_grid_point(path):
    data = load_study_file(path)
    spec = SweepSpec(
        data["method"], data["task"], data["grid"], data.get("preset", "tiny"), data.get("set", []), study=data["study"]
    )
    assert spec.study == path.stem  # tables and plots are named after the file
    for point in product(*spec.grid.values()):
        pairs = [f"{k}={v}" for k, v in zip(spec.grid, point, strict=True)]
        (run,) = resolve(RunPlan([spec.method], [spec.task], spec.preset, overrides=[*spec.overrides, *pairs]))
        for key, value in zip(spec.grid, point, strict=True):
            section, field_name = key.split(".")
            assert getattr(run.method_cfg if section == spec.method else run.task_cfg, field_name) == value


@pytest.mark.parametrize(
    ("flags", "name"),
    [
        ([], "mettle_mti"),
        (["--task", "avs_ms3"], "mettle_mti_avs_ms3"),
        (["--preset", "smoke"], "mettle_mti_smoke"),
        (["--task", "avs_ms3", "--preset", "smoke"], "mettle_mti_avs_ms3_smoke"),
        (["--task", "avs_ms3", "--study", "mine"], "mine"),
    ],
)
def test_a_study_file_on_another_task_or_preset_is_another_study(flags, name):
    """Running a study file's grid on each of several tasks must not make one study whose
    BruteForce sampler counts the first task's points as done on the next."""
    path = REPO / "bench" / "studies" / "mettle_mti.toml"
    args = build_parser().parse_args(["sweep", "--study-file", str(path), *flags])
    args.command_line = "cmd"
    assert sweep_spec(args).study == name


def test_a_mettle_study_file_runs_its_whole_grid(tmp_path):
    """The MTI study (segmentation, three values) end to end on the smoke preset; its records
    carry each value and the study's name with the preset it ran on."""
    path = REPO / "bench" / "studies" / "mettle_mti.toml"
    args = ["sweep", "--study-file", str(path), "--preset", "smoke", "--device", "cpu", "--seeds", "0"]
    fast = ["--set", "measure.enabled=false", "--set", "train.epochs=1", "--objectives", "miou:max"]
    assert main([*args, *fast, "--out", str(tmp_path)]) == 0
    records = study_records(tmp_path, "mettle_mti_smoke")
    assert sorted(r["config"]["method"]["mti"] for r in records) == ["attention", "film", "off"]
    assert all(r["status"] == "ok" and r["task"] == "avs_s4" for r in records)
