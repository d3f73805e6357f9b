"""Byte-level damage to a valid file, for the tests of every reader (reference.formats, libllmc, tools.train)."""

from pathlib import Path

import numpy as np


def patch_header(path, index, value):
    """header int32 [index] = value."""
    data = bytearray(Path(path).read_bytes())
    data[4 * index : 4 * index + 4] = np.array([value], "<i4").tobytes()
    Path(path).write_bytes(bytes(data))


def truncate(path, nbytes):
    """Drop the last nbytes (all of them when nbytes exceeds the size)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: max(len(data) - nbytes, 0)])


def append(path, extra=b"\0\0\0\0"):
    with open(path, "ab") as f:
        f.write(extra)
