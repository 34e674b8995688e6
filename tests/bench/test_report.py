import pytest

from bench.report import markdown, paper_table, pareto_front, summarize, write_tables


def _record(method: str, seed: int, acc: float, mem: float, step: float) -> dict:
    return {
        "method": method,
        "task": "ave",
        "preset": "smoke",
        "source": "synthetic",
        "seed": seed,
        "status": "ok",
        "metrics": {"accuracy": acc},
        "efficiency": {"train_mem_bytes_est": mem, "train_step_s": step, "activation_bytes": mem / 2},
    }


RECORDS = [
    _record("lavish", 0, 60.0, 400.0, 0.4),
    _record("lavish", 1, 62.0, 400.0, 0.6),
    _record("mettle", 0, 70.0, 100.0, 0.1),
    _record("mettle", 1, 74.0, 100.0, 0.1),
    {"method": "full", "task": "ave", "preset": "smoke", "source": "synthetic", "seed": 0, "status": "oom"},
]


def test_pareto_front_keeps_non_dominated_points():
    points = [(1.0, 50.0), (2.0, 40.0), (3.0, 70.0), (3.0, 60.0), (5.0, 70.0)]
    assert pareto_front(points) == [(1.0, 50.0), (3.0, 70.0)]


def test_summarize_means_stds_and_ratios_against_lavish():
    s = summarize(RECORDS).set_index("method")
    assert s.loc["mettle", "metric.accuracy"] == pytest.approx(72.0)
    assert s.loc["mettle", "metric.accuracy.std"] == pytest.approx(2.0)
    assert s.loc["mettle", "mem_vs_ref"] == pytest.approx(0.25)
    assert s.loc["mettle", "time_vs_ref"] == pytest.approx(0.2)
    assert "full" not in s.index  # failed runs are kept out of the table


def test_rows_group_by_task_in_first_seen_order_after_a_partial_rerun():
    def on(task: str, method: str, seed: int) -> dict:
        return _record(method, seed, 50.0, 100.0, 0.1) | {"task": task}

    records = [on(t, m, 0) for t in ("avvp", "ave") for m in ("frozen", "mettle")]
    records += [on("ave", "lavish", 0), on("avvp", "lavish", 0), on("avvp", "frozen", 1)]  # appended later
    s = summarize(records)
    assert list(zip(s["task"], s["method"], strict=True)) == [
        ("avvp", "frozen"),
        ("avvp", "mettle"),
        ("avvp", "lavish"),
        ("ave", "frozen"),
        ("ave", "mettle"),
        ("ave", "lavish"),
    ]
    assert s.attrs["reference"] == "lavish" and list(s["seeds"]) == [2, 1, 1, 1, 1, 1]


def test_tables_mark_the_best_and_write_three_formats(tmp_path):
    table = write_tables(RECORDS, tmp_path)
    assert list(table["method"]) == ["lavish", "mettle"]
    md = (tmp_path / "tables" / "results.md").read_text()
    assert "**72.00 ± 2.00**" in md and "Ratios are relative to `lavish`" in md
    assert "\\textbf{72.00 $\\pm$ 2.00}" in (tmp_path / "tables" / "results.tex").read_text()
    assert "metric.accuracy" in (tmp_path / "tables" / "results.csv").read_text()


def test_tables_name_the_avs_protocol_of_their_rows(tmp_path):
    def avs(seed: int, task_cfg: dict) -> dict:
        r = _record("mettle", seed, 0.0, 100.0, 0.1) | {"task": "avs_s4", "config": {"task": task_cfg}}
        r["metrics"] = {"miou": 40.0, "fscore": 60.0}
        return r

    records = [*RECORDS, avs(0, {"protocol": "avsbench", "eval_batch_size": 4})]
    write_tables(records, tmp_path)
    note = "AVS mIoU and F-score: `avsbench` (batches of 4 videos) protocol."
    assert note in (tmp_path / "tables" / "results.md").read_text()
    assert note in (tmp_path / "tables" / "results_avs_s4.md").read_text()
    assert "AVS" not in (tmp_path / "tables" / "results_ave.md").read_text()
    write_tables([*records, avs(1, {})], tmp_path)  # a record from before the option: per video
    assert (
        "`avsbench` (batches of 4 videos) and `per_video` protocol."
        in (tmp_path / "tables" / "results_avs_s4.md").read_text()
    )


def test_markdown_renders_header_rule_and_rows():
    table = paper_table(summarize(RECORDS))
    lines = markdown(table).splitlines()
    assert lines[0].startswith("| task | method |") and lines[1].startswith("|---|")
    assert len(lines) == 4


def test_tuned_runs_keep_the_best_val_candidate_per_seed():
    def tuned(lr: str, seed: int, val: float, test: float) -> dict:
        r = _record("mettle", seed, test, 100.0, 0.1)
        r["metrics"]["val_accuracy"] = val
        r["tags"] = {"tuned": "train.lr", "value": lr}
        return r

    records = [
        tuned("1e-3", 0, 50.0, 90.0),
        tuned("1e-2", 0, 60.0, 10.0),
        tuned("1e-3", 1, 70.0, 30.0),
        tuned("1e-2", 1, 65.0, 99.0),
    ]
    s = summarize(records).set_index("method")
    # chosen on val: seed 0 -> 1e-2 (test 10), seed 1 -> 1e-3 (test 30); test never decides
    assert s.loc["mettle", "metric.accuracy"] == pytest.approx(20.0)
    assert s.loc["mettle", "seeds"] == 2
    assert s.loc["mettle", "tuned"] == "train.lr=1e-2 train.lr=1e-3"
