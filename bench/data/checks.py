"""Cheap checks of prepared media files, run when a dataset is built.

They read a file's header and size, never its data (AVE's 8,286 arrays take under a
second, 10,000 AVSBench files a second or two), so that a truncated or mistyped file is
named before any training, not when its split is first read after every epoch has trained.
"""

from __future__ import annotations

import functools
import io
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from bench.data.errors import DataError

NPY_HEADERS = {  # format version: (bytes of the header length field, numpy's reader of length and header)
    (1, 0): (2, np.lib.format.read_array_header_1_0),
    (2, 0): (4, np.lib.format.read_array_header_2_0),
}
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk that closes every PNG


def shape_text(shape: tuple[int | None, ...]) -> str:
    """`[10, *, *, 3]`: a shape, None shown as `*` (any size)."""
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


def check_array(
    path: Path, found_shape: tuple[int, ...], found_dtype: np.dtype, shape: tuple[int | None, ...], dtype: type
) -> None:
    """DataError unless the dtype is exactly `dtype` and the shape matches `shape` (None: any
    size). No dtype is cast: float frames in [0, 1] or float audio in [-1, 1] would become zeros."""
    if found_dtype != np.dtype(dtype):
        raise DataError(path, f"expected dtype {np.dtype(dtype)}, got {found_dtype}")
    if len(found_shape) != len(shape) or any(s is not None and s != d for s, d in zip(shape, found_shape, strict=True)):
        raise DataError(path, f"expected an array of shape {shape_text(shape)}, got {list(found_shape)}")


@functools.lru_cache(maxsize=256)
def parse_npy_header(version: tuple[int, int], raw: bytes) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a .npy header's length field and text. The clips of a dataset share
    a few headers, so each is parsed once: parsing (a literal_eval) costs more than the read."""
    shape, _, dtype = NPY_HEADERS[version][1](io.BytesIO(raw))
    return shape, dtype


def check_npy(path: Path, shape: tuple[int | None, ...], dtype: type) -> None:
    """DataError unless `path` is a .npy of `dtype` and `shape` (see check_array) whose size is
    its header's plus the bytes its header announces: a truncated file is caught unread."""
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in NPY_HEADERS:
                raise ValueError(f"format version {version[0]}.{version[1]} is not supported")
            length = f.read(NPY_HEADERS[version][0])
            raw = length + f.read(int.from_bytes(length, "little"))
            found_shape, found_dtype = parse_npy_header(version, raw)
            data_start, size = f.tell(), os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise DataError(path, "missing prepared media file (run `bench data prepare`)") from None
    except (ValueError, OSError) as e:
        raise DataError(path, f"unreadable .npy header ({e})") from None
    check_array(path, found_shape, found_dtype, shape, dtype)
    expected = data_start + math.prod(found_shape) * found_dtype.itemsize
    if size != expected:
        raise DataError(path, f"{'truncated' if size < expected else 'too long'}: {size} bytes, but its header "
                        f"({list(found_shape)} {found_dtype}) makes {expected}")  # fmt: skip


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from an image's header. DataError if it is missing or unreadable, or a
    PNG that does not end with its IEND chunk (PIL reads only the header, so a cut file would
    pass unseen)."""
    try:
        with path.open("rb") as f:
            with Image.open(f) as im:
                kind, size = im.format, im.size
            tail = b""
            if kind == "PNG":
                f.seek(-len(PNG_END), os.SEEK_END)
                tail = f.read()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (OSError, ValueError) as e:
        raise DataError(path, f"unreadable image ({e})") from None
    if kind == "PNG" and tail != PNG_END:
        raise DataError(path, "truncated PNG: it does not end with an IEND chunk")
    return size
