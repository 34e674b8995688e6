"""Tiny fixture trees in each real layout, read back; bad data names file and line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.cli import main
from bench.data.ave import load_ave
from bench.data.avsbench import load_avsbench
from bench.data.core import DataShape
from bench.data.errors import LISTED, DataError, DataWarning, raise_all
from bench.data.llp import load_llp
from bench.data.media import load_array
from bench.frontends import resample

RATE = 800  # the prepared trees' audio rate; SHAPE's is half, so loaders resample
SHAPE = DataShape(image_size=16, sample_rate=400)
HEADER = "Category&VideoID&Quality&StartTime&EndTime\n"


def pcm(t: int) -> np.ndarray:
    """int16 [t, RATE]: a 50 Hz tone at half scale, one second per segment."""
    wave = 0.5 * np.sin(2 * np.pi * 50 * np.arange(t * RATE) / RATE)
    return np.round(wave * 32767).astype(np.int16).reshape(t, RATE)


def media_info(root: Path, rate: int = RATE) -> None:
    (root / "media.json").write_text(json.dumps({"dataset": "ave", "sample_rate": rate, "size": 24}))


def media(root: Path, videos: list[str], t: int = 10) -> None:
    (root / "frames").mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(exist_ok=True)
    media_info(root)
    for v in videos:
        np.save(root / "frames" / f"{v}.npy", np.full((t, 20, 24, 3), 128, np.uint8))
        np.save(root / "audio" / f"{v}.npy", pcm(t))


def ave_tree(root: Path, header: bool) -> None:
    h = HEADER if header else ""
    (root / "Annotations.txt").write_text(
        h + "Church bell&vidA&good&2&5\nDog barking&vidB&good&0&10\nBanjo&vidC&good&9&10\n"
    )
    (root / "trainSet.txt").write_text(h + "Church bell&vidA&good&2&5\nDog barking&vidB&good&0&10\n")
    (root / "valSet.txt").write_text(h + "Banjo&vidC&good&9&10\n")
    (root / "testSet.txt").write_text(h + "Banjo&vidC&good&9&10\n")
    media(root, ["vidA", "vidB", "vidC"])


@pytest.mark.parametrize("header", [True, False])
def test_ave_reads_with_and_without_header(tmp_path: Path, header: bool) -> None:
    ave_tree(tmp_path, header)
    data = load_ave(tmp_path, SHAPE)
    assert [len(data[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    item = data["train"][0]
    # waveform in [-1, 1], resampled from the tree's 800 Hz to the preset's 400 Hz
    assert item["audio"].shape == (10, 400) and item["audio"].dtype == torch.float32
    expected = resample(torch.from_numpy(pcm(10)).float() / 32768.0, RATE, 400)
    assert torch.equal(item["audio"], expected)  # the same float32 computation: same kernel, same shape
    assert 0.45 < item["audio"].abs().max() < 0.55
    assert item["visual"].shape == (10, 3, 16, 16) and item["visual"].dtype == torch.float32
    # sorted categories: Banjo 0, Church bell 1, Dog barking 2; background 28; [2, 5) carries the event
    assert item["label"].tolist() == [28, 28, 1, 1, 1, 28, 28, 28, 28, 28]
    assert data["train"][1]["label"].tolist() == [2] * 10
    assert data["val"][0]["label"].tolist() == [28] * 9 + [0]


def test_ave_keeps_every_row_of_a_repeated_video_and_reports_them_once(tmp_path: Path) -> None:
    ave_tree(tmp_path, header=False)
    annotations = (tmp_path / "Annotations.txt").read_text()
    (tmp_path / "Annotations.txt").write_text(annotations + "Dog barking&vidA&good&0&3\nBanjo&vidC&good&0&2\n")
    (tmp_path / "testSet.txt").write_text("Dog barking&vidA&good&0&3\n")  # vidA: train and test
    (tmp_path / "valSet.txt").write_text("Banjo&vidC&good&9&10\nBanjo&vidC&good&0&2\n")  # vidC: twice in val
    with pytest.warns(DataWarning) as caught:
        data = load_ave(tmp_path, SHAPE)
    assert [str(w.message) for w in caught] == [
        f"{tmp_path / 'Annotations.txt'}: 2 video id(s) with more than one row (first 'vidA', lines 1, 4), "
        "1 of them in more than one split; every row is kept as an annotation of its own"
    ]
    assert [len(data[s]) for s in ("train", "val", "test")] == [2, 2, 1]
    assert data["train"][0]["label"].tolist() == [28, 28, 1, 1, 1, 28, 28, 28, 28, 28]  # vidA: Church bell
    assert data["test"][0]["label"].tolist() == [2, 2, 2] + [28] * 7  # vidA: Dog barking
    assert data["val"][1]["label"].tolist() == [0, 0] + [28] * 8


@pytest.mark.parametrize(
    ("file", "text", "match"),
    [
        ("trainSet.txt", "Church bell&vidA&good&2\n", r"trainSet.txt:1: expected 5 '&'-separated fields"),
        ("trainSet.txt", HEADER + "Church bell&vidA&good&two&5\n", r"trainSet.txt:2: StartTime must be a number"),
        ("valSet.txt", "Harp&vidC&good&0&1\n", r"valSet.txt:1: unknown category 'Harp'"),
        ("testSet.txt", "Banjo&vidC&good&5&3\n", r"testSet.txt:1: EndTime 3 is before StartTime 5"),
        ("testSet.txt", "Banjo&vidC&good&0&11\n", r"testSet.txt:1: EndTime must be in \[0, 10\]"),
    ],
)
def test_ave_bad_lines(tmp_path: Path, file: str, text: str, match: str) -> None:
    ave_tree(tmp_path, header=False)
    (tmp_path / file).write_text(text)
    with pytest.raises(DataError, match=match):
        load_ave(tmp_path, SHAPE)


def test_ave_missing_files(tmp_path: Path) -> None:
    ave_tree(tmp_path, header=True)
    (tmp_path / "audio" / "vidC.npy").unlink()  # vidC: the only video of val (and of test)
    with pytest.raises(DataError) as err:
        load_ave(tmp_path, SHAPE)
    assert str(err.value) == (
        f"{tmp_path / 'valSet.txt'}: the val split has no video with prepared media "
        "(1 listed; first 'vidC': audio/vidC.npy not found)"
    )
    (tmp_path / "media.json").unlink()
    with pytest.raises(DataError, match=r"media.json: missing: not a tree written by `bench data prepare`"):
        load_ave(tmp_path, SHAPE)
    (tmp_path / "Annotations.txt").unlink()
    with pytest.raises(DataError, match=r"Annotations.txt: file not found"):
        load_ave(tmp_path, SHAPE)


def test_ave_wrong_media_shape(tmp_path: Path) -> None:
    ave_tree(tmp_path, header=True)
    np.save(tmp_path / "frames" / "vidA.npy", np.zeros((9, 20, 24, 3), np.uint8))
    with pytest.raises(DataError, match=r"frames/vidA.npy: expected an array of shape \[10, \*, \*, 3\]"):
        load_ave(tmp_path, SHAPE)["train"][0]
    media_info(tmp_path, rate=1000)  # the arrays hold 800 samples a second, media.json says 1000
    np.save(tmp_path / "frames" / "vidA.npy", np.zeros((10, 20, 24, 3), np.uint8))
    with pytest.raises(DataError, match=r"audio/vidA.npy: expected an array of shape \[10, 1000\], got \[10, 800\]"):
        load_ave(tmp_path, SHAPE)["train"][0]


def truncate(path: Path, cut: int) -> int:
    """Drop the last `cut` bytes of a file, as a killed writer or copy would; its new size."""
    data = path.read_bytes()[:-cut]
    path.write_bytes(data)
    return len(data)


def test_bad_media_fail_when_the_dataset_is_built_naming_every_file(tmp_path: Path) -> None:
    ave_tree(tmp_path, header=True)
    size = (tmp_path / "frames" / "vidC.npy").stat().st_size
    cut = truncate(tmp_path / "frames" / "vidC.npy", 100)
    np.save(tmp_path / "frames" / "vidA.npy", np.full((10, 20, 24, 3), 0.5, np.float32))  # astype: all zeros
    (tmp_path / "audio" / "vidB.npy").write_bytes(b"")
    with pytest.raises(DataError) as err:
        load_ave(tmp_path, SHAPE)  # no item read: the headers alone tell
    assert str(err.value).splitlines() == [
        f"{tmp_path}: 3 bad dataset files:",
        f"  {tmp_path / 'frames/vidA.npy'}: expected dtype uint8, got float32",
        f"  {tmp_path / 'audio/vidB.npy'}: unreadable .npy header (EOF: reading magic string, expected 8 bytes got 0)",
        f"  {tmp_path / 'frames/vidC.npy'}: truncated: {cut} bytes, but its header ([10, 20, 24, 3] uint8) "
        f"makes {size}",
    ]


def test_media_of_another_dtype_is_refused_when_read(tmp_path: Path) -> None:
    path = tmp_path / "audio.npy"
    np.save(path, np.full((10, RATE), 0.25, np.float32))  # float audio in [-1, 1]: zeros as int16
    with pytest.raises(DataError, match=r"audio.npy: expected dtype int16, got float32"):
        load_array(path, (10, RATE), np.int16)
    np.save(path, pcm(10))
    assert np.array_equal(load_array(path, (10, None), np.int16), pcm(10))


def test_one_error_lists_the_first_bad_files_and_counts_the_rest(tmp_path: Path) -> None:
    errors = [DataError(tmp_path / f"v{i}.npy", "truncated") for i in range(LISTED + 3)]
    with pytest.raises(DataError) as err:
        raise_all(tmp_path, errors)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{tmp_path}: {LISTED + 3} bad dataset files:"
    assert lines[1:-1] == [f"  {tmp_path / f'v{i}.npy'}: truncated" for i in range(LISTED)]
    assert lines[-1] == "  and 3 more"
    with pytest.raises(DataError) as err:
        raise_all(tmp_path, errors[:1])
    assert err.value is errors[0]
    raise_all(tmp_path, [])


@pytest.mark.slow
def test_a_run_on_a_tree_with_a_truncated_test_file_fails_before_training_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one console line per message
    data = tmp_path / "ave"
    data.mkdir()
    ave_tree(data, header=False)
    (data / "Annotations.txt").write_text((data / "Annotations.txt").read_text() + "Banjo&vidD&good&0&4\n")
    (data / "testSet.txt").write_text("Banjo&vidD&good&0&4\n")  # vidD: the test split only
    media(data, ["vidD"])
    truncate(data / "audio" / "vidD.npy", 1)
    trained = []
    monkeypatch.setattr("bench.jobs.train_run", lambda *args: trained.append(args))
    run = [
        "run",
        "--methods",
        "frozen,full",
        "--tasks",
        "ave",
        "--preset",
        "smoke",
        "--device",
        "cpu",
        "--workers",
        "1",
    ]
    assert main([*run, "--data", f"ave={data}", "--out", str(tmp_path / "out")]) == 2  # bad input, not a failed run
    assert not trained
    err = capsys.readouterr().err
    assert f"error: {data / 'audio' / 'vidD.npy'}: truncated" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "runs.jsonl").exists()  # every run would fail alike: none is recorded


def llp_tree(root: Path) -> None:
    (root / "AVVP_train.csv").write_text("filename\tevent_labels\nv1_0_10\tSpeech,Dog\nv2_5_15\tCello\n")
    (root / "AVVP_val_pd.csv").write_text("filename\tevent_labels\nv3_0_10\tSpeech,Car\n")
    (root / "AVVP_test_pd.csv").write_text("filename\tevent_labels\nv4_0_10\tClapping\n")
    (root / "AVVP_eval_audio.csv").write_text(
        "filename\tonset\toffset\tevent_labels\nv3_0_10\t0\t4\tSpeech\nv3_0_10\t9\t9\tSpeech\nv4_0_10\t2\t10\tClapping\n"
    )
    (root / "AVVP_eval_visual.csv").write_text("filename\tonset\toffset\tevent_labels\nv3_0_10\t3\t10\tCar\n")
    media(root, ["v1_0_10", "v2_5_15", "v3_0_10", "v4_0_10"])


def test_llp_reads(tmp_path: Path) -> None:
    llp_tree(tmp_path)
    data = load_llp(tmp_path, SHAPE)
    train = data["train"][0]
    assert set(train) == {"audio", "visual", "label"}
    assert train["label"].nonzero().flatten().tolist() == [0, 3]  # Speech, Dog
    val = data["val"][0]
    assert val["gt_audio"].shape == val["gt_visual"].shape == (25, 10)
    assert val["gt_audio"][0].int().tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]  # [0, 4); 9-9 marks nothing
    assert val["gt_audio"].sum() == 4 and val["gt_visual"][1].sum() == 7
    assert data["test"][0]["gt_audio"][24].sum() == 8 and data["test"][0]["gt_visual"].sum() == 0


def test_llp_row_with_offset_before_onset_marks_nothing_and_is_reported_once(tmp_path: Path) -> None:
    # the release's AVVP_eval_audio.csv line 3770: `8DF2PxdT5tE_390_400  9  0  Cheering`
    llp_tree(tmp_path)
    audio = (tmp_path / "AVVP_eval_audio.csv").read_text()
    (tmp_path / "AVVP_eval_audio.csv").write_text(audio + "v3_0_10\t9\t0\tCheering\nv4_0_10\t5\t1\tClapping\n")
    with pytest.warns(DataWarning) as caught:
        data = load_llp(tmp_path, SHAPE)
    assert len(caught) == 1  # one warning for the file, though val and test both read it
    assert str(caught[0].message) == (
        f"{tmp_path / 'AVVP_eval_audio.csv'}: 2 row(s) with offset before onset mark no segment, "
        "as in the official evaluation (line(s) 5, 6)"
    )
    assert data["val"][0]["gt_audio"][2].sum() == 0  # Cheering: nothing
    assert data["test"][0]["gt_audio"][24].sum() == 8  # Clapping: only its [2, 10) row


def test_llp_finds_media_under_the_csv_name_or_the_youtube_id(tmp_path: Path) -> None:
    llp_tree(tmp_path)
    # the download script's naming: `{YouTubeID}.mp4`, ids with '_' and '-'
    (tmp_path / "AVVP_test_pd.csv").write_text("filename\tevent_labels\na_b-c_d_30_40\tClapping\n")
    audio = (tmp_path / "AVVP_eval_audio.csv").read_text()
    (tmp_path / "AVVP_eval_audio.csv").write_text(audio + "a_b-c_d_30_40\t0\t3\tClapping\n")
    media(tmp_path, ["a_b-c_d"])
    test = load_llp(tmp_path, SHAPE)["test"]
    assert test.names == ["a_b-c_d"] and test[0]["gt_audio"][24].sum() == 3
    assert load_llp(tmp_path, SHAPE)["val"].names == ["v3_0_10"]  # the CSV's name, when prepared so
    for sub in ("frames", "audio"):
        (tmp_path / sub / "a_b-c_d.npy").unlink()
    with pytest.raises(DataError) as err:
        load_llp(tmp_path, SHAPE, missing_media="error")
    assert str(err.value) == (
        f"{tmp_path / 'frames/a_b-c_d_30_40.npy'}: missing prepared media of video 'a_b-c_d_30_40' (also looked "
        f"for {tmp_path / 'frames/a_b-c_d.npy'}), listed in AVVP_test_pd.csv (test); 1 listed video(s) have none "
        "(train 0, val 0, test 1) and missing_media=error refuses them (prepare them, or set missing_media=skip "
        "to leave them out)"
    )


@pytest.mark.parametrize(
    ("file", "text", "match"),
    [
        ("AVVP_train.csv", "filename\tevent_labels\nv1_0_10\tSpeech\textra\n", r"AVVP_train.csv:2: expected 2 tab"),
        ("AVVP_train.csv", "filename\tevent_labels\nv1_0_10\tSpeeches\n", r"AVVP_train.csv:2: unknown event label"),
        ("AVVP_train.csv", "name,labels\n", r"AVVP_train.csv:1: expected the tab-separated header"),
        (
            "AVVP_eval_audio.csv",
            "filename\tonset\toffset\tevent_labels\nv3_0_10\tzero\t4\tSpeech\n",
            r"AVVP_eval_audio.csv:2: onset must be a number",
        ),
    ],
)
def test_llp_bad_lines(tmp_path: Path, file: str, text: str, match: str) -> None:
    llp_tree(tmp_path)
    (tmp_path / file).write_text(text)
    with pytest.raises(DataError, match=match):
        load_llp(tmp_path, SHAPE)


def png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def wave_npy(path: Path, array: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, pcm(5) if array is None else array)


def avs_tree(root: Path) -> None:
    """S4 and MS3 with one video in each split; S4 train has its first mask only."""
    s4 = root / "Single-source"
    s4.mkdir(parents=True)
    (s4 / "s4_meta_data.csv").write_text("name,start,category,split\nvA,0,dog,train\nvC,2,dog,val\nvB,1,cat,test\n")
    frame = np.zeros((24, 24, 3), np.uint8)
    mask = np.zeros((24, 24), np.uint8)
    mask[:12] = 255
    for split, cat, vid in (("train", "dog", "vA"), ("val", "dog", "vC"), ("test", "cat", "vB")):
        for i in range(1, 6):
            png(s4 / "s4_data/visual_frames" / split / cat / vid / f"{vid}_{i}.png", frame)
            if split != "train" or i == 1:
                png(s4 / "s4_data/gt_masks" / split / cat / vid / f"{vid}_{i}.png", mask)
        wave_npy(s4 / "s4_data/audio_wave" / split / cat / f"{vid}.npy")
    ms3 = root / "Multi-sources"
    ms3.mkdir()
    (ms3 / "ms3_meta_data.csv").write_text("video_id,split\nvN,train\nvM,val\nvO,test\n")
    for split, vid in (("train", "vN"), ("val", "vM"), ("test", "vO")):
        for i in range(1, 6):
            png(ms3 / "ms3_data/visual_frames" / vid / f"{vid}.mp4_{i}.png", frame)
            png(ms3 / "ms3_data/gt_masks" / split / vid / f"{vid}_{i}.png", mask)
        wave_npy(ms3 / "ms3_data/audio_wave" / split / f"{vid}.npy")
    media_info(root)


def test_avsbench_reads_s4_and_ms3(tmp_path: Path) -> None:
    avs_tree(tmp_path)
    s4 = load_avsbench(tmp_path, "s4", SHAPE)
    assert [len(s4[s]) for s in ("train", "val", "test")] == [1, 1, 1]
    train = s4["train"][0]
    assert train["audio"].shape == (5, 400) and train["visual"].shape == (5, 3, 16, 16)
    assert torch.equal(train["audio"], resample(torch.from_numpy(pcm(5)).float() / 32768.0, RATE, 400))
    assert train["mask"].shape == (5, 16, 16) and train["mask"].dtype == torch.bool
    assert train["frame_weight"].tolist() == [1, 0, 0, 0, 0]
    assert train["mask"][0, :8].all() and not train["mask"][0, 8:].any() and not train["mask"][1:].any()
    assert s4["test"][0]["frame_weight"].tolist() == [1] * 5 and s4["test"][0]["mask"][4, 0].all()
    ms3 = load_avsbench(tmp_path, "ms3", SHAPE)
    assert [len(ms3[s]) for s in ("train", "val", "test")] == [1, 1, 1]
    assert ms3["train"][0]["frame_weight"].tolist() == [1] * 5 and ms3["val"][0]["mask"][4, 0].all()


def test_avsbench_bad_data(tmp_path: Path) -> None:
    avs_tree(tmp_path)
    bad = tmp_path / "Single-source/s4_data/gt_masks/test/cat/vB/vB_3.png"
    png(bad, np.zeros((20, 24), np.uint8))
    with pytest.raises(DataError, match=r"vB_3.png: image is 24x20 but vB_1.png is 24x24 \(width x height\)"):
        load_avsbench(tmp_path, "s4", SHAPE)
    png(bad, np.zeros((24, 24), np.uint8))
    s4 = load_avsbench(tmp_path, "s4", SHAPE)
    png(bad, np.zeros((20, 24), np.uint8))  # changed after the dataset was built: read, checked again
    with pytest.raises(DataError, match=r"vB_3.png: mask is 24x20 but its frame is 24x24"):
        s4["test"][0]
    wave_npy(tmp_path / "Multi-sources/ms3_data/audio_wave/val/vM.npy", pcm(4))
    with pytest.raises(DataError, match=r"vM.npy: expected an array of shape \[5, 800\], got \[4, 800\]"):
        load_avsbench(tmp_path, "ms3", SHAPE)
    wave_npy(tmp_path / "Multi-sources/ms3_data/audio_wave/val/vM.npy")
    (tmp_path / "Multi-sources/ms3_data/visual_frames/vM/vM.mp4_2.png").unlink()
    with pytest.raises(DataError, match=r"vM.mp4_2.png: file not found"):
        load_avsbench(tmp_path, "ms3", SHAPE)
    (tmp_path / "Single-source/s4_meta_data.csv").write_text("name,start,category,split\nvA,0,dog\n")
    with pytest.raises(DataError, match=r"s4_meta_data.csv:2: expected 4 comma-separated fields"):
        load_avsbench(tmp_path, "s4", SHAPE)


def test_avsbench_bad_files_of_every_split_fail_when_built_in_one_error(tmp_path: Path) -> None:
    avs_tree(tmp_path)
    data = tmp_path / "Single-source/s4_data"
    frame = data / "visual_frames/test/cat/vB/vB_4.png"
    truncate(frame, 30)  # PIL reads its header fine; its IEND chunk is gone
    (data / "gt_masks/val/dog/vC/vC_2.png").write_bytes(b"")
    wave_npy(data / "audio_wave/train/dog/vA.npy", pcm(5).astype(np.float32) / 32768)
    with pytest.raises(DataError) as err:
        load_avsbench(tmp_path, "s4", SHAPE)
    assert str(err.value).splitlines()[:2] == [
        f"{tmp_path / 'Single-source'}: 3 bad dataset files:",
        f"  {data / 'audio_wave/train/dog/vA.npy'}: expected dtype int16, got float32",
    ]
    assert str(err.value).splitlines()[2].startswith(f"  {data / 'gt_masks/val/dog/vC/vC_2.png'}: unreadable image (")
    assert str(err.value).splitlines()[3] == f"  {frame}: truncated PNG: it does not end with an IEND chunk"


TREES = {  # a tree in each real layout, and its loader
    "ave": (lambda root: ave_tree(root, header=True), lambda root: load_ave(root, SHAPE)),
    "llp": (llp_tree, lambda root: load_llp(root, SHAPE)),
    "s4": (avs_tree, lambda root: load_avsbench(root, "s4", SHAPE)),
    "ms3": (avs_tree, lambda root: load_avsbench(root, "ms3", SHAPE)),
}


@pytest.mark.parametrize(
    ("tree", "file", "text", "message"),
    [
        ("ave", "valSet.txt", "",
         "the val split is empty: no Category&VideoID&Quality&StartTime&EndTime rows"),
        ("ave", "trainSet.txt", HEADER,
         "the train split is empty: no Category&VideoID&Quality&StartTime&EndTime rows"),
        ("llp", "AVVP_val_pd.csv", "filename\tevent_labels\n", "the val split is empty: no rows under the header"),
        ("s4", "Single-source/s4_meta_data.csv", "name,start,category,split\nvA,0,dog,train\nvB,1,cat,test\n",
         "the val split is empty: no row has split 'val'"),
        ("ms3", "Multi-sources/ms3_meta_data.csv", "video_id,split\nvN,train\nvM,val\n",
         "the test split is empty: no row has split 'test'"),
    ],
)  # fmt: skip
def test_an_empty_split_is_one_error_naming_its_file(
    tmp_path: Path, tree: str, file: str, text: str, message: str
) -> None:
    make, load = TREES[tree]
    make(tmp_path)
    (tmp_path / file).write_text(text)
    with pytest.raises(DataError) as err:
        load(tmp_path)
    assert str(err.value) == f"{tmp_path / file}: {message}"
