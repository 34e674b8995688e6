"""Prepared media shared by the AVE and LLP loaders, and tensor conversion.

Prepared layout (written by bench.data.prepare):
    root/media.json           {"sample_rate": R, ...}: what the arrays hold
    root/frames/{video}.npy   uint8 [T, H, W, 3]  one RGB frame at each segment's centre
    root/audio/{video}.npy    int16 [T, R]        one second of mono waveform per segment
Frames are resized to the preset's image size and normalised with the ImageNet
statistics the pretrained towers expect. Audio stays waveform, resampled to the
preset's rate: each tower makes its own front-end from it (bench.frontends), as it
does from the synthetic waveforms.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from bench.data.checks import check_array, check_npy
from bench.data.core import Batch, DataShape
from bench.data.errors import DataError, raise_all
from bench.data.missing import Absent, MissingMedia, SplitMedia, leave_out, missing_error
from bench.frontends import resampler

MEDIA_INFO = "media.json"

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def visual_tensor(frames: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> normalised float32 [T, 3, size, size]."""
    x = torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def audio_tensor(pcm: np.ndarray | torch.Tensor, resample: torch.nn.Module) -> torch.Tensor:
    """int16 [T, rate] -> float32 [T, rate'] in [-1, 1], the synthetic sources' form, through
    `resample` (bench.frontends.resampler from the tree's rate to the preset's)."""
    return resample(torch.as_tensor(pcm).float() / 32768.0)


def media_rate(root: Path) -> int:
    """The audio sample rate of a prepared tree, from its media.json; DataError when absent
    (a tree prepared before audio was kept as waveform holds log-mels: prepare it again)."""
    path = root / MEDIA_INFO
    if not path.is_file():
        raise DataError(path, "missing: not a tree written by `bench data prepare` (trees from before waveform "
                        "audio hold log-mels; prepare again)")  # fmt: skip
    try:
        rate = json.loads(path.read_text(encoding="utf-8"))["sample_rate"]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(path, f"expected a JSON object with an integer 'sample_rate' ({e!r})") from e
    if not isinstance(rate, int) or rate <= 0:
        raise DataError(path, f"sample_rate must be a positive integer, got {rate!r}")
    return rate


def load_array(path: Path, shape: tuple[int | None, ...], dtype: type) -> np.ndarray:
    """Load a .npy of exactly `dtype` whose shape matches `shape` (None: any size), else
    DataError (see bench.data.checks.check_array)."""
    if not path.is_file():
        raise DataError(path, "missing prepared media file (run `bench data prepare`)")
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(path, f"unreadable .npy ({e})") from e
    check_array(path, x.shape, x.dtype, shape, dtype)
    return x


def media_files(root: Path, name: str) -> tuple[Path, Path]:
    """The prepared frames and audio of the media stored as `name`."""
    return root / "frames" / f"{name}.npy", root / "audio" / f"{name}.npy"


def media_name(root: Path, video: str, names: tuple[str, ...]) -> str | Absent:
    """The first of `names` whose frames and audio are both prepared under `root`; else the
    video as Absent, with the first missing file of every name."""
    missing = []
    for name in names:
        absent = [p for p in media_files(root, name) if not p.is_file()]
        if not absent:
            return name
        missing.append(absent[0])
    return Absent(video, tuple(missing))


def clip_errors(root: Path, name: str, segments: int, rate: int) -> list[DataError]:
    """What is wrong with a clip's prepared frames and audio, read from their headers."""
    errors = []
    for path, shape, dtype in (
        (root / "frames" / f"{name}.npy", (segments, None, None, 3), np.uint8),
        (root / "audio" / f"{name}.npy", (segments, rate), np.int16),
    ):
        try:
            check_npy(path, shape, dtype)
        except DataError as e:
            errors.append(e)
    return errors


class PreparedAVDataset(Dataset):
    """Videos read lazily from the prepared layout, under their media `names`; targets held
    as tensors [N, ...]. Items have the keys of the synthetic TensorAVDataset items.
    `missing`: the listed videos left out for want of media (bench.data.missing)."""

    def __init__(
        self,
        root: Path,
        names: list[str],
        targets: dict[str, torch.Tensor],
        shape: DataShape,
        segments: int,
        rate: int,
        missing: list[str],
    ) -> None:
        self.root, self.names, self.targets = root, names, targets
        self.shape, self.segments, self.rate = shape, segments, rate
        self.missing = missing
        self.resample = resampler(rate, shape.sample_rate)  # filters built once, not per item

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Batch:
        v, t = self.names[i], self.segments
        frames = load_array(self.root / "frames" / f"{v}.npy", (t, None, None, 3), np.uint8)
        pcm = load_array(self.root / "audio" / f"{v}.npy", (t, self.rate), np.int16)
        return {
            "audio": audio_tensor(pcm, self.resample),
            "visual": visual_tensor(frames, self.shape.image_size),
            **{k: x[i] for k, x in self.targets.items()},
        }


@dataclass(frozen=True)
class Listing:
    """A split as its file lists it: the videos, in order, and their targets [N, ...]."""

    file: Path
    videos: list[str]
    targets: dict[str, torch.Tensor]


def prepared_splits(
    root: Path,
    listings: dict[str, Listing],
    shape: DataShape,
    segments: int,
    missing_media: MissingMedia,
    aliases: Callable[[str], tuple[str, ...]] = lambda video: (),
) -> dict[str, Dataset]:
    """A PreparedAVDataset per split, built once the media of every listed video of every
    split is found and its headers checked (shape, dtype, size); else one DataError naming
    every bad file. A video with absent media is left out of its split or refused, as
    `missing_media` says (bench.data.missing). `aliases` gives the other names a video's
    media may be stored under (tried after the video's own)."""
    rate = media_rate(root)
    names: dict[str, str] = {}  # video -> the name its media is stored under
    absent: dict[str, Absent] = {}
    for video in dict.fromkeys(v for listing in listings.values() for v in listing.videos):
        found = media_name(root, video, (video, *aliases(video)))
        if isinstance(found, Absent):
            absent[video] = found
        else:
            names[video] = found
    media = {
        split: SplitMedia(listing.file, len(listing.videos), [absent[v] for v in listing.videos if v in absent])
        for split, listing in listings.items()
    }
    errors = [e for name in dict.fromkeys(names.values()) for e in clip_errors(root, name, segments, rate)]
    if missing_media == "error" and (refused := missing_error(media)) is not None:
        errors.insert(0, refused)
    raise_all(root, errors)
    for split, split_media in media.items():
        leave_out(split, split_media)
    datasets = {}
    for split, listing in listings.items():
        kept = [i for i, v in enumerate(listing.videos) if v in names]
        targets = {k: x[kept] for k, x in listing.targets.items()}
        left_out = [a.video for a in media[split].absent]
        names_kept = [names[listing.videos[i]] for i in kept]
        datasets[split] = PreparedAVDataset(root, names_kept, targets, shape, segments, rate, left_out)
    return datasets


def read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines of a text file with their 1-based numbers, or DataError if missing."""
    if not path.is_file():
        raise DataError(path, "file not found")
    text = path.read_text(encoding="utf-8-sig")
    return [(i, line.rstrip("\r\n")) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def parse_time(value: str, path: Path, line: int, field: str, segments: int) -> float:
    """A time in seconds within [0, segments], or DataError naming the field."""
    try:
        x = float(value)
    except ValueError:
        raise DataError(path, f"{field} must be a number of seconds, got {value!r}", line) from None
    if not 0 <= x <= segments:
        raise DataError(path, f"{field} must be in [0, {segments}], got {value!r}", line)
    return x
