"""Listed videos without prepared media (YouTube deleted them) are left out of their split with
one warning per split, or refused under missing_media=error; a present but bad file is still
an error; the run's record counts what each split used and left out."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from test_loaders import SHAPE, avs_tree, llp_tree, media, png, truncate, wave_npy

from bench.cli import main
from bench.config import ConfigError, as_dict, build_section, parse_overrides
from bench.data.ave import load_ave
from bench.data.avsbench import load_avsbench
from bench.data.core import split_sizes
from bench.data.errors import DataError, DataWarning
from bench.data.llp import load_llp
from bench.registry import get_task
from bench.results import ResultsStore
from bench.tasks.ave import AveConfig

SPLITS = {"train": [f"v{i}" for i in range(6)], "val": ["v6", "v7"], "test": ["v8", "v9"]}
FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}


def ave_tree(root: Path) -> None:
    """Ten clips, v{i} carrying Banjo (class 0) on its first i + 1 segments, so that a
    sample's label tells which video it is."""
    rows = {split: [f"Banjo&{v}&good&0&{int(v[1:]) + 1}\n" for v in videos] for split, videos in SPLITS.items()}
    root.mkdir(parents=True, exist_ok=True)
    (root / "Annotations.txt").write_text("".join(r for split in rows.values() for r in split))
    for split, name in FILES.items():
        (root / name).write_text("".join(rows[split]))
    media(root, [v for videos in SPLITS.values() for v in videos])


def delete(root: Path, video: str, subs: tuple[str, ...] = ("frames", "audio")) -> None:
    for sub in subs:
        (root / sub / f"{video}.npy").unlink()


def videos_of(ds) -> list[int]:
    """The video index of each sample, read back from its label."""
    return [int((ds[i]["label"] == 0).sum()) - 1 for i in range(len(ds))]


def test_videos_without_media_are_left_out_with_one_warning_per_split(tmp_path: Path) -> None:
    ave_tree(tmp_path)
    delete(tmp_path, "v1")
    delete(tmp_path, "v4", ("audio",))  # half of its media: absent all the same
    delete(tmp_path, "v8")
    with pytest.warns(DataWarning) as caught:
        data = load_ave(tmp_path, SHAPE)
    assert [str(w.message) for w in caught] == [
        f"{tmp_path / 'trainSet.txt'}: 2 of the 6 videos listed for the train split have no prepared media and "
        "are left out (first 'v1': frames/v1.npy not found)",
        f"{tmp_path / 'testSet.txt'}: 1 of the 2 videos listed for the test split have no prepared media and "
        "are left out (first 'v8': frames/v8.npy not found)",
    ]
    assert data["train"].missing == ["v1", "v4"] and data["test"].missing == ["v8"] and data["val"].missing == []
    assert videos_of(data["train"]) == [0, 2, 3, 5] and videos_of(data["test"]) == [9]  # targets follow their video
    assert split_sizes(data) == {
        "train": {"samples": 4, "missing": 2},
        "val": {"samples": 2, "missing": 0},
        "test": {"samples": 1, "missing": 1},
    }


def test_missing_media_error_refuses_them_naming_the_first_and_counting_per_split(tmp_path: Path) -> None:
    ave_tree(tmp_path)
    for video in ("v1", "v4", "v8"):
        delete(tmp_path, video)
    with pytest.raises(DataError) as err:
        get_task("ave").datasets(AveConfig(missing_media="error"), SHAPE, str(tmp_path))  # as a run builds them
    assert str(err.value) == (
        f"{tmp_path / 'frames/v1.npy'}: missing prepared media of video 'v1', listed in trainSet.txt (train); "
        "3 listed video(s) have none (train 2, val 0, test 1) and missing_media=error refuses them "
        "(prepare them, or set missing_media=skip to leave them out)"
    )


def test_a_present_but_bad_file_stays_an_error_whatever_the_setting(tmp_path: Path) -> None:
    ave_tree(tmp_path)
    delete(tmp_path, "v1")
    cut = truncate(tmp_path / "audio" / "v2.npy", 1)
    with pytest.raises(DataError) as err:
        load_ave(tmp_path, SHAPE)
    assert str(err.value).startswith(f"{tmp_path / 'audio/v2.npy'}: truncated: {cut} bytes")
    with pytest.raises(DataError) as err:
        load_ave(tmp_path, SHAPE, missing_media="error")
    lines = str(err.value).splitlines()  # one error for both: the missing video first
    assert lines[0] == f"{tmp_path}: 2 bad dataset files:"
    assert lines[1].startswith(f"  {tmp_path / 'frames/v1.npy'}: missing prepared media of video 'v1'")
    assert lines[2].startswith(f"  {tmp_path / 'audio/v2.npy'}: truncated")


def test_a_split_left_with_no_video_is_an_error_naming_its_file(tmp_path: Path) -> None:
    ave_tree(tmp_path)
    delete(tmp_path, "v6")
    delete(tmp_path, "v7")
    with pytest.raises(DataError) as err:
        load_ave(tmp_path, SHAPE)
    assert str(err.value) == (
        f"{tmp_path / 'valSet.txt'}: the val split has no video with prepared media "
        "(2 listed; first 'v6': frames/v6.npy not found)"
    )


def test_llp_leaves_out_a_video_absent_under_both_its_names(tmp_path: Path) -> None:
    llp_tree(tmp_path)
    delete(tmp_path, "v2_5_15")
    with pytest.warns(DataWarning) as caught:
        data = load_llp(tmp_path, SHAPE)
    assert [str(w.message) for w in caught] == [
        f"{tmp_path / 'AVVP_train.csv'}: 1 of the 2 videos listed for the train split have no prepared media and "
        "are left out (first 'v2_5_15': frames/v2_5_15.npy or frames/v2.npy not found)"
    ]
    assert data["train"].names == ["v1_0_10"] and data["train"].missing == ["v2_5_15"]
    assert data["train"][0]["label"].nonzero().flatten().tolist() == [0, 3]  # v1's labels: Speech, Dog


def test_avsbench_leaves_out_a_video_whose_frames_folder_or_audio_is_absent(tmp_path: Path) -> None:
    avs_tree(tmp_path)
    s4 = tmp_path / "Single-source"
    meta = s4 / "s4_meta_data.csv"
    meta.write_text(meta.read_text() + "vD,3,cat,train\nvE,4,cat,train\n")
    for video in ("vD", "vE"):  # two more train videos, as avs_tree writes them
        for i in range(1, 6):
            png(s4 / "s4_data/visual_frames/train/cat" / video / f"{video}_{i}.png", np.zeros((24, 24, 3), np.uint8))
        png(s4 / "s4_data/gt_masks/train/cat" / video / f"{video}_1.png", np.zeros((24, 24), np.uint8))
        wave_npy(s4 / "s4_data/audio_wave/train/cat" / f"{video}.npy")
    shutil.rmtree(s4 / "s4_data/visual_frames/train/dog/vA")
    (s4 / "s4_data/audio_wave/train/cat/vE.npy").unlink()
    with pytest.warns(DataWarning) as caught:
        data = load_avsbench(tmp_path, "s4", SHAPE)
    assert [str(w.message) for w in caught] == [
        f"{meta}: 2 of the 3 videos listed for the train split have no prepared media and are left out "
        "(first 'vA': s4_data/visual_frames/train/dog/vA not found)"
    ]
    assert [v.audio.stem for v in data["train"].videos] == ["vD"] and data["train"].missing == ["vA", "vE"]
    with pytest.raises(DataError) as err:
        load_avsbench(tmp_path, "s4", SHAPE, missing_media="error")
    assert str(err.value).startswith(
        f"{s4 / 's4_data/visual_frames/train/dog/vA'}: missing prepared media of video 'vA', listed in "
        "s4_meta_data.csv (train); 2 listed video(s) have none (train 2, val 0, test 0)"
    )
    (s4 / "s4_data/gt_masks/train/cat/vD/vD_1.png").unlink()  # a file of a present video: a broken tree
    with pytest.raises(DataError, match=r"vD_1.png: file not found"):
        load_avsbench(tmp_path, "s4", SHAPE)


def test_missing_media_is_a_task_setting_that_changes_no_run_key() -> None:
    (override,) = parse_overrides(["ave.missing_media=error"], {"ave": AveConfig})
    cfg = build_section(AveConfig, "ave", {}, [override])
    assert cfg.missing_media == "error"
    with pytest.raises(ConfigError, match=r"ave.missing_media='maybe' is not allowed \(allowed: skip, error\)"):
        parse_overrides(["ave.missing_media=maybe"], {"ave": AveConfig})
    assert "missing_media" not in as_dict(cfg) and as_dict(cfg) == as_dict(AveConfig())  # the samples used say it


@pytest.mark.slow
def test_a_run_on_a_tree_with_two_deleted_videos_completes_and_its_record_counts_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one console line per message
    data = tmp_path / "ave"
    ave_tree(data)
    delete(data, "v3")
    delete(data, "v9")
    run = ["run", "--methods", "frozen", "--tasks", "ave", "--preset", "smoke", "--device", "cpu", "--workers", "1"]
    quick = ["--set", "measure.enabled=false"]  # loader workers: the default, chosen from the cores
    assert main([*run, *quick, "--data", f"ave={data}", "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    for file, split, listed, first in (("trainSet.txt", "train", 6, "v3"), ("testSet.txt", "test", 2, "v9")):
        assert (
            f"warning: {data / file}: 1 of the {listed} videos listed for the {split} split have no prepared media "
            f"and are left out (first {first!r}: frames/{first}.npy not found)"
        ) in err
    (record,) = ResultsStore(tmp_path / "out").load().records
    assert record["status"] == "ok"
    assert record["data"]["splits"] == {
        "train": {"samples": 5, "missing": 1},
        "val": {"samples": 2, "missing": 0},
        "test": {"samples": 1, "missing": 1},
    }
    assert record["efficiency"]["loader_workers"] == 0  # a CPU run's default
    assert 0 <= record["efficiency"]["data_wait_fraction"] <= 1
