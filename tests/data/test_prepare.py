"""`prepare` on generated clips: frame count and size, log-mel shape, corrupt clips, workers, resume."""

from __future__ import annotations

import pickle
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from rich.console import Console

from bench.cli import main
from bench.data.prepare import log_mel, mel_filterbank, prepare

FPS, SR = 10, 16000


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


def test_prepare_ave_writes_frames_and_log_mels(tmp_path: Path) -> None:
    src, dst = tmp_path / "raw", tmp_path / "prepared"
    src.mkdir()
    write_clip(src / "clipA.mp4")
    (src / "clipB.mp4").write_bytes(b"not a video at all")
    (src / "Annotations.txt").write_text("Category&VideoID&Quality&StartTime&EndTime\nBanjo&clipA&good&0&3\n")
    report = prepare("ave", src, dst, size=32, console=quiet())
    assert report.prepared == 1 and report.already_done == 0
    assert [Path(f).name for f, _ in report.failed] == ["clipB.mp4"] and report.failed[0][1]
    frames = np.load(dst / "frames" / "clipA.npy")
    mel = np.load(dst / "logmel" / "clipA.npy")
    assert frames.shape == (10, 32, 32, 3) and frames.dtype == np.uint8
    assert mel.shape == (10, 64, 100) and mel.dtype == np.float32
    assert frames[0, :, :, 0].max() > 150  # the red square is there
    # the 440 Hz tone is loud in the first three seconds and the padding is silent
    assert mel[:3].max(1).mean() > mel[5:].max(1).mean() + 10
    assert (dst / "Annotations.txt").read_text().startswith("Category")
    assert not list(dst.rglob("*.tmp"))
    again = prepare("ave", src, dst, size=32, console=quiet())
    assert again.prepared == 0 and again.already_done == 1 and len(again.failed) == 1


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
    for sub in ("frames", "logmel"):
        for i in range(4):
            one, two = (np.load(tmp_path / d / sub / f"clip{i}.npy") for d in ("one", "two"))
            assert np.array_equal(one, two)
    assert not list((tmp_path / "two").rglob("*.tmp"))
    # resumable: a clip whose log-mel is missing is redone, finished ones are skipped
    (tmp_path / "two" / "logmel" / "clip3.npy").unlink()
    assert main([*args, "--dst", str(tmp_path / "two"), "--workers", "2"]) == 1
    assert "ave: 1 prepared, 3 already done, 1 failed" in " ".join(capsys.readouterr().err.split())
    (src / "broken.mp4").unlink()
    assert main([*args, "--dst", str(tmp_path / "two"), "--workers", "2"]) == 0
    assert main([*args, "--dst", str(tmp_path / "two"), "--workers", "0"]) == 2
    assert "--workers must be > 0" in capsys.readouterr().err


def test_prepare_avsbench_recomputes_log_mels(tmp_path: Path) -> None:
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
    with (out / "audio_log_mel/train/dog/vA.pkl").open("rb") as f:
        mel = pickle.load(f)
    assert mel.shape == (5, 1, 100, 64)
    assert (out / "visual_frames/train/dog/vA/vA_1.png").is_file()
    assert (dst / "Single-source/s4_meta_data.csv").is_file()


def test_mel_filterbank_and_tone_peak() -> None:
    fb = mel_filterbank(512, 64, SR)
    assert fb.shape == (64, 257) and (fb >= 0).all() and (fb.sum(0)[1:-1] > 0).all()
    t = torch.arange(SR) / SR
    spec = log_mel(torch.sin(2 * torch.pi * 1000 * t), SR, 64)
    assert spec.shape == (64, 101)
    peak = spec.mean(1).argmax().item()
    centres = fb.argmax(1) * (SR / 2) / 256
    assert centres[peak] == pytest.approx(1000, rel=0.1)


def test_prepare_rejects_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dataset must be one of"):
        prepare("kinetics", tmp_path, tmp_path / "out")  # type: ignore[arg-type]
