"""Timing: `bench data prepare ave` with one worker against several, on generated clips.

Writes `--clips` 10-second clips shaped like downloaded ones: 1280x720 H.264 at 30 fps and
2.5 Mbit/s (a moving block over a drifting gradient under per-pixel noise, so that the
encoder spends its bit rate; one slice per frame, as the ffmpeg command line encodes, so
that decoding takes one core as a downloaded clip's does), stereo AAC at 44.1 kHz; four
distinct clips, copied to make up the number. `--clip FILE` copies a given clip instead
(a downloaded one, say). Then runs the real command,
`python -m bench data prepare ave --workers N`, into a fresh folder `--repeats` times per
N, alternating the worker counts so that a busy machine slows both alike, and prints each
wall time, the medians and their ratio. A timing, not a test: the figures depend on the
machine and on what else runs on it.

    python scripts/time_prepare.py --clips 16 --workers 1,2 --repeats 3 [--clip FILE] [--work /tmp/prepare-timing]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

FPS, SAMPLE_RATE, SECONDS, WIDTH, HEIGHT, BIT_RATE = 30, 44100, 10, 1280, 720, 2_500_000
DISTINCT = 4  # clips generated (tens of seconds each); the rest are copies


def write_clip(path: Path, seed: int) -> None:
    """One clip with a tone whose pitch depends on `seed`."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.thread_type = "FRAME"  # one slice per frame, as the ffmpeg command line encodes (PyAV slices by default)
        video.width, video.height, video.pix_fmt, video.bit_rate = WIDTH, HEIGHT, "yuv420p", BIT_RATE
        audio = out.add_stream("aac", rate=SAMPLE_RATE)
        audio.layout = "stereo"
        ramp = np.arange(WIDTH)[None, :, None]
        for i in range(SECONDS * FPS):
            img = np.broadcast_to(((ramp + 2 * i) % 256 // 2).astype(np.uint8), (HEIGHT, WIDTH, 3)).copy()
            img += rng.integers(0, 24, (HEIGHT, WIDTH, 1), dtype=np.uint8)
            x = (7 * i) % (WIDTH - 64)
            img[100:164, x : x + 64] = (230, 40, 30)
            out.mux(video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(video.encode())
        t = np.arange(SECONDS * SAMPLE_RATE) / SAMPLE_RATE
        wave = (0.3 * np.sin(2 * np.pi * (220 + 40 * seed % 400) * t)).astype(np.float32)
        for s in range(0, len(wave), 1024):
            frame = av.AudioFrame.from_ndarray(np.stack([wave[s : s + 1024]] * 2), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, s, Fraction(1, SAMPLE_RATE)
            out.mux(audio.encode(frame))
        out.mux(audio.encode())


def prepare_seconds(src: Path, dst: Path, workers: int) -> float:
    shutil.rmtree(dst, ignore_errors=True)
    cmd = [sys.executable, "-m", "bench", "data", "prepare", "ave", "--src", str(src), "--dst", str(dst)]
    start = time.perf_counter()
    subprocess.run([*cmd, "--workers", str(workers)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clip", type=Path, default=None, help="copy this clip instead of generating clips")
    parser.add_argument("--work", type=Path, default=None, help="folder for the clips and outputs (default: temp)")
    args = parser.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="prepare-timing-"))
    src = work / "raw"
    src.mkdir(parents=True, exist_ok=True)
    for i in range(args.clips):
        clip = src / f"clip{i:03d}.mp4"
        if clip.is_file():
            continue
        if args.clip is not None:
            shutil.copyfile(args.clip, clip)
        elif i < DISTINCT:
            write_clip(clip, seed=i)
        else:
            shutil.copyfile(src / f"clip{i % DISTINCT:03d}.mp4", clip)
    times: dict[int, list[float]] = {w: [] for w in counts}
    for r in range(args.repeats):
        for w in counts:
            times[w].append(prepare_seconds(src, work / f"out{w}", w))
            print(f"repeat {r + 1}, --workers {w}: {times[w][-1]:.2f} s", flush=True)
    base = statistics.median(times[counts[0]])
    for w in counts:
        median = statistics.median(times[w])
        print(f"--workers {w}: median {median:.2f} s over {args.repeats}, {base / median:.2f}x --workers {counts[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
