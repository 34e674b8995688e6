"""AVE (audio-visual event localisation) from a prepared directory.

Layout of `root`:
    Annotations.txt, trainSet.txt, valSet.txt, testSet.txt
        lines `Category&VideoID&Quality&StartTime&EndTime`, with or without that header line
    frames/{VideoID}.npy   uint8 [10, H, W, 3];  logmel/{VideoID}.npy  float32 [10, F, W]
        (see bench.data.media; written by `bench data prepare ave`)
Categories are indexed by sorted name (Annotations.txt lists all 28); background is 28.
A segment t with start <= t < end carries the category.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from bench.data.errors import DataError
from bench.data.media import PreparedAVDataset, parse_time, read_lines
from bench.tasks.base import DataShape

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


def load_ave(root: Path, shape: DataShape) -> dict[str, Dataset]:
    """The three AVE splits with a segment `label` [10] target (29 classes)."""
    categories = sorted({r[1] for r in read_annotations(root / "Annotations.txt")})
    if len(categories) > NUM_EVENTS:
        raise DataError(root / "Annotations.txt", f"expected at most {NUM_EVENTS} categories, got {len(categories)}")
    index = {c: i for i, c in enumerate(categories)}
    seg = torch.arange(SEGMENTS)
    out: dict[str, Dataset] = {}
    for split, name in SPLIT_FILES.items():
        path = root / name
        rows = read_annotations(path)
        labels = []
        for line, cat, _, start, end in rows:
            if cat not in index:
                raise DataError(path, f"unknown category {cat!r} (not in Annotations.txt)", line)
            inside = (seg >= start) & (seg < end)
            labels.append(torch.where(inside, index[cat], NUM_EVENTS))
        label = torch.stack(labels) if labels else torch.zeros(0, SEGMENTS, dtype=torch.long)
        out[split] = PreparedAVDataset(root, [r[2] for r in rows], {"label": label}, shape, SEGMENTS)
    return out
