"""Media preparation: decode raw videos once into the small arrays the loaders read.

`prepare("ave" | "llp", src, dst)` decodes every video under `src` (*.mp4, *.mkv,
*.webm, *.avi) with PyAV into the layout of bench.data.media:
    dst/media.json           {"dataset", "sample_rate", "size"}: what the arrays hold
    dst/frames/{video}.npy   uint8 [10, size, size, 3]    the frame nearest each 1 s segment's centre
    dst/audio/{video}.npy    int16 [10, sample_rate]      mono waveform, one second per segment
and copies the annotation files found under `src` (Annotations.txt and the split
lists for AVE, the AVVP_*.csv files for LLP) to `dst`.
`prepare("avsbench", src, dst)` mirrors the AVSBench release (already frame-extracted):
it copies the meta CSVs, visual_frames and gt_masks, and decodes each clip's
audio_wav/.../{video}.wav to audio_wave/.../{video}.npy, int16 [5, sample_rate].
Audio is stored as waveform, not as features: every tower computes its own front-end
(bench.frontends) from it, so one prepared tree serves every preset and method. The
default rate, 32 kHz, is the highest any preset's tower eats (HTS-AT); loaders resample
down. Each clip is one `ClipJob`, run by `run_clip` in one of `workers` processes.
Outputs are written atomically (temporary file, then os.replace), finished outputs
are skipped on a rerun, and a file that cannot be decoded fails with its reason
(the other clips go on; the report lists the failures), as does a clip whose worker
is killed (bench.data.clip_pool). A rerun removes the temporary files that a run
killed with -9 left.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import av
import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench.data.clip_pool import run_in_workers
from bench.data.media import MEDIA_INFO

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi")
ANNOTATIONS = {
    "ave": ("Annotations.txt", "trainSet.txt", "valSet.txt", "testSet.txt"),
    "llp": ("AVVP_train.csv", "AVVP_val_pd.csv", "AVVP_test_pd.csv", "AVVP_eval_audio.csv", "AVVP_eval_visual.csv"),
}
SEGMENTS = {"ave": 10, "llp": 10, "avsbench": 5}
PARTIAL_FILE = re.compile(r"\..+\.\d+\.tmp")  # atomic_write's temporary `.{name}.{pid}.tmp`


@dataclass
class PrepareReport:
    """What a `prepare` call did: counts and the (file, reason) of every input that failed."""

    prepared: int = 0
    already_done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class MediaSpec:
    """What every clip of a dataset becomes: segments, frame side and audio settings."""

    segments: int
    size: int
    sample_rate: int


@dataclass(frozen=True)
class ClipJob:
    """One raw clip and the files it yields (by role). `work` is a module-level function
    of the job, so that the job pickles into a worker process; what is stored per clip
    is `work`'s business alone."""

    source: Path
    outputs: dict[str, Path]
    work: Callable[[ClipJob], None]
    spec: MediaSpec

    def done(self) -> bool:
        return all(p.is_file() for p in self.outputs.values())


def segment_waves(wave: np.ndarray, segments: int, sample_rate: int) -> np.ndarray:
    """int16 [segments, sample_rate]: a float waveform in [-1, 1] padded with silence or cut
    to `segments` seconds, as 16-bit PCM (what the clip's own audio holds, at a quarter of
    float32's bytes)."""
    total = segments * sample_rate
    wave = np.pad(wave[:total], (0, max(0, total - len(wave))))
    pcm = np.round(np.clip(wave, -1.0, 1.0) * 32767.0).astype(np.int16)
    return pcm.reshape(segments, sample_rate)


def decode_audio(container: av.container.InputContainer, sample_rate: int) -> np.ndarray:
    """The first audio stream as float32 mono at `sample_rate`."""
    if not container.streams.audio:
        raise ValueError("no audio stream")
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks = []
    for frame in container.decode(audio=0):
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    if not chunks:
        raise ValueError("audio stream holds no samples")
    return np.concatenate(chunks).astype(np.float32)


def decode_video(path: Path, segments: int, size: int, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 [segments, size, size, 3] (nearest each segment's centre) and mono audio."""
    centres = np.arange(segments) + 0.5
    best: list[tuple[float, av.VideoFrame | None]] = [(math.inf, None)] * segments
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        for frame in container.decode(video=0):
            if frame.time is None:
                continue
            gap = np.abs(centres - frame.time)
            best = [(g, frame) if g < b[0] else b for g, b in zip(gap, best, strict=True)]
        if best[0][1] is None:
            raise ValueError("video stream holds no frames")
    with av.open(str(path)) as container:
        audio = decode_audio(container, sample_rate)
    frames = [
        np.asarray(f.to_image().convert("RGB").resize((size, size), Image.BILINEAR))  # type: ignore[union-attr]
        for _, f in best
    ]
    return np.stack(frames), audio


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary sibling, then rename, so a crash leaves no torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_partial_files(dst: Path) -> int:
    """Remove the temporary files of `atomic_write` under `dst` (a run killed with -9 cannot
    remove its own); how many there were."""
    partial = [p for p in dst.rglob(".*.tmp") if PARTIAL_FILE.fullmatch(p.name)]
    for p in partial:
        p.unlink(missing_ok=True)
    return len(partial)


def _save_npy(array: np.ndarray) -> Callable[[Path], None]:
    def write(p: Path) -> None:
        with p.open("wb") as f:
            np.save(f, array)

    return write


def video_clip(job: ClipJob) -> None:
    """AVE / LLP: one frame and one second of waveform per segment of a video."""
    t = job.spec
    frames, audio = decode_video(job.source, t.segments, t.size, t.sample_rate)
    atomic_write(job.outputs["audio"], _save_npy(segment_waves(audio, t.segments, t.sample_rate)))
    atomic_write(job.outputs["frames"], _save_npy(frames))


def wav_clip(job: ClipJob) -> None:
    """AVSBench: one second of waveform per frame of a clip's wav."""
    t = job.spec
    with av.open(str(job.source)) as container:
        audio = decode_audio(container, t.sample_rate)
    atomic_write(job.outputs["audio"], _save_npy(segment_waves(audio, t.segments, t.sample_rate)))


def write_media_info(dst: Path, dataset: str, spec: MediaSpec) -> None:
    """dst/media.json says what the arrays hold; resuming with other settings would mix two
    kinds of array in one tree, so it is refused (ValueError naming the file and the values)."""
    info = {"dataset": dataset, "sample_rate": spec.sample_rate, "size": spec.size}
    path = dst / MEDIA_INFO
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"{path}: unreadable ({e}); remove it to prepare again") from e
        if old != info:
            raise ValueError(
                f"{path}: {dst} was prepared with {old}, not {info}; use another --dst or the same settings"
            )
        return
    atomic_write(path, lambda p: p.write_text(json.dumps(info) + "\n", encoding="utf-8"))


def run_clip(job: ClipJob) -> str | None:
    """Run one job: None, or the reason the clip could not be prepared."""
    try:
        job.work(job)
    except (av.FFmpegError, ValueError, OSError) as e:
        return str(e) or type(e).__name__
    return None


def _jobs_videos(src: Path, dst: Path, spec: MediaSpec) -> list[ClipJob]:
    """One job per raw video, named after its file."""
    return [
        ClipJob(path, {sub: dst / sub / f"{path.stem}.npy" for sub in ("frames", "audio")}, video_clip, spec)
        for path in sorted(p for p in src.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    ]


def _jobs_avsbench(src: Path, dst: Path, spec: MediaSpec) -> list[ClipJob]:
    """Copy the release's frames, masks and meta; one job per audio_wav clip."""
    jobs = []
    for folder, meta, data in (("Single-source", "s4_meta_data.csv", "s4_data"),
                               ("Multi-sources", "ms3_meta_data.csv", "ms3_data")):  # fmt: skip
        if not (src / folder).is_dir():
            continue
        if (src / folder / meta).is_file():
            atomic_write(dst / folder / meta, lambda p, s=src / folder / meta: shutil.copyfile(s, p))
        for sub in ("visual_frames", "gt_masks"):
            if (src / folder / data / sub).is_dir():
                shutil.copytree(src / folder / data / sub, dst / folder / data / sub, dirs_exist_ok=True)
        wav_root = src / folder / data / "audio_wav"
        for wav in sorted(wav_root.rglob("*.wav")):
            out = dst / folder / data / "audio_wave" / wav.relative_to(wav_root).with_suffix(".npy")
            jobs.append(ClipJob(wav, {"audio": out}, wav_clip, spec))
    return jobs


def prepare(
    dataset: Literal["ave", "llp", "avsbench"],
    src: Path,
    dst: Path,
    *,
    size: int = 224,
    sample_rate: int = 32000,
    workers: int = 1,
    console: Console | None = None,
) -> PrepareReport:
    """Prepare `dataset` from the raw directory `src` into `dst` (see the module doc) in
    `workers` processes; resumable. Returns the counts and the failed clips with their reasons."""
    if dataset not in SEGMENTS:
        raise ValueError(f"dataset must be one of {', '.join(SEGMENTS)}, got {dataset!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"source directory {src} does not exist")
    console = console or Console(stderr=True, soft_wrap=True)
    dst.mkdir(parents=True, exist_ok=True)
    removed = remove_partial_files(dst)
    if removed:
        console.print(f"removed {removed} partial file(s) that an interrupted run left in {dst}")
    spec = MediaSpec(SEGMENTS[dataset], size, sample_rate)
    write_media_info(dst, dataset, spec)
    if dataset == "avsbench":
        jobs = _jobs_avsbench(src, dst, spec)
    else:
        for name in ANNOTATIONS[dataset]:
            found = sorted(src.rglob(name))
            if found:
                atomic_write(dst / name, lambda p, s=found[0]: shutil.copyfile(s, p))
        jobs = _jobs_videos(src, dst, spec)
    pending = [job for job in jobs if not job.done()]
    report = PrepareReport(already_done=len(jobs) - len(pending))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())  # fmt: skip
    # refreshed here, not by a thread of its own: workers are forked while it shows (run_in_workers)
    with Progress(*columns, console=console, transient=True, auto_refresh=False) as progress:
        bar = progress.add_task(f"prepare {dataset}", total=len(jobs), completed=report.already_done)
        with closing(run_in_workers(run_clip, pending, workers, on_wait=progress.refresh)) as outcomes:
            for job, reason in outcomes:
                if reason is None:
                    report.prepared += 1
                else:
                    report.failed.append((str(job.source), reason))
                    console.print(f"[red]failed[/] {job.source}: {reason}")
                progress.advance(bar)
                progress.refresh()
    report.failed.sort()
    console.print(
        f"{dataset}: {report.prepared} prepared, {report.already_done} already done, {len(report.failed)} failed"
    )
    for path, reason in report.failed:
        console.print(f"  [red]failed[/] {path}: {reason}")
    return report
