"""The one error type for bad dataset files, so that the CLI can report it plainly."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A dataset file is missing or malformed; the message names the file (and line)."""

    def __init__(self, path: Path | str, problem: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path = Path(path)
        self.line = line
