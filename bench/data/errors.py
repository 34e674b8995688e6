"""The error and warning types for dataset files, so that the CLI can report them plainly."""

from __future__ import annotations

import warnings
from pathlib import Path


class DataError(ValueError):
    """A dataset file is missing or malformed; the message names the file (and line)."""

    def __init__(self, path: Path | str, problem: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path = Path(path)
        self.line = line


class DataWarning(UserWarning):
    """A quirk of a released dataset file that the loader works around; the CLI prints
    it through its console, so that it does not tear a progress display."""


def warn_data(path: Path | str, problem: str) -> None:
    """One warning naming the file; Python shows the same text only once per process."""
    warnings.warn(DataWarning(f"{path}: {problem}"), stacklevel=3)


LISTED = 20  # bad files named in one error; the rest are counted


def raise_all(root: Path | str, errors: list[DataError]) -> None:
    """Raise the one error, or one DataError under `root` that names every bad file (the
    first LISTED, then how many more), so that one pass over a dataset reports them all."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        lines = [str(e) for e in errors[:LISTED]]
        if len(errors) > LISTED:
            lines.append(f"and {len(errors) - LISTED} more")
        raise DataError(root, f"{len(errors)} bad dataset files:\n  " + "\n  ".join(lines))
