"""scripts/rehearsal.py on the smoke preset: its clips prepare, its settings, its stopped and
resumed run, and its report."""

from __future__ import annotations

import importlib.util
import json
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from bench.data.ave import load_ave
from bench.data.core import DataShape
from bench.data.prepare import prepare

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "rehearsal.py"
spec = importlib.util.spec_from_file_location("rehearsal", SCRIPT)
assert spec is not None and spec.loader is not None
rehearsal = importlib.util.module_from_spec(spec)
sys.modules["rehearsal"] = rehearsal  # dataclasses look their module up by name
spec.loader.exec_module(rehearsal)


def test_its_clips_are_an_ave_release_that_bench_data_prepare_reads(tmp_path: Path) -> None:
    rehearsal.write_raw_ave(tmp_path / "raw", {"train": 2, "val": 1, "test": 1})
    report = prepare("ave", tmp_path / "raw", tmp_path / "prepared", size=32, sample_rate=8000,
                     console=Console(file=open("/dev/null", "w")))  # fmt: skip  # noqa: SIM115
    assert report.prepared == 4 and not report.failed
    data = load_ave(tmp_path / "prepared", DataShape(image_size=32, sample_rate=8000))
    assert [len(data[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    # clip 1: Church bell (category 1 of the 4 sorted) over segments [1, 6); background 28 elsewhere
    assert data["train"][1]["label"].tolist() == [28, 1, 1, 1, 1, 1, 28, 28, 28, 28]
    frames = np.load(tmp_path / "prepared" / "frames" / "clip0000.npy")
    assert frames.shape == (10, 32, 32, 3) and frames.std() > 10  # a moving square, not a blank
    audio = np.load(tmp_path / "prepared" / "audio" / "clip0001.npy")
    spectrum = np.abs(np.fft.rfft(audio[3].astype(np.float64)))
    assert spectrum.argmax() == pytest.approx(440, abs=2)  # clip 1's tone, 220 Hz x 2, in 1 s at 8 kHz


def test_settings_cpu_by_default_and_cuda_bf16_at_50_steps_of_the_presets_batch_with_gpu() -> None:
    cpu = rehearsal.settings(rehearsal.parse(["--report", "r"]))
    assert (cpu.device, cpu.amp, cpu.batch_size, cpu.train_clips, cpu.preset) == ("cpu", "off", 1, 2, "paper")
    assert cpu.methods == ["frozen", "mettle", "lst", "lora", "avmoe", "lavish", "dgsct", "full"]
    assert cpu.overrides()[:3] == ["towers.audio=random", "towers.visual=random", "towers.shared=random"]
    gpu = rehearsal.settings(rehearsal.parse(["--report", "r", "--gpu", "--preset", "smoke"]))
    assert (gpu.device, gpu.amp, gpu.batch_size, gpu.train_clips) == ("cuda", "bf16", None, 50 * 8)
    assert "train.amp=bf16" in gpu.overrides() and not any(o.startswith("train.batch_size") for o in gpu.overrides())
    weighted = rehearsal.settings(rehearsal.parse(["--report", "r", "--weights", "audio=/w/htsat.ckpt"]))
    assert weighted.overrides()[:3] == ["towers.audio=/w/htsat.ckpt", "towers.visual=random", "towers.shared=random"]


@pytest.mark.slow
def test_the_gpu_variant_on_cpu_trains_stops_resumes_and_reports(tmp_path: Path) -> None:
    """The --gpu code path with the device and amp a CPU has (bf16 autocast is CUDA only)."""
    argv = ["--report", str(tmp_path / "report"), "--work", str(tmp_path / "work"), "--gpu", "--device", "cpu",
            "--amp", "off", "--preset", "smoke", "--methods", "frozen", "--resume-method", "frozen",
            "--steps", "2", "--batch-size", "1"]  # fmt: skip
    assert rehearsal.main(argv) == 0
    report = json.loads((tmp_path / "report" / "rehearsal.json").read_text())
    frozen = report["methods"]["frozen"]
    assert frozen["status"] == "ok" and frozen["steps"] == 2 and frozen["step_s"] > 0
    assert frozen["peak_rss_bytes"] > 100 * 2**20 and 0 <= frozen["data_wait_fraction"] <= 1
    assert frozen["checkpoint_bytes"] > 0 and frozen["resumed_equal"] is True
    resume = report["resume"]
    assert resume["stopped_exit_code"] == 128 + signal.SIGTERM and resume["checkpoint_step"] == 1
    assert resume["resumed_steps"] == 1 and resume["differing"] == []
    text = (tmp_path / "report" / "README.md").read_text()
    assert report["command"] in text and "| frozen | ok | 2 |" in text
    assert "Record equal to the uninterrupted run's (metrics, val_history, best_epoch): yes." in text
