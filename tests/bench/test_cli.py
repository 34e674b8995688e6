"""End-to-end checks of `python -m bench` on the smoke preset (seconds each)."""

import json
import shlex
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from commands import BenchProcess

from bench.cli import main
from bench.plan import RunPlan, resolve
from bench.presets import get_preset
from bench.results import ResultsStore
from bench.runner import weights_changed
from bench.weights import file_digest

REPO = Path(__file__).resolve().parents[2]
# one process: runs in worker processes (bench.workers, tests/bench/test_workers.py) give the same records
RUN = ["run", "--methods", "frozen,full", "--tasks", "ave", "--preset", "smoke", "--device", "cpu", "--workers", "1"]
EFFICIENCY_KEYS = {
    "trainable_params",
    "encoder_trainable_params",
    "total_params",
    "flops_per_step",
    "train_step_s",
    "train_samples_per_s",
    "infer_samples_per_s",
    "activation_bytes",
    "train_mem_bytes_est",
}


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    assert main([*RUN, "--out", str(out)]) == 0
    return out


def _records(out: Path) -> list[dict]:
    return ResultsStore(out).load().records


def test_run_writes_records_tables_and_figures(smoke_out):
    records = _records(smoke_out)
    assert sorted((r["method"], r["status"]) for r in records) == [("frozen", "ok"), ("full", "ok")]
    for r in records:
        assert "accuracy" in r["metrics"]
        assert EFFICIENCY_KEYS <= set(r["efficiency"])
        assert r["config"]["train"]["epochs"] == 1 and r["env"]["torch"] and "sha" in r["git"]
        assert r["command"] == shlex.join(["python", "-m", "bench", *RUN, "--out", str(smoke_out)])
    for ext in ("md", "tex", "csv"):
        assert (smoke_out / "tables" / f"results.{ext}").is_file()
    assert list((smoke_out / "figures").glob("*.png"))


def test_full_saves_several_times_the_activations_of_frozen(smoke_out):
    eff = {r["method"]: r["efficiency"] for r in _records(smoke_out)}
    assert eff["full"]["activation_bytes"] > 4 * eff["frozen"]["activation_bytes"]
    assert eff["frozen"]["encoder_trainable_params"] == 0
    head = eff["frozen"]["trainable_params"]  # frozen trains the head alone
    assert eff["full"]["trainable_params"] - eff["full"]["encoder_trainable_params"] == head
    assert eff["full"]["encoder_trainable_params"] + head == eff["full"]["total_params"]


def test_rerun_skips_finished_runs_and_force_reruns(smoke_out, capsys):
    assert main([*RUN, "--out", str(smoke_out)]) == 0
    err = capsys.readouterr().err
    assert err.count("skip ") == 2 and "already finished" in err
    assert len(_records(smoke_out)) == 2
    assert main([*RUN, "--out", str(smoke_out), "--force"]) == 0
    records = _records(smoke_out)
    assert len(records) == 4
    # same seed, same config: identical metrics on CPU
    by_method = {}
    for r in records:
        by_method.setdefault(r["method"], []).append(r["metrics"])
    assert all(a == b for a, b in by_method.values())


def _save_tower(path: Path, role: str, seed: int) -> str:
    from safetensors.torch import save_file

    from bench.towers import build_backbone

    smoke = get_preset("smoke")
    torch.manual_seed(seed)
    state = build_backbone(getattr(smoke, role), smoke.shape).model.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return file_digest(path)


def test_records_name_the_weights_each_tower_was_built_from_and_reruns_follow_them(tmp_path, capsys):
    visual = tmp_path / "visual.safetensors"
    digest = _save_tower(visual, "visual", 0)
    run = ["run", "--tasks", "ave", "--preset", "smoke", "--set", "measure.enabled=false", "--workers", "1"]
    run += ["--out", str(tmp_path)]
    assert main([*run, "--methods", "frozen,lavish", "--set", f"towers.visual={visual}"]) == 0
    weights = {r["method"]: r["weights"] for r in _records(tmp_path)}
    tower = {"arch": "swinv2", "params": 429383}
    assert weights["frozen"] == {
        "audio": {
            "name": "random",
            "origin": "random",
            "file": None,
            "sha256": None,
            "arch": "htsat",
            "params": 309727,
        },
        "visual": {"name": str(visual), "origin": "explicit", "file": str(visual), "sha256": digest, **tower},
    }
    # LAVisH shares the given visual tower
    assert weights["lavish"] == {
        "shared": {"name": str(visual), "origin": "explicit", "file": str(visual), "sha256": digest, **tower}
    }
    capsys.readouterr()
    assert main([*run, "--methods", "frozen,lavish", "--set", f"towers.visual={visual}"]) == 0
    assert capsys.readouterr().err.count("skip ") == 2
    changed = _save_tower(visual, "visual", 1)  # new weights under the same path: the config is unchanged
    assert changed != digest
    assert main([*run, "--methods", "frozen,lavish", "--set", f"towers.visual={visual}"]) == 0
    err = capsys.readouterr().err
    assert err.count("rerun ") == 2 and "tower weights differ" in err and "skip " not in err
    latest = _records(tmp_path)[-2:]
    assert [r["weights"]["shared" if r["method"] == "lavish" else "visual"]["sha256"] for r in latest] == [changed] * 2
    legacy = {k: v for k, v in _records(tmp_path)[-1].items() if k != "weights"}  # records from before weights existed
    assert not weights_changed(legacy, resolve(RunPlan(["lavish"], ["ave"], "smoke"))[0])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--methods", "nope"], ["unknown method 'nope'", "frozen", "full"]),
        (["--methods", "fulll"], ["did you mean 'full'"]),
        (["--tasks", "nope"], ["unknown task 'nope'", "ave"]),
        (["--set", "no.such.key=1"], ["unknown section 'no'", "train"]),
        (["--set", "train.lr=abc"], ["train.lr='abc' is not a number"]),
        (["--set", "train.nope=1"], ["unknown key 'nope'", "epochs"]),
        (["--preset", "huge"], ["unknown preset 'huge'", "smoke"]),
        (["--set", "towers.audio=/no/such/tower.pth"], ["towers.audio='/no/such/tower.pth': no such file", "random"]),
        (["--data", "ave=/no/such/dir"], ["--data ave=/no/such/dir: not a directory"]),
    ],
)
def test_bad_usage_exits_2_naming_the_item(args, expected, tmp_path, capsys):
    base = ["run", "--methods", "frozen", "--tasks", "ave", "--preset", "smoke", "--out", str(tmp_path)]
    assert main(base + args) == 2
    err = " ".join(capsys.readouterr().err.split())
    for text in expected:
        assert text in err
    assert not (tmp_path / "runs.jsonl").exists()


def prepared_ave(root: Path) -> Path:
    """A prepared AVE tree, release format: 10-segment media; vidA has two rows, in train and test."""
    rows = [
        "Church bell&vidA&good&2&5",
        "Dog barking&vidB&good&0&10",
        "Banjo&vidC&good&9&10",
        "Dog barking&vidA&good&0&3",
    ]
    for name, lines in (("Annotations.txt", rows), ("trainSet.txt", rows[:2]), ("valSet.txt", rows[2:3]),
                        ("testSet.txt", rows[3:])):  # fmt: skip
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("".join(f"{r}\n" for r in lines))
    (root / "media.json").write_text('{"dataset": "ave", "sample_rate": 16000, "size": 24}')
    for sub, shape, dtype in (("frames", (10, 24, 24, 3), np.uint8), ("audio", (10, 16000), np.int16)):
        (root / sub).mkdir()
        for video in ("vidA", "vidB", "vidC"):
            np.save(root / sub / f"{video}.npy", np.zeros(shape, dtype))
    return root


def test_a_real_data_run_records_the_clips_segment_count_not_the_presets(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one console line per message
    data = prepared_ave(tmp_path / "ave")
    run = ["run", "--methods", "frozen", "--tasks", "ave", "--preset", "tiny", "--device", "cpu"]
    run += ["--data", f"ave={data}", "--set", "train.epochs=1", "--set", "measure.enabled=false"]
    assert get_preset("tiny").data["segments"] == 5
    assert main([*run, "--out", str(tmp_path / "out")]) == 0
    (record,) = _records(tmp_path / "out")
    assert record["status"] == "ok" and record["config"]["task"]["segments"] == 10
    err = capsys.readouterr().err
    assert err.count(f"warning: {data / 'Annotations.txt'}: 1 video id(s) with more than one row") == 1
    assert main([*run, "--set", "ave.segments=5", "--out", str(tmp_path / "bad")]) == 2
    assert "ave.segments=5: real ave data has segments=10" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "runs.jsonl").exists()


def test_sigkill_mid_run_keeps_finished_records_and_rerun_completes(tmp_path, capsys):
    run = [*RUN, "--seeds", "0,1", "--set", "measure.enabled=false", "--out", str(tmp_path)]
    proc = BenchProcess(run, tmp_path / "stderr.txt", REPO)  # tests/commands.py
    path = tmp_path / "runs.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert 1 <= len(done) < 4 and all(r["status"] == "ok" for r in done)
    capsys.readouterr()
    assert main(run) == 0
    records = _records(tmp_path)
    assert sorted((r["method"], r["seed"]) for r in records) == [("frozen", 0), ("frozen", 1), ("full", 0), ("full", 1)]
    assert capsys.readouterr().err.count("skip ") == len(done)


def test_list_prints_methods_tasks_presets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("frozen", "full", "ave", "smoke", "tiny", "paper"):
        assert name in out


def test_tune_runs_every_candidate_and_the_table_keeps_one_row(tmp_path):
    args = [
        "run",
        "--methods",
        "frozen",
        "--tasks",
        "ave",
        "--preset",
        "smoke",
        "--device",
        "cpu",
        "--set",
        "measure.enabled=false",
        "--tune",
        "train.lr=1e-3,1e-2",
        "--workers",
        "1",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    records = _records(tmp_path)
    assert sorted(r["config"]["train"]["lr"] for r in records) == [1e-3, 1e-2]
    assert {r["tags"]["candidate"] for r in records} == {"train.lr=1e-3", "train.lr=1e-2"}
    csv = (tmp_path / "tables" / "results.csv").read_text().splitlines()
    assert len(csv) == 2  # header + one row: the val-selected candidate


def test_every_record_names_the_commit_the_invocation_started_at(tmp_path, monkeypatch):
    """A commit landing mid-run must not relabel the later runs of the same invocation."""
    import bench.runner

    shas = iter(["started", "committed-meanwhile", "later"])
    monkeypatch.setattr(bench.runner, "git_state", lambda out_dir: {"sha": next(shas), "dirty": False})
    assert main([*RUN, "--set", "measure.enabled=false", "--out", str(tmp_path)]) == 0
    assert [r["git"]["sha"] for r in _records(tmp_path)] == ["started", "started"]


def test_a_tower_named_on_the_hub_runs_from_the_cache_offline(tmp_path, monkeypatch, capsys):
    """--set towers.visual=hf-hub:... resolves from a pre-populated Hugging Face cache with
    HF_HUB_OFFLINE=1 and the record names the cached file; a name the cache lacks exits 2
    before any run, saying how to fetch it."""
    cache = tmp_path / "hub"
    repo = "timm/swinv2_tiny_window8_256.ms_in1k"
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("a" * 40)
    digest = _save_tower(snapshot / "model.safetensors", "visual", 2)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = [*RUN[:2], "frozen", *RUN[3:], "--set", "measure.enabled=false", "--out", str(tmp_path / "out")]
    assert main([*run, "--set", f"towers.visual=hf-hub:{repo}"]) == 0
    (record,) = _records(tmp_path / "out")
    assert record["weights"]["visual"]["origin"] == "hub" and record["weights"]["visual"]["sha256"] == digest
    assert record["weights"]["visual"]["file"] == str(snapshot / "model.safetensors")
    capsys.readouterr()
    assert main([*run, "--set", "towers.visual=hf-hub:timm/not_cached"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "not in the Hugging Face cache" in err and "hf download timm/not_cached" in err
    assert len(_records(tmp_path / "out")) == 1


def test_the_summary_fits_80_columns_and_the_default_out_is_ignored_by_git(tmp_path, monkeypatch, capsys):
    from bench.cli import DEFAULT_OUT

    assert DEFAULT_OUT == Path("runs") and "/runs/" in (REPO / ".gitignore").read_text().splitlines()
    monkeypatch.setenv("COLUMNS", "80")
    args = ["run", "--methods", "frozen,lavish,mettle,lora,full", "--tasks", "avvp", "--preset", "smoke"]
    args += ["--workers", "1"]
    assert main([*args, "--set", "measure.warmup=0", "--set", "measure.repeats=1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table = out[: out.index("records:")] if "records:" in out else out
    assert "avvp: seg_type_av" in table and "mettle" in table
    assert "…" not in table and max(len(line) for line in table.splitlines()) <= 80


def test_a_plan_file_runs_each_methods_candidates_and_the_tables_keep_the_chosen_one(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(
        'preset = "smoke"\ntasks = ["ave", "avvp"]\nseeds = [0]\nset = ["measure.enabled=false"]\n'
        '[candidates]\nfrozen = [[]]\nlora = [["lora.r=2"], ["lora.r=4", "train.lr=1e-2"]]\n'
    )
    assert main(["run", "--plan", str(plan), "--workers", "1", "--out", str(tmp_path / "out")]) == 0
    records = _records(tmp_path / "out")
    assert sorted((r["task"], r["method"], r["tags"]["candidate"]) for r in records) == [
        (task, method, candidate)
        for task in ("ave", "avvp")
        for method, candidate in (("frozen", "defaults"), ("lora", "lora.r=2"), ("lora", "lora.r=4 train.lr=1e-2"))
    ]
    assert {r["tags"]["plan"] for r in records} == {str(plan)}
    assert {r["config"]["method"]["r"] for r in records if r["method"] == "lora"} == {2, 4}
    selection = (tmp_path / "out" / "tables" / "selection.md").read_text()
    assert selection.count("| lora |") == 2 and selection.count("**yes**") == 2  # frozen's one, lora's one
    assert "chosen on val" in (tmp_path / "out" / "tables" / "results.md").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text('[candidates]\nlora = ["lora.r=2"]\n')
    assert main(["run", "--plan", str(bad), "--out", str(tmp_path / "out")]) == 2


@pytest.mark.parametrize("command", [["run", "--preset", "smoke"], ["profile", "--preset", "smoke"], ["table"]])
def test_an_output_folder_under_a_file_exits_2_before_any_work(command, tmp_path, capsys):
    blocker = tmp_path / "prof"
    blocker.write_text("a file, not a folder")
    assert main([*command, "--out", str(blocker / "paper-T10")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--out {blocker / 'paper-T10'}: {blocker} is a file, not a folder" in err
    assert blocker.read_text() == "a file, not a folder"


def test_a_runs_tables_hold_every_record_in_its_out(tmp_path, capsys):
    """A method added to an OUT joins the methods already there: OUT's tables and summary are
    all of OUT's records, as `bench table --out OUT` writes them, not only the last command's."""
    run = ["run", "--tasks", "ave", "--preset", "smoke", "--set", "measure.enabled=false", "--workers", "1"]
    run += ["--out", str(tmp_path)]
    assert main([*run, "--methods", "frozen"]) == 0
    capsys.readouterr()
    assert main([*run, "--methods", "lora"]) == 0
    summary = capsys.readouterr().out
    assert "frozen" in summary and "lora" in summary
    csv = (tmp_path / "tables" / "results.csv").read_text().splitlines()
    assert sorted(line.split(",")[3] for line in csv[1:]) == ["frozen", "lora"]
    assert csv[0].split(",")[3] == "method"
