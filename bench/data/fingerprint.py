"""Which prepared data a run read: its resolved directory and a cheap fingerprint of the tree.

A run key holds both, so the same data typed as `data/x`, `./data/x/` or its absolute path is
one run, while data changed in place (a split file edited, media re-prepared) is another.
The fingerprint hashes every file's relative path, size and modification time, not the
contents: a prepared AVSBench tree has tens of thousands of files, and a walk of their
metadata takes a fraction of a second where reading them would take minutes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataSource:
    """A real dataset directory, resolved, with the fingerprint of its files."""

    path: str
    fingerprint: str

    @property
    def identity(self) -> str:
        """What a run key holds for it."""
        return f"{self.path}#{self.fingerprint}"

    def record(self) -> dict[str, str]:
        return {"path": self.path, "fingerprint": self.fingerprint}


def data_source(directory: str | Path) -> DataSource:
    root = Path(directory).resolve()
    return DataSource(str(root), tree_fingerprint(root))


def tree_fingerprint(root: Path) -> str:
    """sha256 over (relative path, size, mtime in ns) of every file under `root`, in sorted order."""
    sha = hashlib.sha256()
    for path, size, mtime in sorted(_files(root)):
        sha.update(f"{path}\0{size}\0{mtime}\n".encode())
    return sha.hexdigest()[:16]


def _files(root: Path, prefix: str = "") -> list[tuple[str, int, int]]:
    out = []
    with os.scandir(root) as entries:
        for entry in entries:
            name = f"{prefix}{entry.name}"
            if entry.is_dir(follow_symlinks=True):
                out += _files(Path(entry.path), f"{name}/")
            elif entry.is_file(follow_symlinks=True):
                stat = entry.stat(follow_symlinks=True)
                out.append((name, stat.st_size, stat.st_mtime_ns))
    return out
