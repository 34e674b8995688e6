import pytest

from bench.report import candidate_selection, markdown, paper_table, pareto_front, summarize, write_tables


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


def test_candidates_are_chosen_by_mean_val_rank_over_tasks_never_by_test(tmp_path):
    """Per method, the candidate with the lowest mean rank of its val metric (mean over seeds)
    over the tasks: here C, by hand. A has the best test numbers and is not chosen; D is best
    on AVE's val but failed on AVVP, so it cannot be chosen."""

    def run(candidate: str, task: str, seed: int, val: float, test: float) -> dict:
        metric = "accuracy" if task == "ave" else "seg_type_av"
        r = _record("mettle", seed, test, 100.0, 0.1) | {"task": task, "tags": {"candidate": candidate}}
        r["metrics"] = {metric: test, f"val_{metric}": val}
        return r

    vals = {  # candidate -> {task: (val seed 0, val seed 1)}
        "A": {"ave": (50, 60), "avvp": (40, 40)},  # means 55, 40
        "B": {"ave": (70, 70), "avvp": (30, 30)},  # 70, 30
        "C": {"ave": (60, 70), "avvp": (40, 40)},  # 65, 40
    }
    records = [
        run(c, task, seed, val, 99.0 if c == "A" else 10.0 * (seed + 1))
        for c, by_task in vals.items()
        for task, pair in by_task.items()
        for seed, val in enumerate(pair)
    ]
    records += [run("D", "ave", seed, 99.0, 5.0) for seed in (0, 1)]
    records.append(run("D", "avvp", 0, 0.0, 0.0) | {"status": "error"})
    selection = candidate_selection(records).set_index("candidate")
    # AVE ranks: B 1, C 2, A 3 (D, incomplete, is not ranked); AVVP ties A and C at 1.5, B 3
    assert selection.loc["C", "avvp.rank"] == selection.loc["A", "avvp.rank"] == 1.5
    assert list(selection["chosen"]) == [False, False, True, False]
    assert not selection.loc["D", "complete"]
    s = summarize(records).set_index(["task", "method"])
    assert s.loc[("ave", "mettle"), "metric.accuracy"] == pytest.approx(15.0)  # C's test, seeds 0 and 1
    assert s.loc[("ave", "mettle"), "candidate"] == "C" and s.loc[("ave", "mettle"), "seeds"] == 2
    write_tables(records, tmp_path)
    md = (tmp_path / "tables" / "selection.md").read_text()
    assert "| mettle | C | 65.00 / 15.00 (#2) | 40.00 / 15.00 (#1.5) | 1.75 | **yes** |" in md
    assert "| mettle | D | 99.00 / 5.00 | failed |  |  |" in md
    assert "chosen on val" in (tmp_path / "tables" / "results.md").read_text()
