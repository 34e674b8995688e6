"""`prepare` on generated clips: frame count and size, stored waveform, corrupt clips, workers, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from rich.console import Console

from bench.cli import main
from bench.data import prepare as prepare_module
from bench.data.ave import load_ave
from bench.data.core import DataShape
from bench.data.prepare import prepare

FPS, SR = 10, 16000
REPO = Path(__file__).resolve().parents[2]


def write_clip(path: Path, seconds: int = 3, size: int = 64, container_format: str | None = None) -> None:
    """A moving red square over black, with a 440 Hz tone."""
    with av.open(str(path), "w", format=container_format) as out:
        video = None
        if container_format != "wav":
            video = out.add_stream("mpeg4", rate=FPS)
            video.width = video.height = size
            video.pix_fmt = "yuv420p"
        audio = out.add_stream("pcm_s16le" if container_format == "wav" else "aac", rate=SR)
        audio.layout = "mono"
        for i in range(seconds * FPS if video else 0):
            img = np.zeros((size, size, 3), np.uint8)
            x = (i * 3) % (size - 16)
            img[20:36, x : x + 16] = (255, 0, 0)
            out.mux(video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        if video:
            out.mux(video.encode())
        t = np.arange(seconds * SR) / SR
        wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        fmt = "s16" if container_format == "wav" else "fltp"
        for s in range(0, len(wave), 1024):
            chunk = wave[s : s + 1024]
            data = (chunk * 32767).astype(np.int16)[None] if fmt == "s16" else chunk[None]
            frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = SR, s, Fraction(1, SR)
            out.mux(audio.encode(frame))
        out.mux(audio.encode())


def quiet() -> Console:
    return Console(file=open("/dev/null", "w"))  # noqa: SIM115


def peak_hz(wave: np.ndarray, rate: int) -> float:
    return float(np.abs(np.fft.rfft(wave)).argmax() * rate / len(wave))


def test_prepare_ave_writes_frames_and_waveform_that_the_loader_reads(tmp_path: Path) -> None:
    src, dst = tmp_path / "raw", tmp_path / "prepared"
    src.mkdir()
    write_clip(src / "clipA.mp4")
    (src / "clipB.mp4").write_bytes(b"not a video at all")
    rows = "Category&VideoID&Quality&StartTime&EndTime\nBanjo&clipA&good&0&3\n"
    for name in ("Annotations.txt", "trainSet.txt", "valSet.txt", "testSet.txt"):
        (src / name).write_text(rows)
    report = prepare("ave", src, dst, size=32, sample_rate=SR, console=quiet())
    assert report.prepared == 1 and report.already_done == 0
    assert [Path(f).name for f, _ in report.failed] == ["clipB.mp4"] and report.failed[0][1]
    assert json.loads((dst / "media.json").read_text()) == {"dataset": "ave", "sample_rate": SR, "size": 32}
    frames = np.load(dst / "frames" / "clipA.npy")
    pcm = np.load(dst / "audio" / "clipA.npy")
    assert frames.shape == (10, 32, 32, 3) and frames.dtype == np.uint8
    assert pcm.shape == (10, SR) and pcm.dtype == np.int16
    assert frames[0, :, :, 0].max() > 150  # the red square is there
    # the 3 s tone at 440 Hz and half scale, then 7 s of silent padding
    assert peak_hz(pcm[1].astype(np.float64), SR) == pytest.approx(440, abs=2)
    assert 0.3 < np.sqrt(np.mean((pcm[1] / 32768.0) ** 2)) < 0.4  # 0.5 / sqrt(2), less the codec's loss
    assert not pcm[4:].any()
    assert (dst / "Annotations.txt").read_text().startswith("Category")
    assert not list(dst.rglob("*.tmp"))
    # the loader resamples the stored waveform to a preset's rate
    audio = load_ave(dst, DataShape(image_size=16, sample_rate=8000))["train"][0]["audio"]
    assert audio.shape == (10, 8000) and peak_hz(audio[1].numpy(), 8000) == pytest.approx(440, abs=2)
    again = prepare("ave", src, dst, size=32, sample_rate=SR, console=quiet())
    assert again.prepared == 0 and again.already_done == 1 and len(again.failed) == 1
    with pytest.raises(ValueError, match=r"media.json: .* was prepared with .*'sample_rate': 16000.* not .*32000"):
        prepare("ave", src, dst, size=32, sample_rate=32000, console=quiet())


def test_prepare_in_workers_matches_one_worker_resumes_and_exits_1_naming_a_corrupt_clip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "raw"
    src.mkdir()
    for i in range(4):
        write_clip(src / f"clip{i}.mp4", seconds=2)
    (src / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    args = ["data", "prepare", "ave", "--src", str(src), "--size", "32"]
    assert main([*args, "--dst", str(tmp_path / "one"), "--workers", "1"]) == 1
    capsys.readouterr()
    assert main([*args, "--dst", str(tmp_path / "two"), "--workers", "2"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "ave: 4 prepared, 0 already done, 1 failed" in err and "failed" in err and "broken.mp4" in err
    for sub in ("frames", "audio"):
        for i in range(4):
            one, two = (np.load(tmp_path / d / sub / f"clip{i}.npy") for d in ("one", "two"))
            assert np.array_equal(one, two)
    assert not list((tmp_path / "two").rglob("*.tmp"))
    # resumable: a clip whose audio is missing is redone, finished ones are skipped
    (tmp_path / "two" / "audio" / "clip3.npy").unlink()
    assert main([*args, "--dst", str(tmp_path / "two"), "--workers", "2"]) == 1
    assert "ave: 1 prepared, 3 already done, 1 failed" in " ".join(capsys.readouterr().err.split())
    (src / "broken.mp4").unlink()
    assert main([*args, "--dst", str(tmp_path / "two"), "--workers", "2"]) == 0
    assert main([*args, "--dst", str(tmp_path / "two"), "--workers", "0"]) == 2
    assert "--workers must be > 0" in capsys.readouterr().err
    # another rate into the same tree would mix two kinds of array: exit 2 naming media.json
    assert main([*args, "--dst", str(tmp_path / "two"), "--sample-rate", "16000"]) == 2
    assert "media.json" in capsys.readouterr().err


def test_a_killed_decoder_fails_its_clip_and_the_other_clips_finish(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one console line per message
    src, dst = tmp_path / "raw", tmp_path / "prepared"
    src.mkdir()
    for name in ("a_killed", "clip0", "clip1", "clip2", "clip3"):
        write_clip(src / f"{name}.mp4", seconds=2)
    decode = prepare_module.decode_video

    def killed_on_one_clip(path: Path, *args: int) -> tuple[np.ndarray, np.ndarray]:
        if path.stem == "a_killed":  # as the OOM killer or `kill -9` would, in the middle of the clip
            os.kill(os.getpid(), signal.SIGKILL)
        return decode(path, *args)

    monkeypatch.setattr(prepare_module, "decode_video", killed_on_one_clip)  # forked into the workers
    args = ["data", "prepare", "ave", "--src", str(src), "--dst", str(dst), "--size", "32", "--workers", "2"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "ave: 4 prepared, 0 already done, 1 failed" in err
    assert f"failed {src / 'a_killed.mp4'}: decoder process killed by SIGKILL (out of memory?)" in err
    for sub in ("frames", "audio"):
        assert sorted(p.name for p in (dst / sub).iterdir()) == [f"clip{i}.npy" for i in range(4)]


def children(pid: int) -> set[int]:
    """The processes whose parent is `pid`, from the process table."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (a dead orphan waits for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


HANGING_PREPARE = """
import sys, time
import bench.data.prepare as prepare
from bench.cli import main

def hang(job):  # a decoder stuck in the middle of writing its output
    prepare.atomic_write(job.outputs["audio"], lambda p: (p.write_bytes(b"partial"), time.sleep(120)))

prepare.video_clip = hang
main(["data", "prepare", "ave", "--src", sys.argv[1], "--dst", sys.argv[2], "--size", "32", "--workers", "2"])
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_workers_die_with_their_parent_and_the_next_run_removes_its_partial_files(tmp_path: Path) -> None:
    src, dst = tmp_path / "raw", tmp_path / "prepared"
    src.mkdir()
    for i in range(3):
        write_clip(src / f"clip{i}.mp4", seconds=1)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    parent = subprocess.Popen([sys.executable, "-c", HANGING_PREPARE, str(src), str(dst)], env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while len(list(dst.rglob("*.tmp"))) < 2 and time.monotonic() < deadline:  # both workers are writing
            time.sleep(0.05)
        workers = children(parent.pid)
        assert len(list(dst.rglob("*.tmp"))) == 2 and len(workers) == 2
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 5
    while any(running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in workers if running(pid)]
    for pid in left:  # a failing test leaves no sleeper behind
        os.kill(pid, signal.SIGKILL)
    assert not left
    report = prepare("ave", src, dst, size=32, console=quiet())  # the settings of the killed run
    assert report.prepared == 3 and not report.failed
    assert not list(dst.rglob("*.tmp"))


def test_a_rerun_removes_the_temporary_files_a_killed_run_left(tmp_path: Path) -> None:
    src, dst = tmp_path / "raw", tmp_path / "prepared"
    src.mkdir()
    write_clip(src / "clip0.mp4", seconds=1)
    partial = [dst / "frames" / ".clip0.npy.4242.tmp", dst / "audio" / ".clip1.npy.17.tmp", dst / ".media.json.9.tmp"]
    for path in partial:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    (dst / "notes.tmp").write_text("not ours")
    console = Console(record=True, file=open(os.devnull, "w"), width=400)  # noqa: SIM115
    prepare("ave", src, dst, size=32, sample_rate=SR, console=console)
    assert [p for p in partial if p.exists()] == [] and (dst / "notes.tmp").read_text() == "not ours"
    assert f"removed 3 partial file(s) that an interrupted run left in {dst}" in console.export_text()


def test_prepare_avsbench_writes_waveform_per_frame(tmp_path: Path) -> None:
    src, dst = tmp_path / "raw", tmp_path / "prepared"
    base = src / "Single-source" / "s4_data"
    (base / "audio_wav/train/dog").mkdir(parents=True)
    (base / "visual_frames/train/dog/vA").mkdir(parents=True)
    (base / "visual_frames/train/dog/vA/vA_1.png").write_bytes(b"png")
    (src / "Single-source/s4_meta_data.csv").write_text("name,start,category,split\nvA,0,dog,train\n")
    write_clip(base / "audio_wav/train/dog/vA.wav", seconds=5, container_format="wav")
    report = prepare("avsbench", src, dst, console=quiet())
    assert report.prepared == 1 and not report.failed
    out = dst / "Single-source/s4_data"
    pcm = np.load(out / "audio_wave/train/dog/vA.npy")
    assert pcm.shape == (5, 32000) and pcm.dtype == np.int16  # the 16 kHz wav at the default 32 kHz
    assert peak_hz(pcm[2].astype(np.float64), 32000) == pytest.approx(440, abs=2)
    assert (out / "visual_frames/train/dog/vA/vA_1.png").is_file()
    assert (dst / "Single-source/s4_meta_data.csv").is_file()


def test_prepare_rejects_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dataset must be one of"):
        prepare("kinetics", tmp_path, tmp_path / "out")  # type: ignore[arg-type]
