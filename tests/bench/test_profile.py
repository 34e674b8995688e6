"""`python -m bench profile` and `check-budgets` on the smoke preset (seconds each)."""

import os
import re
import signal
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from bench.budgets import load, write
from bench.cli import main, print_profile
from bench.profile import Point, ProfileSpec, isolated_point, parse_size, parse_sweep
from bench.report.formats import MIB
from bench.report.profile import console_table, display_table, profile_frame, reference_table, with_ratios, write_report
from bench.results import ResultsStore, Status

REPO = Path(__file__).resolve().parents[2]
PROFILE = ["profile", "--preset", "smoke", "--device", "cpu", "--warmup", "0", "--repeats", "1"]


@pytest.fixture(scope="module")
def profiled(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("profile")
    assert main([*PROFILE, "--methods", "lavish,mettle", "--out", str(out)]) == 0
    return out


def test_profile_writes_records_table_and_figure(profiled):
    records = ResultsStore(profiled, "profile.jsonl").load().records
    assert [r["method"] for r in records] == ["lavish", "mettle"]
    assert all(r["status"] == "ok" and r["command"].startswith("python -m bench profile") for r in records)
    lavish, mettle = records[0]["efficiency"], records[1]["efficiency"]
    assert 0 < mettle["memory_floor_bytes"] <= mettle["activation_bytes"]
    parts = {k: v for k, v in mettle.items() if k.startswith("params_")}
    assert set(parts) == {"params_lcd", "params_aggregation", "params_pool", "params_mti", "params_head"}
    assert sum(parts.values()) == mettle["trainable_params"]
    assert mettle["trainable_params"] - parts["params_head"] == mettle["encoder_trainable_params"]
    assert "memory_floor_bytes" not in lavish and not any(k.startswith("params_") for k in lavish)  # no hooks
    assert {"train_mem_bytes_est", "train_step_s", "flops_per_step", "trainable_params"} <= set(mettle)
    assert (profiled / "profile.png").stat().st_size > 0


def test_table_has_ratio_and_floor_columns(profiled):
    lines = (profiled / "profile.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| method"))
    columns = ("mem / ref", "time / ref", "floor (MiB)", "act / floor", "GFLOPs/step", "samples/s", "lcd params (M)")
    for column in columns:
        assert column in header
    lavish = next(line for line in lines if line.startswith("| lavish"))
    assert lavish.split(" | ")[header.split(" | ").index("mem / ref")] == "1.0"
    assert "params / ref" in header
    against = lines.index("## Against `lavish` (the Mettle paper's Fig. 1c)")
    header = lines[against + 2]
    for column in ("trainable params (M)", "params / lavish", "memory / lavish", "step (ms)", "time / lavish"):
        assert column in header
    assert lines[against + 4].startswith("| lavish") and lines[against + 5].startswith("| mettle")


def test_reference_table_gives_each_figure_and_its_ratio_to_the_reference():
    """As the paper's Fig. 1c against DG-SCT: the CUDA peak where measured, else the estimate."""
    rows = [
        {"method": "dgsct", "trainable_params": 2e8, "train_mem_bytes_est": 8 * MIB, "train_step_s": 2.0},
        {"method": "mettle", "trainable_params": 1e6, "train_mem_bytes_est": 2 * MIB, "train_step_s": 0.5},
    ]
    df = pd.DataFrame([{"batch": 1, "T": 10, **r} for r in rows])
    table = reference_table(with_ratios(df, "dgsct"), "dgsct")
    assert list(table.iloc[1]) == ["mettle", "1", "10", "1.0", "0.005", "2.0", "0.25", "500.0", "0.25"]
    assert table.columns[5] == "train mem est. (MiB)" and list(table.iloc[0])[4] == "1.0"
    df["cuda_peak_allocated_bytes"] = [4 * MIB, 3 * MIB]
    table = reference_table(with_ratios(df, "dgsct"), "dgsct")
    assert table.columns[5] == "CUDA peak alloc. (MiB)" and list(table.iloc[1])[5:7] == ["3.0", "0.75"]
    no_reference = reference_table(with_ratios(df, "lavish"), "lavish")  # lavish was not profiled
    assert list(no_reference.iloc[1]) == ["mettle", "1", "10", "1.0", "", "3.0", "", "500.0", ""]


def test_the_console_table_fits_80_columns_with_the_paper_towers_figures(monkeypatch, capsys):
    """The widest figures a CPU profile of the paper preset prints (DG-SCT's 188.5 M parameters,
    memory in GiB, steps of seconds) stay whole in an 80-column terminal."""
    rows = [
        {"method": "dgsct", "trainable_params": 196_442_040, "train_mem_bytes_est": 52_000 * MIB, "train_step_s": 31.0},
        {"method": "mettle", "trainable_params": 7_304_796, "train_mem_bytes_est": 5_660 * MIB, "train_step_s": 7.3},
    ]
    df = pd.DataFrame([{"batch": 16, "T": 10, **r} for r in rows])
    table = console_table(with_ratios(df, "dgsct"), "dgsct")
    assert list(table.columns) == ["method", "B", "T", "params M", "params/ref", "mem MiB", "mem/ref", "step ms",
                                   "time/ref"]  # fmt: skip
    assert list(table.iloc[1]) == ["mettle", "16", "10", "7.305", "0.037", "5660.0", "0.109", "7300.0", "0.235"]
    monkeypatch.setenv("COLUMNS", "80")
    print_profile(table, "dgsct", Console(stderr=True))
    out = capsys.readouterr().out
    assert "7300.0" in out and re.search(r"params M +/ref +mem MiB +/ref +step ms +/ref", out)
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    df["cuda_peak_allocated_bytes"] = [40_000 * MIB, 4_000 * MIB]
    assert list(console_table(with_ratios(df, "dgsct"), "dgsct").columns)[5:7] == ["CUDA MiB", "mem/ref"]


def _dies_after_the_memory_pass(point, conn) -> None:
    """A point worker that sends its memory figures, then is killed as the kernel's
    out-of-memory killer would kill it (SIGKILL, no Python exception)."""
    conn.send(("partial", {"activation_bytes": 1234, "train_mem_bytes_est": 5678}))
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_point_keeps_its_memory_figures_and_the_profile_goes_on():
    spec = ProfileSpec(methods=["full"], preset="smoke", device="cpu")
    record = isolated_point(
        Point(spec, "full", 1, 10, "cmd", [], {"sha": "abc", "dirty": False}), worker=_dies_after_the_memory_pass
    ).to_dict()
    assert record["status"] == "killed" and record["method"] == "full" and record["kind"] == "profile"
    assert "SIGKILL" in record["error"] and "after the memory pass" in record["error"]
    assert record["efficiency"] == {"activation_bytes": 1234, "train_mem_bytes_est": 5678}
    row = profile_frame([record]).iloc[0]
    assert row["method"] == "full" and row["train_mem_bytes_est"] == 5678


def test_sweep_gives_one_record_per_point(tmp_path):
    assert main([*PROFILE, "--methods", "mettle", "--sweep", "batch-size=1,2", "--out", str(tmp_path)]) == 0
    records = ResultsStore(tmp_path, "profile.jsonl").load().records
    assert [(r["batch_size"], r["sweep"]) for r in records] == [(1, "batch-size"), (2, "batch-size")]
    assert (tmp_path / "profile.png").exists()


def test_one_segment_profiles_on_ave(tmp_path):
    assert main([*PROFILE, "--methods", "mettle", "--segments", "1", "--out", str(tmp_path)]) == 0
    records = ResultsStore(tmp_path, "profile.jsonl").load().records
    assert [(r["method"], r["status"], r["segments"]) for r in records] == [("mettle", "ok", 1)]


def test_budget_reports_the_largest_batch_on_cpu(tmp_path):
    assert main([*PROFILE, "--methods", "mettle", "--budget", "64MiB", "--out", str(tmp_path)]) == 0
    eff = ResultsStore(tmp_path, "profile.jsonl").load().records[0]["efficiency"]
    assert eff["budget_per_sample_bytes"] > 0
    fixed, per = eff["budget_fixed_bytes"], eff["budget_per_sample_bytes"]
    assert fixed + eff["budget_max_batch"] * per <= 64 * 2**20 < fixed + (eff["budget_max_batch"] + 1) * per


def test_a_profile_where_every_point_failed_still_reports(tmp_path):
    """All points erroring (the first CUDA budget search did) must end in a report naming
    each failure, not in a pandas KeyError."""
    spec = ProfileSpec(methods=["mettle", "lavish"], preset="smoke", device="cpu")
    records = [
        Point(spec, m, 1, 10, "cmd", [], {"sha": "abc", "dirty": False})
        .record(Status.ERROR, f"ValueError: {m}", {})
        .to_dict()
        for m in spec.methods
    ]
    table = display_table(with_ratios(profile_frame(records), spec.reference))
    assert table.empty and list(table.columns) == ["method", "batch", "T"]
    (md,) = write_report(records, spec, tmp_path, "cmd")
    text = md.read_text()
    assert "no finished points" in text
    assert "- mettle (batch 1, T 10): error: ValueError: mettle" in text and "ValueError: lavish" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [("24GiB", 24 * 2**30), ("512MiB", 512 * 2**20), ("1e9", 10**9), ("2GB", 2 * 10**9), ("1.5 KiB", 1536)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["24 GiBs", "", "-1GiB", "GiB", "0"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="bad size"):
        parse_size(text)


def test_parse_sweep():
    assert parse_sweep("segments=1,5,10") == ("segments", [1, 5, 10])
    with pytest.raises(ValueError, match="unknown key 'batch'"):
        parse_sweep("batch=1,2")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--methods", "mettle,nope"], "nope"),
        (["--sweep", "width=1,2"], "width"),
        (["--budget", "24 parsecs"], "24 parsecs"),
        (["--reference", "lavsh"], "lavsh"),
    ],
)
def test_bad_usage_exits_2_naming_the_item(tmp_path, capsys, args, named):
    assert main([*PROFILE, "--out", str(tmp_path), *args]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "profile.jsonl").exists()


@pytest.mark.slow
def test_committed_budgets_hold_on_smoke_and_tiny():
    """CI fails here when a change inflates a method's memory on smoke or tiny."""
    assert main(["check-budgets", "--budgets", str(REPO / "results" / "budgets.toml")]) == 0


def test_check_budgets_fails_naming_the_method_over_budget(tmp_path, capsys):
    budgets = tmp_path / "budgets.toml"
    base = ["check-budgets", "--budgets", str(budgets), "--presets", "smoke", "--methods", "frozen,mettle"]
    assert main([*base, "--update"]) == 0
    assert main(base) == 0  # the measured figures are within their own budget
    figures, tolerance = load(budgets)
    assert tolerance == 0.05
    figures["smoke"]["mettle"]["activation_bytes"] = 1
    write(budgets, figures, tolerance)
    capsys.readouterr()
    assert main(base) == 1
    assert "over budget: mettle;" in capsys.readouterr().err
