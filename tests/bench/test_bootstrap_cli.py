"""`bench table --bootstrap N`: a run stores its test scores per item, whose mean is its
metric, and the table adds the percentile interval of N resamples of them."""

from __future__ import annotations

import math
from pathlib import Path

from bench.cli import main
from bench.results import ResultsStore

RUN = ["run", "--methods", "frozen", "--tasks", "ave", "--preset", "smoke", "--device", "cpu"]


def test_a_run_keeps_its_test_items_and_the_table_bootstraps_them(tmp_path: Path, capsys) -> None:
    assert main([*RUN, "--set", "measure.enabled=false", "--out", str(tmp_path)]) == 0
    (record,) = ResultsStore(tmp_path).load().records
    items = record["metrics_per_item"]["accuracy"]
    assert len(items) == 8  # the smoke preset's test videos
    assert math.isclose(sum(items) / len(items), record["metrics"]["accuracy"], rel_tol=1e-9, abs_tol=1e-9)
    assert main(["table", "--out", str(tmp_path), "--bootstrap", "500"]) == 0
    md = (tmp_path / "tables" / "results.md").read_text()
    assert "bootstrap 95 %" in md.splitlines()[0]
    assert main(["table", "--out", str(tmp_path), "--bootstrap", "0"]) == 2
    assert "--bootstrap must be > 0, got 0" in capsys.readouterr().err
