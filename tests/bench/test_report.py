import json

import pytest

from bench.cli import main
from bench.report import (
    candidate_selection,
    load_usable,
    markdown,
    paper_table,
    pareto_front,
    study_summary,
    summarize,
    write_figures,
    write_tables,
)
from bench.report.tables import row_labels
from bench.results import ResultsStore

DEFAULTS = {"train": {"head_lr": 0.001, "lr": 0.001}}


def _record(method: str, seed: int, acc: float, mem: float, step: float, config: dict = DEFAULTS) -> dict:
    return {
        "method": method,
        "task": "ave",
        "preset": "smoke",
        "source": "synthetic",
        "seed": seed,
        "status": "ok",
        "config": config,
        "metrics": {"accuracy": acc},
        "efficiency": {"train_mem_bytes_est": mem, "train_step_s": step, "activation_bytes": mem / 2},
    }


RECORDS = [
    _record("lavish", 0, 60.0, 400.0, 0.4),
    _record("lavish", 1, 62.0, 400.0, 0.6),
    _record("mettle", 0, 70.0, 100.0, 0.1),
    _record("mettle", 1, 74.0, 100.0, 0.1),
    {
        "method": "full",
        "task": "ave",
        "preset": "smoke",
        "source": "synthetic",
        "seed": 0,
        "status": "oom",
        "config": {},
    },
]


def test_pareto_front_keeps_non_dominated_points():
    points = [(1.0, 50.0), (2.0, 40.0), (3.0, 70.0), (3.0, 60.0), (5.0, 70.0)]
    assert pareto_front(points) == [(1.0, 50.0), (3.0, 70.0)]


def test_summarize_means_intervals_and_ratios_against_lavish():
    s = summarize(RECORDS).set_index("method")
    assert s.loc["mettle", "metric.accuracy"] == pytest.approx(72.0)
    # 70, 74: s = 2 sqrt(2), t_{0.975, 1} = 12.706205, half-width = t s / sqrt(2)
    assert s.loc["mettle", "metric.accuracy.ci"] == pytest.approx(2 * 12.706205)
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


def test_tables_mark_tied_methods_and_write_three_formats(tmp_path):
    """Two seeds each: mettle's +11 over lavish (10, 12) has a 95 % interval of +-12.71, which
    includes 0, so both are bold."""
    table = write_tables(RECORDS, tmp_path)
    assert list(table["method"]) == ["lavish", "mettle"]
    md = (tmp_path / "tables" / "results.md").read_text()
    assert "| **61.00 ± 12.71** |  |" in md and "| **72.00 ± 25.41** | +11.00 ± 12.71 |" in md
    assert "Ratios are relative to `lavish`" in md
    assert "mean ± 95 % CI half-width over n seeds (Student t" in md
    tex = (tmp_path / "tables" / "results.tex").read_text()
    assert "\\textbf{72.00 $\\pm$ 25.41} & +11.00 $\\pm$ 12.71" in tex and "$\\Delta$ vs lavish" in tex
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
        config = {"train": {"lr": candidate}}  # each candidate is a config of its own, as a plan makes it
        r = _record("mettle", seed, test, 100.0, 0.1, config) | {"task": task, "tags": {"candidate": candidate}}
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


def test_a_row_is_one_method_at_one_config_labelled_by_what_differs(tmp_path):
    """The reported case: a frozen run with --set train.head_lr=1e-1, then without. Two configs of
    one seed each are two rows, not one row of two "seeds" (6.25 ± 6.25); one seed prints its
    value alone."""
    tuned = _record("frozen", 0, 0.0, 100.0, 0.1, {"train": {"head_lr": 0.1, "lr": 0.001}})
    default = _record("frozen", 0, 12.5, 100.0, 0.1)
    table = write_tables([tuned, default, RECORDS[0], RECORDS[1]], tmp_path)
    assert list(zip(table["method"], table["config"], table["seeds"], table["value"], strict=True)) == [
        ("frozen", "train.head_lr=0.1", 1, "0.00"),
        ("frozen", "train.head_lr=0.001", 1, "12.50"),
        ("lavish", "", 2, "61.00 ± 12.71"),
    ]
    assert list(table["mem / ref"]) == [0.25, 0.25, 1.0]
    md = (tmp_path / "tables" / "results.md").read_text()
    assert "| ave | frozen | train.head_lr=0.001 | 1 | accuracy | **12.50** | -47.50 |" in md  # one seed: tied
    assert "config" in (tmp_path / "tables" / "results.csv").read_text().splitlines()[0]
    assert "config" not in write_tables(RECORDS, tmp_path)  # one config per method: no column


def test_a_method_section_is_labelled_by_the_method_name():
    configs = [{"method": {"num_tokens": n}, "train": {"lr": 0.001}} for n in (8, 16)]
    records = [_record("mettle", 0, 70.0, 100.0, 0.1, c) for c in configs]
    assert list(summarize(records)["config"]) == ["mettle.num_tokens=8", "mettle.num_tokens=16"]


def test_a_repeated_run_counts_once_its_latest_record():
    """The same key (given, or hashed from what identifies the run when absent) is one run: two
    identical records count once, and a --force rerun replaces the earlier result."""
    first, second = _record("mettle", 0, 70.0, 100.0, 0.1), _record("mettle", 1, 74.0, 100.0, 0.1)
    s = summarize([first, dict(first), second]).iloc[0]
    assert s["seeds"] == 2 and s["metric.accuracy"] == pytest.approx(72.0)
    assert s["metric.accuracy.ci"] == pytest.approx(2 * 12.706205)
    rerun = first | {"metrics": {"accuracy": 80.0}}
    assert summarize([first, second, rerun]).iloc[0]["metric.accuracy"] == pytest.approx(77.0)
    keyed = [r | {"key": "k0"} for r in (first, rerun)]  # a stored key is used as it is
    s = summarize(keyed).iloc[0]
    assert s["seeds"] == 1 and s["metric.accuracy"] == pytest.approx(80.0)


def test_figures_label_each_config_of_a_method():
    tuned = _record("frozen", 0, 0.0, 100.0, 0.1, {"train": {"head_lr": 0.1, "lr": 0.001}})
    summary = summarize([tuned, _record("frozen", 0, 12.5, 100.0, 0.1), RECORDS[0]])
    assert row_labels(summary) == ["frozen train.head_lr=0.1", "frozen train.head_lr=0.001", "lavish"]
    assert row_labels(summarize(RECORDS)) == ["lavish", "mettle"]


def test_figures_are_written_for_two_configs_of_a_method(tmp_path):
    tuned = _record("frozen", 0, 0.0, 100.0, 0.1, {"train": {"head_lr": 0.1, "lr": 0.001}})
    paths = write_figures([tuned, _record("frozen", 0, 12.5, 100.0, 0.1)], tmp_path)
    assert [p.name for p in paths] == ["results_memory_vs_metric.png", "results_memory_time_bars.png"]


def test_a_study_counts_distinct_seeds():
    """Two records of one swept point and one seed (different keys) are one seed."""

    def trial(key: str, acc: float) -> dict:
        r = _record("mettle", 0, acc, 100.0, 0.1, {"method": {"pool": "mean"}, "train": {"lr": key}})
        return r | {"key": key, "tags": {"study": "pool", "swept": "mettle.pool"}}

    summary, keys = study_summary([trial("a", 70.0), trial("b", 72.0)], "pool")
    assert keys == ["mettle.pool"] and list(summary["seeds"]) == [1]


def test_records_the_tables_cannot_read_are_bad_lines_saying_why(tmp_path):
    ok = RECORDS[0]
    records = [
        ok,
        {k: v for k, v in ok.items() if k != "metrics"},
        ok | {"seed": "zero"},
        ok | {"task": "nope"},
        {k: v for k, v in ok.items() if k != "method"},
        ok | {"config": {"train": 3}},
        {k: v for k, v in RECORDS[-1].items() if k not in ("metrics", "efficiency")},  # failed: nothing to read
    ]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    report = load_usable(ResultsStore(tmp_path))
    assert report.records == [records[0], records[-1]]
    assert [line for line, _ in report.bad_lines] == [2, 3, 4, 5, 6]
    why = [w for _, w in report.bad_lines]
    assert why[0] == "not a run record: lacks metrics"
    assert why[1] == "'seed' is 'zero', expected an integer"
    assert why[2].startswith("'task' is 'nope', not a task of this harness")
    assert why[3] == "not a run record: lacks method"
    assert why[4] == "'config' section 'train' is 3, expected a JSON object"


def test_table_and_plot_skip_a_record_lacking_fields_with_one_warning(tmp_path, capsys):
    """A valid JSON line without the fields the tables read is skipped and named by its line,
    as a torn line is; the tables come from the other records."""
    broken = {k: v for k, v in RECORDS[2].items() if k != "metrics"}
    lines = [
        json.dumps(RECORDS[0]),
        "{not json",
        "",
        json.dumps(broken),
        json.dumps(RECORDS[1]),
        json.dumps(RECORDS[3]),
    ]
    (tmp_path / "runs.jsonl").write_text("\n".join(lines) + "\n")
    for command in ("table", "plot"):
        assert main([command, "--out", str(tmp_path)]) == 0
        err = " ".join(capsys.readouterr().err.split())
        assert f"{tmp_path / 'runs.jsonl'} line 4: not a run record: lacks metrics" in err
        assert err.count("warning:") == 2 and "line 2: not a JSON record" in err
    md = (tmp_path / "tables" / "results.md").read_text()
    # mettle's one seed cannot be told apart from lavish: both bold; it shares seed 1 with lavish (62)
    assert "| ave | lavish | 2 | accuracy | **61.00 ± 12.71** |  |" in md
    assert "| ave | mettle | 1 | accuracy | **74.00** | +12.00 |" in md


def test_a_rerun_candidate_is_chosen_on_its_latest_record():
    """A --force rerun of candidate A (val 65) replaces its first record (val 50): A beats B
    (val 60), where averaging both of A's records (57.5) would choose B."""

    def run(candidate: str, val: float) -> dict:
        r = _record("mettle", 0, 10.0, 100.0, 0.1, {"train": {"lr": candidate}}) | {"tags": {"candidate": candidate}}
        return r | {"metrics": {"accuracy": 10.0, "val_accuracy": val}}

    selection = candidate_selection([run("A", 50.0), run("B", 60.0), run("A", 65.0)]).set_index("candidate")
    assert list(selection["chosen"]) == [True, False] and selection.loc["A", "ave.val"] == 65.0
