"""LLP (AVVP) from a prepared directory.

Layout of `root` (tab-separated CSVs with a header, as released):
    AVVP_train.csv, AVVP_val_pd.csv, AVVP_test_pd.csv      filename  event_labels (comma-joined)
    AVVP_eval_audio.csv, AVVP_eval_visual.csv              filename  onset  offset  event_labels
    frames/{name}.npy  uint8 [10, H, W, 3];  audio/{name}.npy  int16 [10, R]  (media.json: R)
where {name} is the CSV's `{YouTubeID}_{start}_{end}` or the bare YouTube id (the
official download script saves `{YouTubeID}.mp4`, and `bench data prepare` names the
media after the clip's file).
Targets: `label` [25] video-level (every split); val and test also carry the
segment ground truth `gt_audio`, `gt_visual` [25, 10] (ones on [onset, offset)).
Rows with onset == offset mark no segment; so do rows whose offset is before their
onset (AVVP_eval_audio.csv line 3770 in the release), as the official evaluation's
`GT[c, onset:offset] = 1` leaves them empty.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from bench.data.core import DataShape
from bench.data.errors import DataError, warn_data
from bench.data.media import Listing, parse_time, prepared_splits, read_lines
from bench.data.missing import MissingMedia

LLP_CLASSES = (
    "Speech", "Car", "Cheering", "Dog", "Cat", "Frying_(food)", "Basketball_bounce", "Fire_alarm", "Chainsaw",
    "Cello", "Banjo", "Singing", "Chicken_rooster", "Violin_fiddle", "Vacuum_cleaner", "Baby_laughter", "Accordion",
    "Lawn_mower", "Motorcycle", "Helicopter", "Acoustic_guitar", "Telephone_bell_ringing", "Baby_cry_infant_cry",
    "Blender", "Clapping",
)  # fmt: skip
NUM_CLASSES = len(LLP_CLASSES)
SEGMENTS = 10
SPLIT_FILES = {"train": "AVVP_train.csv", "val": "AVVP_val_pd.csv", "test": "AVVP_test_pd.csv"}
INDEX = {c: i for i, c in enumerate(LLP_CLASSES)}


def _table(path: Path, columns: tuple[str, ...]) -> list[tuple[int, list[str]]]:
    """Rows (line, fields) of a tab-separated file whose header names `columns`."""
    lines = read_lines(path)
    if not lines:
        raise DataError(path, f"empty file; expected a header {' '.join(columns)}")
    header = [h.strip() for h in lines[0][1].split("\t")]
    if header != list(columns):
        raise DataError(path, f"expected the tab-separated header {list(columns)}, got {header}", lines[0][0])
    rows = []
    for line, text in lines[1:]:
        fields = [f.strip() for f in text.split("\t")]
        if len(fields) != len(columns):
            raise DataError(path, f"expected {len(columns)} tab-separated fields, got {len(fields)}", line)
        rows.append((line, fields))
    return rows


def _class(name: str, path: Path, line: int) -> int:
    if name not in INDEX:
        raise DataError(path, f"unknown event label {name!r} (expected one of the 25 LLP classes)", line)
    return INDEX[name]


Event = tuple[int, int, int]  # class, first segment, end segment (exclusive)


def _events(path: Path) -> dict[str, list[Event]]:
    """The events of each video in an eval CSV. Rows whose offset is before their onset
    are checked, left out (they mark no segment) and reported in one warning."""
    events: dict[str, list[Event]] = {}
    backwards = []
    for line, (name, onset, offset, label) in _table(path, ("filename", "onset", "offset", "event_labels")):
        start = parse_time(onset, path, line, "onset", SEGMENTS)
        end = parse_time(offset, path, line, "offset", SEGMENTS)
        if start != int(start) or end != int(end):
            raise DataError(path, f"expected integer seconds, got onset {onset!r}, offset {offset!r}", line)
        c = _class(label, path, line)
        if end < start:
            backwards.append(line)
            continue
        events.setdefault(name, []).append((c, int(start), int(end)))
    if backwards:
        warn_data(path, f"{len(backwards)} row(s) with offset before onset mark no segment, as in the official "
                        f"evaluation (line(s) {', '.join(map(str, backwards))})")  # fmt: skip
    return events


def _segment_gt(events: dict[str, list[Event]], videos: list[str]) -> torch.Tensor:
    """Binary [len(videos), 25, 10] ground truth of the listed videos."""
    gt = torch.zeros(len(videos), NUM_CLASSES, SEGMENTS, dtype=torch.bool)
    for i, name in enumerate(videos):
        for c, start, end in events.get(name, []):
            gt[i, c, start:end] = True
    return gt


def youtube_id(filename: str) -> tuple[str, ...]:
    """The bare YouTube id of a `{YouTubeID}_{start}_{end}` name (ids may hold `_`), or none."""
    head, *times = filename.rsplit("_", 2)
    return (head,) if len(times) == 2 and all(t.isdigit() for t in times) else ()


def load_llp(root: Path, shape: DataShape, missing_media: MissingMedia = "skip") -> dict[str, Dataset]:
    """The three LLP splits; listed videos without prepared media are left out or refused as
    `missing_media` says."""
    audio_events = _events(root / "AVVP_eval_audio.csv")
    visual_events = _events(root / "AVVP_eval_visual.csv")
    prepared = {}
    for split, name in SPLIT_FILES.items():
        path = root / name
        rows = _table(path, ("filename", "event_labels"))
        if not rows:
            raise DataError(path, f"the {split} split is empty: no rows under the header")
        videos = [f[0] for _, f in rows]
        label = torch.zeros(len(rows), NUM_CLASSES)
        for i, (line, (_, labels)) in enumerate(rows):
            for c in labels.split(","):
                label[i, _class(c.strip(), path, line)] = 1.0
        targets = {"label": label}
        if split != "train":
            targets["gt_audio"] = _segment_gt(audio_events, videos)
            targets["gt_visual"] = _segment_gt(visual_events, videos)
        prepared[split] = Listing(path, videos, targets)
    return prepared_splits(root, prepared, shape, SEGMENTS, missing_media, aliases=youtube_id)
