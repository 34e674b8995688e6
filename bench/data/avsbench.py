"""AVSBench (S4 and MS3) read from the release layout.

    root/Single-source/s4_meta_data.csv            comma-separated, header; column 0 video,
                                                   column 2 category, a `split` column
    root/Single-source/s4_data/visual_frames/{split}/{category}/{video}/{video}_{i}.png   i = 1..5
    root/Single-source/s4_data/audio_wave/{split}/{category}/{video}.npy
    root/Single-source/s4_data/gt_masks/{split}/{category}/{video}/{video}_{i}.png  (train: i = 1 only)
    root/Multi-sources/ms3_meta_data.csv           column 0 video, a `split` column
    root/Multi-sources/ms3_data/visual_frames/{video}/{video}.mp4_{i}.png
    root/Multi-sources/ms3_data/audio_wave/{split}/{video}.npy
    root/Multi-sources/ms3_data/gt_masks/{split}/{video}/{video}_{i}.png
    root/media.json                                {"sample_rate": R, ...}
`bench data prepare avsbench` writes audio_wave (int16 [5, R], one second of waveform per
frame) from the release's audio_wav and copies the rest; the release's VGGish log-mels
(audio_log_mel/*.pkl) are not read: every tower makes its own front-end from the waveform.
Masks are PNGs, > 0 = object, of the same size as their frame. Items: audio [5, S_a]
waveform at the preset's rate, visual [5, 3, S, S], mask [5, S, S] bool and
frame_weight [5] (S4 train: first frame only).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from bench.data.checks import check_npy, image_size
from bench.data.core import SPLITS, Batch, DataShape
from bench.data.errors import DataError, raise_all
from bench.data.media import audio_tensor, load_array, media_rate, visual_tensor
from bench.data.missing import Absent, MissingMedia, SplitMedia, leave_out, missing_error
from bench.frontends import resampler

FRAMES = 5
VARIANTS = {
    "s4": ("Single-source", "s4_meta_data.csv", "s4_data"),
    "ms3": ("Multi-sources", "ms3_meta_data.csv", "ms3_data"),
}


@dataclass(frozen=True)
class AvsVideo:
    frames: list[Path]
    audio: Path
    masks: list[Path]  # as many as supervised frames, from the first


def read_meta(path: Path, variant: str) -> dict[str, list[tuple[str, str]]]:
    """(video, category) per split from a meta CSV (category '' for MS3)."""
    if not path.is_file():
        raise DataError(path, "file not found")
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    need = 3 if variant == "s4" else 1
    if not rows or "split" not in rows[0] or len(rows[0]) < need:
        raise DataError(path, f"expected a comma-separated header with a 'split' column and >= {need} columns", 1)
    col = rows[0].index("split")
    out: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    for line, row in enumerate(rows[1:], 2):
        if not row:
            continue
        if len(row) != len(rows[0]):
            raise DataError(path, f"expected {len(rows[0])} comma-separated fields, got {len(row)}", line)
        if row[col] not in out:
            raise DataError(path, f"split must be one of {', '.join(SPLITS)}, got {row[col]!r}", line)
        out[row[col]].append((row[0], row[2] if variant == "s4" else ""))
    for split, videos in out.items():
        if not videos:
            raise DataError(path, f"the {split} split is empty: no row has split {split!r}")
    return out


def video_paths(base: Path, variant: str, split: str, video: str, category: str) -> AvsVideo:
    n_masks = 1 if variant == "s4" and split == "train" else FRAMES
    if variant == "s4":
        frames_dir = base / "visual_frames" / split / category / video
        frames = [frames_dir / f"{video}_{i}.png" for i in range(1, FRAMES + 1)]
        audio = base / "audio_wave" / split / category / f"{video}.npy"
        masks_dir = base / "gt_masks" / split / category / video
    else:
        frames = [base / "visual_frames" / video / f"{video}.mp4_{i}.png" for i in range(1, FRAMES + 1)]
        audio = base / "audio_wave" / split / f"{video}.npy"
        masks_dir = base / "gt_masks" / split / video
    return AvsVideo(frames, audio, [masks_dir / f"{video}_{i}.png" for i in range(1, n_masks + 1)])


def load_png(path: Path, mode: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode))
    except OSError as e:
        raise DataError(path, f"unreadable image ({e})") from e


def video_errors(video: AvsVideo, rate: int) -> list[DataError]:
    """What is wrong with a video's files, read from their headers: audio not int16 [5, rate]
    or cut short, images missing, unreadable or cut short, masks or frames of another size
    than the first frame."""
    errors = []
    try:
        check_npy(video.audio, (FRAMES, rate), np.int16)
    except DataError as e:
        errors.append(e)
    first: tuple[Path, tuple[int, int]] | None = None  # the first readable image, that the others must match
    for p in (*video.frames, *video.masks):
        try:
            size = image_size(p)
        except DataError as e:
            errors.append(e)
            continue
        first = first or (p, size)
        if size != first[1]:
            (w, h), (fw, fh) = size, first[1]
            errors.append(DataError(p, f"image is {w}x{h} but {first[0].name} is {fw}x{fh} (width x height)"))
    return errors


class AvsBenchDataset(Dataset):
    """`missing`: the listed videos left out for want of media (bench.data.missing)."""

    def __init__(self, videos: list[AvsVideo], shape: DataShape, rate: int, missing: list[str]) -> None:
        self.videos, self.shape, self.rate, self.missing = videos, shape, rate, missing
        self.resample = resampler(rate, shape.sample_rate)  # filters built once, not per item

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> Batch:
        v, s = self.videos[i], self.shape.image_size
        frames = np.stack([load_png(p, "RGB") for p in v.frames])
        mask = torch.zeros(FRAMES, s, s, dtype=torch.bool)
        for j, p in enumerate(v.masks):
            m = load_png(p, "L")
            if m.shape != frames.shape[1:3]:
                raise DataError(p, f"mask is {m.shape[1]}x{m.shape[0]} but its frame is "
                                f"{frames.shape[2]}x{frames.shape[1]} (width x height)")  # fmt: skip
            m = torch.from_numpy(m > 0).float()[None, None]
            mask[j] = F.interpolate(m, size=(s, s), mode="nearest")[0, 0] > 0.5
        weight = torch.zeros(FRAMES)
        weight[: len(v.masks)] = 1.0
        return {
            "audio": audio_tensor(load_array(v.audio, (FRAMES, self.rate), np.int16), self.resample),
            "visual": visual_tensor(frames, s),
            "mask": mask,
            "frame_weight": weight,
        }


def absent_media(video: AvsVideo) -> Path | None:
    """The video's frames folder or audio file when it is not there: a video without
    prepared media. (Its other files missing is a broken tree: video_errors.)"""
    return next((p for p in (video.frames[0].parent, video.audio) if not p.exists()), None)


def load_avsbench(
    root: Path, variant: str, shape: DataShape, missing_media: MissingMedia = "skip"
) -> dict[str, Dataset]:
    """The train/val/test splits of S4 (`variant="s4"`) or MS3 (`"ms3"`) under the AVSBench root;
    listed videos without prepared media are left out or refused as `missing_media` says."""
    folder, meta, data = VARIANTS[variant]
    meta_file = root / folder / meta
    splits = read_meta(meta_file, variant)
    base, rate = root / folder / data, media_rate(root)
    present: dict[str, list[AvsVideo]] = {}
    media: dict[str, SplitMedia] = {}
    for split, rows in splits.items():
        present[split], absent = [], []
        for video, category in rows:
            paths = video_paths(base, variant, split, video, category)
            if (gone := absent_media(paths)) is None:
                present[split].append(paths)
            else:
                absent.append(Absent(video, (gone,)))
        media[split] = SplitMedia(meta_file, len(rows), absent)
    errors = [e for videos in present.values() for video in videos for e in video_errors(video, rate)]
    if missing_media == "error" and (refused := missing_error(media)) is not None:
        errors.insert(0, refused)
    raise_all(root / folder, errors)
    for split, split_media in media.items():
        leave_out(split, split_media)
    return {
        split: AvsBenchDataset(videos, shape, rate, [a.video for a in media[split].absent])
        for split, videos in present.items()
    }
