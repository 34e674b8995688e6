"""LLP (AVVP) from a prepared directory.

Layout of `root` (tab-separated CSVs with a header, as released):
    AVVP_train.csv, AVVP_val_pd.csv, AVVP_test_pd.csv      filename  event_labels (comma-joined)
    AVVP_eval_audio.csv, AVVP_eval_visual.csv              filename  onset  offset  event_labels
    frames/{filename}.npy  uint8 [10, H, W, 3];  logmel/{filename}.npy  float32 [10, F, W]
Targets: `label` [25] video-level (every split); val and test also carry the
segment ground truth `gt_audio`, `gt_visual` [25, 10] (ones on [onset, offset)).
Rows with onset == offset (present in the release) mark no segment.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from bench.data.errors import DataError
from bench.data.media import PreparedAVDataset, parse_time, read_lines
from bench.tasks.avvp import LLP_CLASSES, NUM_CLASSES
from bench.tasks.base import DataShape

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


def _segment_gt(path: Path, videos: dict[str, int]) -> torch.Tensor:
    """Binary [len(videos), 25, 10] ground truth of the listed videos from an eval CSV."""
    gt = torch.zeros(len(videos), NUM_CLASSES, SEGMENTS, dtype=torch.bool)
    for line, (name, onset, offset, label) in _table(path, ("filename", "onset", "offset", "event_labels")):
        start = parse_time(onset, path, line, "onset", SEGMENTS)
        end = parse_time(offset, path, line, "offset", SEGMENTS)
        if start != int(start) or end != int(end) or end < start:
            raise DataError(path, f"expected integer seconds with onset <= offset, got {onset!r}, {offset!r}", line)
        c = _class(label, path, line)
        if name in videos:
            gt[videos[name], c, int(start) : int(end)] = True
    return gt


def load_llp(root: Path, shape: DataShape) -> dict[str, Dataset]:
    out: dict[str, Dataset] = {}
    for split, name in SPLIT_FILES.items():
        path = root / name
        rows = _table(path, ("filename", "event_labels"))
        videos = [f[0] for _, f in rows]
        label = torch.zeros(len(rows), NUM_CLASSES)
        for i, (line, (_, labels)) in enumerate(rows):
            for c in labels.split(","):
                label[i, _class(c.strip(), path, line)] = 1.0
        targets = {"label": label}
        if split != "train":
            index = {v: i for i, v in enumerate(videos)}
            targets["gt_audio"] = _segment_gt(root / "AVVP_eval_audio.csv", index)
            targets["gt_visual"] = _segment_gt(root / "AVVP_eval_visual.csv", index)
        out[split] = PreparedAVDataset(root, videos, targets, shape, SEGMENTS)
    return out
