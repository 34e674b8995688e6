"""Listed videos without prepared media. YouTube deletes videos, so every downloaded copy of
AVE, LLP or AVSBench lacks some of the videos its split files list. `skip` (the default)
leaves them out of their split with one warning per split that counts them and names the
first; `error` refuses them in one DataError naming the first and counting them per split.
Only absent media count: a file that is present but bad (cut short, of another dtype or
shape) is a broken tree, and stays an error whatever the setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bench.data.errors import DataError, warn_data

MissingMedia = Literal["skip", "error"]


@dataclass(frozen=True)
class Absent:
    """A listed video without prepared media: for each name its media may be stored under,
    the first of its files that is not there."""

    video: str
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class SplitMedia:
    """One split as its file lists it, and the listed videos whose media are absent (one
    entry per listing, in the file's order)."""

    file: Path
    listed: int
    absent: list[Absent]


def _shown(path: Path, file: Path) -> str:
    """`path` relative to the folder of the file that lists it, when it is under it."""
    return str(path.relative_to(file.parent)) if path.is_relative_to(file.parent) else str(path)


def missing_error(splits: dict[str, SplitMedia]) -> DataError | None:
    """`error`: one DataError naming the first absent file and counting the videos without
    media per split; None when every listed video has its media."""
    absent = [(split, a) for split, s in splits.items() for a in s.absent]
    if not absent:
        return None
    split, first = absent[0]
    counts = ", ".join(f"{name} {len(s.absent)}" for name, s in splits.items())
    also = f" (also looked for {', '.join(map(str, first.paths[1:]))})" if len(first.paths) > 1 else ""
    return DataError(
        first.paths[0],
        f"missing prepared media of video {first.video!r}{also}, listed in {splits[split].file.name} ({split}); "
        f"{len(absent)} listed video(s) have none ({counts}) and missing_media=error refuses them "
        "(prepare them, or set missing_media=skip to leave them out)",
    )


def leave_out(split: str, media: SplitMedia) -> None:
    """`skip`: one warning for a split that loses videos; a DataError if it loses them all.
    (Under `error`, `missing_error` has refused any absent media already.)"""
    if not media.absent:
        return
    first = media.absent[0]
    where = f"first {first.video!r}: {' or '.join(_shown(p, media.file) for p in first.paths)} not found"
    if len(media.absent) == media.listed:
        raise DataError(
            media.file, f"the {split} split has no video with prepared media ({media.listed} listed; {where})"
        )
    warn_data(
        media.file,
        f"{len(media.absent)} of the {media.listed} videos listed for the {split} split have no prepared media "
        f"and are left out ({where})",
    )
