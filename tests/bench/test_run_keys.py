"""What makes two runs the same experiment: the run key holds the method's and task's
versions and the real data's resolved directory and fingerprint, so a changed method, task
or dataset is recomputed and the same data typed another way is not."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from bench.data.fingerprint import data_source
from bench.registry import get_method, get_task
from bench.results import SCHEMA_VERSION, ResultsStore

RUN = ["run", "--methods", "frozen", "--tasks", "ave", "--preset", "smoke", "--device", "cpu"]
QUICK = ["--set", "train.epochs=1", "--set", "measure.enabled=false"]


def ave_tree(root: Path) -> Path:
    """A prepared AVE tree of three clips, in the layout `bench data prepare ave` writes."""
    rows = ["Dog barking&vidA&good&0&10", "Banjo&vidB&good&2&7", "Dog barking&vidC&good&0&3"]
    root.mkdir(parents=True)
    files = {"Annotations.txt": rows, "trainSet.txt": rows[:1], "valSet.txt": rows[1:2], "testSet.txt": rows[2:]}
    for name, lines in files.items():
        (root / name).write_text("".join(f"{r}\n" for r in lines))
    (root / "media.json").write_text('{"dataset": "ave", "sample_rate": 16000, "size": 24}')
    for sub, shape, dtype in (("frames", (10, 24, 24, 3), np.uint8), ("audio", (10, 16000), np.int16)):
        (root / sub).mkdir()
        for video in ("vidA", "vidB", "vidC"):
            np.save(root / sub / f"{video}.npy", np.zeros(shape, dtype))
    return root


def test_records_carry_the_schema_the_kind_and_the_versions(tmp_path: Path) -> None:
    assert main([*RUN, *QUICK, "--out", str(tmp_path)]) == 0
    (record,) = ResultsStore(tmp_path).load().records
    assert record["schema"] == SCHEMA_VERSION == 2 and record["kind"] == "run"
    assert record["versions"] == {"method": get_method("frozen").version, "task": get_task("ave").version}


def test_a_new_task_version_is_recomputed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    out = ["--out", str(tmp_path)]
    assert main([*RUN, *QUICK, *out]) == 0
    assert main([*RUN, *QUICK, *out]) == 0
    assert "skip frozen / ave / seed 0" in capsys.readouterr().err
    monkeypatch.setattr(type(get_task("ave")), "version", get_task("ave").version + 1)
    assert main([*RUN, *QUICK, *out]) == 0
    assert "skip " not in capsys.readouterr().err
    old, new = ResultsStore(tmp_path).load().records
    assert new["versions"]["task"] == old["versions"]["task"] + 1 and new["key"] != old["key"]


def test_the_same_data_typed_three_ways_is_one_run_and_a_touched_split_file_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one console line per message
    ave_tree(tmp_path / "data" / "x")
    monkeypatch.chdir(tmp_path)
    out = ["--out", str(tmp_path / "out")]
    for spelling in ("data/x", "./data/x/", str(tmp_path / "data" / "x")):
        assert main([*RUN, *QUICK, "--data", f"ave={spelling}", *out]) == 0
    err = capsys.readouterr().err
    assert err.count("skip frozen / ave / seed 0") == 2
    (record,) = ResultsStore(tmp_path / "out").load().records
    assert record["source"] == str(tmp_path / "data" / "x") == record["data"]["path"]
    split = tmp_path / "data" / "x" / "valSet.txt"
    os.utime(split, ns=(split.stat().st_atime_ns, split.stat().st_mtime_ns + 10**9))  # touched, same content
    assert main([*RUN, *QUICK, "--data", "ave=data/x", *out]) == 0
    assert "skip " not in capsys.readouterr().err
    first, second = ResultsStore(tmp_path / "out").load().records
    assert first["data"]["fingerprint"] != second["data"]["fingerprint"] and first["key"] != second["key"]


def test_the_fingerprint_follows_names_sizes_and_times_of_every_file(tmp_path: Path) -> None:
    root = ave_tree(tmp_path / "x")
    base = data_source(root)
    assert data_source(f"{root}/").identity == base.identity and base.path == str(root.resolve())
    np.save(root / "audio" / "vidA.npy", np.zeros((10, 8000), np.int16))  # media re-prepared at another rate
    assert data_source(root).fingerprint != base.fingerprint
    (root / "frames" / "vidD.npy").write_bytes(b"")
    assert len({base.fingerprint, data_source(root).fingerprint}) == 2
