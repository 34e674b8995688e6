"""The reports' statistics: intervals over seeds, paired and Welch differences, which means the
tables mark, the per-item bootstrap, the figures' error bars, and the tasks' per-item scores,
checked against hand-computed values and scipy."""

import math
from statistics import pstdev, stdev

import matplotlib
import pytest
import torch
from scipy import stats as scipy_stats

from bench.registry import get_task
from bench.report import study_summary, summarize, write_study_tables, write_tables
from bench.report.figures import memory_vs_metric
from bench.report.stats import (
    bootstrap_interval,
    marked_best,
    mean_interval,
    paired_difference,
    t_quantile,
    welch_difference,
)
from bench.report.tables import row_labels

matplotlib.use("Agg")

T2 = 4.302653  # t_{0.975, 2}


def _record(method: str, seed: int, acc: float, **extra) -> dict:
    return {
        "method": method,
        "task": "ave",
        "preset": "smoke",
        "source": "synthetic",
        "seed": seed,
        "status": "ok",
        "config": extra.pop("config", {"train": {"lr": 0.001}}),
        "metrics": {"accuracy": acc},
        "efficiency": {"train_mem_bytes_est": 100.0, "train_step_s": 0.1, "activation_bytes": 50.0},
        **extra,
    }


def _runs(method: str, accs: list[float], **extra) -> list[dict]:
    return [_record(method, seed, acc, **extra) for seed, acc in enumerate(accs)]


def test_t_quantile_matches_scipy_for_every_degree_of_freedom():
    for df in range(1, 301):
        assert t_quantile(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=5e-6), df
    with pytest.raises(ValueError, match="at least 1 degree of freedom, got 0"):
        t_quantile(0)


def test_interval_of_one_two_three_by_hand():
    """mean 2, s = 1, half-width t_{0.975, 2} / sqrt(3) = 2.484."""
    ci = mean_interval([1.0, 2.0, 3.0])
    assert (ci.mean, ci.n) == (2.0, 3)
    assert ci.half_width == pytest.approx(T2 / math.sqrt(3)) and round(ci.half_width, 3) == 2.484
    assert scipy_stats.t.interval(0.95, 2, loc=2.0, scale=1 / math.sqrt(3))[1] == pytest.approx(2.0 + ci.half_width)
    one = mean_interval([78.5])
    assert (one.mean, one.half_width, one.excludes_zero) == (78.5, None, False)


def test_paired_difference_uses_the_seeds_both_rows_have():
    """Seeds 0, 1, 2 against a reference that also has seed 3: d = 1, 2, 0."""
    row = {0: 80.0, 1: 82.0, 2: 81.0}
    reference = {0: 79.0, 1: 80.0, 2: 81.0, 3: 95.0}
    diff = paired_difference(row, reference)
    assert (diff.mean, diff.n) == (1.0, 3)
    assert diff.half_width == pytest.approx(T2 / math.sqrt(3))  # s(d) = 1
    assert not diff.excludes_zero  # 1 - 2.484 < 0
    single = paired_difference({3: 90.0}, reference)
    assert (single.mean, single.half_width, single.n) == (-5.0, None, 1)
    assert paired_difference({7: 1.0}, reference) is None


def test_welch_difference_by_hand():
    """a = 1, 2, 3 and b = 4, 6, 8: variances of the means 1/3 and 4/3; Welch-Satterthwaite
    df = (5/3)^2 / ((1/3)^2 / 2 + (4/3)^2 / 2) = 50/17 = 2.94, rounded down to 2."""
    diff = welch_difference([1.0, 2.0, 3.0], [4.0, 6.0, 8.0])
    assert diff.mean == pytest.approx(-4.0)
    assert diff.half_width == pytest.approx(T2 * math.sqrt(5 / 3))
    assert welch_difference([1.0], [4.0, 6.0]) is None


def test_the_best_is_marked_alone_only_when_its_interval_against_the_runner_up_excludes_zero():
    clear = [{0: 70.0, 1: 71.5, 2: 72.0}, {0: 80.0, 1: 81.0, 2: 82.0}]  # d = 10, 9.5, 10: +-0.72
    assert marked_best(clear) == [False, True]
    tied = [{0: 60.0, 1: 62.0}, {0: 70.0, 1: 74.0}]  # d = 10, 12: 11 +- 12.71
    assert marked_best(tied) == [True, True]
    # the runner-up ties with the best; a third, clearly below the best, is not marked
    three = [{0: 80.0, 1: 84.0, 2: 82.0}, {0: 81.0, 1: 80.0, 2: 85.0}, {0: 50.0, 1: 51.0, 2: 52.0}]
    assert marked_best(three) == [True, True, False]


def test_rows_without_shared_seeds_are_compared_by_welch_and_one_seed_ties():
    apart = [{0: 80.0, 1: 81.0, 2: 82.0}, {3: 60.0, 4: 61.0, 5: 62.0}]  # Welch: 20 +- 2.48 * sqrt(2)
    assert marked_best(apart) == [True, False]
    assert marked_best([{0: 80.0, 1: 81.0}, {5: 10.0}]) == [True, True]  # one seed cannot be told apart
    assert marked_best([{0: 80.0}, {}]) == [False, False]  # nothing to compare


def test_bootstrap_is_deterministic_holds_the_mean_and_narrows_with_more_items():
    few = [(i * 7919) % 1000 / 10 for i in range(100)]  # per-video scores spread over [0, 100)
    many = few * 4
    mean, spread = sum(few) / 100, pstdev(few) / math.sqrt(100)  # the bootstrap's standard error
    low, high = bootstrap_interval(few, 2000, seed=0)
    assert (low, high) == bootstrap_interval(few, 2000, seed=0)
    assert low < mean < high
    assert (low, high) == pytest.approx((mean - 1.96 * spread, mean + 1.96 * spread), abs=0.1 * spread + 0.5)
    many_low, many_high = bootstrap_interval(many, 2000, seed=0)
    assert many_high - many_low < (high - low) * 0.6  # half as wide for four times the items
    assert bootstrap_interval(few, 2000, seed=1) != (low, high)
    with pytest.raises(ValueError, match="non-empty list of item scores"):
        bootstrap_interval([], 10)
    with pytest.raises(ValueError, match="at least 1 resample, got 0"):
        bootstrap_interval(few, 0)


def test_table_marks_a_clear_best_alone_with_its_paired_difference(tmp_path):
    records = _runs("lavish", [70.0, 71.5, 72.0]) + _runs("mettle", [80.0, 81.0, 82.0]) + [_record("frozen", 0, 40.0)]
    write_tables(records, tmp_path)
    md = (tmp_path / "tables" / "results.md").read_text()
    ci = T2 * math.sqrt(1 / 12) / math.sqrt(3)  # mettle - lavish: d = 10, 9.5, 10, s = sqrt(1/12)
    assert f"| lavish | 3 | accuracy | 71.17 ± {T2 * stdev([70.0, 71.5, 72.0]) / math.sqrt(3):.2f} |  |" in md
    assert f"| mettle | 3 | accuracy | **81.00 ± {T2 / math.sqrt(3):.2f}** | +9.83 ± {ci:.2f} |" in md
    assert "| frozen | 1 | accuracy | 40.00 | -30.00 |" in md  # one seed: value and difference alone
    summary = summarize(records).set_index("method")
    assert summary.loc["mettle", "ref_delta"] == pytest.approx(59 / 6)
    assert summary.loc["mettle", "ref_delta.ci"] == pytest.approx(ci)
    assert summary.loc["frozen", "ref_delta.seeds"] == 1 and math.isnan(summary.loc["frozen", "ref_delta.ci"])
    assert math.isnan(summary.loc["lavish", "ref_delta"])


def test_the_difference_pairs_with_the_first_config_of_the_reference(tmp_path):
    first, second = {"train": {"lr": 0.001}}, {"train": {"lr": 0.01}}
    records = _runs("lavish", [70.0, 72.0], config=first) + _runs("lavish", [10.0, 12.0], config=second)
    records += _runs("mettle", [71.0, 74.0])
    summary = summarize(records, reference="lavish")
    assert list(summary["ref_delta"].fillna(-1)) == [-1, -60.0, 1.5]  # first config: itself, blank
    write_tables(records, tmp_path)
    assert (
        "Δ vs lavish: the selection metric minus `lavish`'s (its first config where it has several)"
        in (tmp_path / "tables" / "results.md").read_text()
    )


def test_bootstrap_column_uses_the_lowest_seed_holding_per_item_scores(tmp_path):
    items = [0.0, 100.0] * 50
    records = [
        _record("mettle", 0, 71.0),  # an older record: no per-item scores
        _record("mettle", 1, 50.0, metrics_per_item={"accuracy": items}),
        _record("mettle", 2, 60.0, metrics_per_item={"accuracy": [60.0] * 10}),
        _record("lavish", 0, 40.0),
    ]
    write_tables(records, tmp_path, bootstrap=500)
    md = (tmp_path / "tables" / "results.md").read_text()
    low, high = bootstrap_interval(items, 500)
    assert f"| 50.00 [{low:.2f}, {high:.2f}] (seed 1) |" in md
    assert "its percentile interval over the test items (500 resamples, resampling seed 0)" in md
    write_tables(records[:1], tmp_path, bootstrap=500)
    assert "bootstrap: no record holds per-item test scores" in (tmp_path / "tables" / "results.md").read_text()
    with pytest.raises(ValueError, match="--bootstrap needs a positive number of resamples, got -1"):
        write_tables(records, tmp_path, bootstrap=-1)


def test_figure_error_bars_are_the_tables_confidence_half_widths():
    records = _runs("lavish", [1.0, 2.0, 3.0]) + [_record("mettle", 0, 5.0)]
    summary = summarize(records)
    summary["label"] = row_labels(summary)
    fig = memory_vs_metric(summary)
    (bars,) = fig.axes[0].containers
    segments = bars.lines[2][0].get_segments()
    assert len(segments) == 2  # mettle's one seed draws no bar
    (_, low), (_, high) = segments[0]
    assert (low, high) == pytest.approx((2.0 - T2 / math.sqrt(3), 2.0 + T2 / math.sqrt(3)))
    assert len(segments[1]) == 0


def test_a_study_gives_intervals_and_marks_tied_points(tmp_path):
    def trial(pool: str, seed: int, acc: float) -> dict:
        r = _record("mettle", seed, acc, config={"method": {"pool": pool}, "train": {"lr": 0.001}})
        return r | {"tags": {"study": "pool", "swept": "mettle.pool"}}

    records = [trial("mean", s, a) for s, a in enumerate([70.0, 72.0, 71.0])]
    records += [trial("attention", s, a) for s, a in enumerate([71.0, 74.0, 70.0])]
    records += [trial("max", s, a) for s, a in enumerate([50.0, 51.0, 52.0])]
    summary, _ = study_summary(records, "pool")
    assert list(summary["mettle.pool"]) == ["attention", "max", "mean"]
    assert list(summary["metric.accuracy.best"]) == [True, False, True]
    assert summary["metric.accuracy.ci"].iloc[1] == pytest.approx(T2 / math.sqrt(3))
    write_study_tables(records, tmp_path, "pool")
    md = (tmp_path / "tables" / "ablation_pool.md").read_text()
    assert f"| max | 51.00 ± {T2 / math.sqrt(3):.2f} | 3 |" in md and "| mean | **71.00 ± 2.48** | 3 |" in md


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_ave_items_are_videos_whose_mean_is_the_accuracy():
    task = get_task("ave")
    label = torch.tensor([[1, 2, 28, 28], [3, 3, 3, 28]])
    pred = torch.tensor([[1, 2, 28, 0], [0, 0, 0, 28]])
    preds = {"pred": pred, "label": label}
    items = task.per_item(None, preds)
    assert items == {"accuracy": [75.0, 25.0]}
    assert sum(items["accuracy"]) / 2 == pytest.approx(task.score(None, preds)["accuracy"])


def test_avvp_items_are_videos_whose_mean_is_the_type_at_av():
    task = get_task("avvp")
    n, c, t = 6, 25, 10
    preds = {
        "video_prob": torch.rand(n, c, generator=_gen()),
        "audio_prob": torch.rand(n, c, t, generator=_gen()),
        "visual_prob": torch.rand(n, c, t, generator=_gen()) ** 0.5,
        "gt_audio": torch.rand(n, c, t, generator=_gen()) > 0.7,
        "gt_visual": torch.rand(n, c, t, generator=_gen()) > 0.6,
    }
    items = task.per_item(None, preds)["seg_type_av"]
    assert len(items) == n and len(set(items)) > 1
    assert sum(items) / n == pytest.approx(task.score(None, preds)["seg_type_av"], rel=1e-9)


@pytest.mark.parametrize("protocol, expected_items", [("avsbench", 3), ("per_video", 5)])
def test_avs_items_are_batches_or_videos_whose_mean_is_the_miou(protocol: str, expected_items: int):
    task = get_task("avs_s4")
    cfg = task.config_cls(protocol=protocol, eval_batch_size=2)
    preds = {
        "logits": torch.randn(5, 3, 8, 8, generator=_gen()),
        "mask": torch.rand(5, 3, 8, 8, generator=_gen()) > 0.5,
        "frame_weight": torch.ones(5, 3),
    }
    items = task.per_item(cfg, preds)["miou"]
    assert len(items) == expected_items  # avsbench: batches {0, 1}, {2, 3}, {4}
    assert sum(items) / len(items) == pytest.approx(task.score(cfg, preds)["miou"], rel=1e-6)


def test_avs_per_video_items_need_as_many_scored_frames_in_every_video():
    task = get_task("avs_s4")
    weight = torch.ones(2, 3)
    weight[0, 1:] = 0  # video 0 scores one frame, video 1 three: the frame mean is no video mean
    preds = {"logits": torch.randn(2, 3, 4, 4), "mask": torch.ones(2, 3, 4, 4, dtype=torch.bool)}
    assert task.per_item(task.config_cls(protocol="per_video"), preds | {"frame_weight": weight}) is None
