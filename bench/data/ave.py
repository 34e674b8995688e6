"""AVE (audio-visual event localisation) from a prepared directory.

Layout of `root`:
    Annotations.txt, trainSet.txt, valSet.txt, testSet.txt
        lines `Category&VideoID&Quality&StartTime&EndTime`, with or without that header line
    frames/{VideoID}.npy   uint8 [10, H, W, 3];  audio/{VideoID}.npy  int16 [10, R]  (media.json: R)
        (see bench.data.media; written by `bench data prepare ave`)
Categories are indexed by sorted name (Annotations.txt lists all 28); background is 28.
A segment t with start <= t < end carries the category.
Every row is a sample of its own: the release lists 45 videos more than once with other
labels, some of them in two splits; they are kept (not deduplicated) and counted in one warning.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from bench.data.core import DataShape
from bench.data.errors import DataError, warn_data
from bench.data.media import Listing, parse_time, prepared_splits, read_lines
from bench.data.missing import MissingMedia

SEGMENTS = 10
NUM_EVENTS = 28
SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
Row = tuple[int, str, str, float, float]  # line, category, video, start, end


def read_annotations(path: Path) -> list[Row]:
    """(line, category, video, start, end) per line; the header line is optional."""
    rows = []
    for line, text in read_lines(path):
        fields = text.split("&")
        if line == 1 and fields[0].strip().lower() == "category":
            continue
        if len(fields) != 5:
            raise DataError(path, f"expected 5 '&'-separated fields Category&VideoID&Quality&StartTime&EndTime, "
                            f"got {len(fields)}", line)  # fmt: skip
        cat, vid = fields[0].strip(), fields[1].strip()
        start = parse_time(fields[3], path, line, "StartTime", SEGMENTS)
        end = parse_time(fields[4], path, line, "EndTime", SEGMENTS)
        if end < start:
            raise DataError(path, f"EndTime {end:g} is before StartTime {start:g}", line)
        rows.append((line, cat, vid, start, end))
    return rows


def report_repeats(path: Path, rows: list[Row], splits: dict[str, list[Row]]) -> None:
    """Warn once about the videos with more than one row in `path`, and say how many of
    them the split files put in more than one split."""
    lines: dict[str, list[int]] = {}
    for line, _, video, _, _ in rows:
        lines.setdefault(video, []).append(line)
    repeated = {v: ls for v, ls in lines.items() if len(ls) > 1}
    if not repeated:
        return
    in_splits: dict[str, set[str]] = {}
    for split, split_rows in splits.items():
        for r in split_rows:
            in_splits.setdefault(r[2], set()).add(split)
    across = sum(len(in_splits.get(v, ())) > 1 for v in repeated)
    first, first_lines = next(iter(repeated.items()))
    warn_data(path, f"{len(repeated)} video id(s) with more than one row (first {first!r}, lines "
                    f"{', '.join(map(str, first_lines))}), {across} of them in more than one split; "
                    "every row is kept as an annotation of its own")  # fmt: skip


def load_ave(root: Path, shape: DataShape, missing_media: MissingMedia = "skip") -> dict[str, Dataset]:
    """The three AVE splits with a segment `label` [10] target (29 classes); listed videos
    without prepared media are left out or refused as `missing_media` says."""
    annotations = read_annotations(root / "Annotations.txt")
    categories = sorted({r[1] for r in annotations})
    if len(categories) > NUM_EVENTS:
        raise DataError(root / "Annotations.txt", f"expected at most {NUM_EVENTS} categories, got {len(categories)}")
    index = {c: i for i, c in enumerate(categories)}
    seg = torch.arange(SEGMENTS)
    splits = {split: read_annotations(root / name) for split, name in SPLIT_FILES.items()}
    report_repeats(root / "Annotations.txt", annotations, splits)
    prepared = {}
    for split, rows in splits.items():
        path = root / SPLIT_FILES[split]
        if not rows:
            raise DataError(path, f"the {split} split is empty: no Category&VideoID&Quality&StartTime&EndTime rows")
        labels = []
        for line, cat, _, start, end in rows:
            if cat not in index:
                raise DataError(path, f"unknown category {cat!r} (not in Annotations.txt)", line)
            inside = (seg >= start) & (seg < end)
            labels.append(torch.where(inside, index[cat], NUM_EVENTS))
        prepared[split] = Listing(path, [r[2] for r in rows], {"label": torch.stack(labels)})
    return prepared_splits(root, prepared, shape, SEGMENTS, missing_media)
