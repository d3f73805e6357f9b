"""The command-line protocol's files (PORTING.md): named arrays, what each call replies, and what a port's
exit status means.

Shared by the cmd: backend (backends/ports.py) and any port written in Python (tools/port_example.py).
REPLIES is the one specification of what a call writes to its OUT.bin: the cmd: backend reads exactly
these arrays (read_reply), and the harness's self-test (tests/test_meta.py) perturbs each of them to prove
that some check judges it, so an output added here is covered without further ado.
"""

import math
from pathlib import Path

import numpy as np

from reference.formats import atomic_write

PROTOCOL_VERSION = 1
ARRAYS_MAGIC = 20241126  # "array file" header magic
ARRAYS_VERSION = 1
DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<i4")}  # code -> dtype: float32, int32
DTYPE_CODES = {np.dtype(np.float32): 1, np.dtype(np.int32): 2}
EXIT_UNSUPPORTED = 3  # a port's exit status for "this request is not supported"
MAX_ARRAYS = 64  # more arrays than any call sends or replies: a corrupt count, not a file

# call -> {array: shape} of its OUT.bin, float32, in the sizes B, T (the batch), Vp (padded vocabulary),
# P (num_parameters) and N (--steps). `forward` is sent inputs only (no targets), so it replies logits only.
REPLIES = {
    "forward": {"logits": ("B", "T", "Vp")},
    "backward": {"logits": ("B", "T", "Vp"), "loss": (), "grads": ("P",)},
    "train": {"losses": ("N",), "grad_norms": ("N",), "params": ("P",), "m": ("P",), "v": ("P",)},
}


class PortError(RuntimeError):
    """A port misbehaved: a failed command, an unreadable or inconsistent output file."""


class PortUnsupported(NotImplementedError):
    """The port (or the cmd: adapter) cannot do what was asked; checks that need it are skipped."""


def write_arrays(path, arrays):
    """{name: float32 or int32 array} -> an array file, written atomically.

    Layout (all little-endian int32 unless said otherwise):
        magic 20241126, version 1, count
        count times: name_len, name (UTF-8 bytes), dtype (1 float32, 2 int32), ndim, dims[ndim], data (C order)
    A scalar is an array of ndim 0 (one element)."""
    with atomic_write(path) as f:
        f.write(np.array([ARRAYS_MAGIC, ARRAYS_VERSION, len(arrays)], "<i4").tobytes())
        for name, value in arrays.items():
            value = np.asarray(value)
            if value.dtype not in DTYPE_CODES:
                raise TypeError(
                    f"write_arrays {path}: array {name!r} has dtype {value.dtype}, only float32 and int32 are allowed"
                )
            encoded = name.encode("utf-8")
            f.write(np.array([len(encoded)], "<i4").tobytes() + encoded)
            f.write(np.array([DTYPE_CODES[value.dtype], value.ndim, *value.shape], "<i4").tobytes())
            f.write(np.ascontiguousarray(value, DTYPES[DTYPE_CODES[value.dtype]]).tobytes())


def read_arrays(path):
    """An array file -> {name: array}; PortError naming the file and the field when malformed."""
    data = Path(path).read_bytes()
    pos = 0

    def ints(count, field):
        nonlocal pos
        if pos + 4 * count > len(data):
            raise PortError(f"{path}: truncated in {field} (byte {pos} of {len(data)})")
        values = np.frombuffer(data, "<i4", count, pos)
        pos += 4 * count
        return [int(v) for v in values]

    magic, version, count = ints(3, "header")
    if magic != ARRAYS_MAGIC:
        raise PortError(f"{path}: header magic is {magic}, expected {ARRAYS_MAGIC} (an array file)")
    if version != ARRAYS_VERSION:
        raise PortError(f"{path}: header version is {version}, expected {ARRAYS_VERSION}")
    if not 0 <= count <= MAX_ARRAYS:
        raise PortError(f"{path}: header count is {count}, expected 0 to {MAX_ARRAYS} arrays")
    arrays = {}
    for i in range(count):
        (name_len,) = ints(1, f"array {i} name length")
        if not 0 < name_len <= 256 or pos + name_len > len(data):
            raise PortError(f"{path}: array {i} name length {name_len} is invalid")
        try:
            name = data[pos : pos + name_len].decode("utf-8")
        except UnicodeDecodeError as e:
            raise PortError(f"{path}: array {i} name is not UTF-8: {e}") from e
        if name in arrays:
            raise PortError(f"{path}: array {i} is named {name!r}, like an earlier one (names must be unique)")
        pos += name_len
        code, ndim = ints(2, f"array {name!r} dtype and ndim")
        if code not in DTYPES:
            raise PortError(f"{path}: array {name!r} dtype code {code}, expected 1 (float32) or 2 (int32)")
        if not 0 <= ndim <= 8:
            raise PortError(f"{path}: array {name!r} ndim {ndim} is invalid")
        shape = tuple(ints(ndim, f"array {name!r} dims"))
        if any(d < 0 for d in shape):
            raise PortError(f"{path}: array {name!r} has a negative dimension {shape}")
        nbytes = math.prod(shape) * 4
        if pos + nbytes > len(data):
            raise PortError(f"{path}: array {name!r} {shape} is truncated")
        arrays[name] = (
            np.frombuffer(data, DTYPES[code], math.prod(shape), pos)
            .reshape(shape)
            .astype(DTYPES[code].newbyteorder("="))
        )
        pos += nbytes
    if pos != len(data):
        raise PortError(f"{path}: {len(data) - pos} trailing bytes after {count} arrays")
    return arrays


def expect_array(arrays, path, name, shape, dtype=np.float32):
    """arrays[name], checked for presence, dtype and shape (a scalar may be () or (1,))."""
    if name not in arrays:
        raise PortError(f"{path}: no array {name!r} (has {sorted(arrays)})")
    value = arrays[name]
    if value.dtype != dtype:
        raise PortError(f"{path}: array {name!r} is {value.dtype}, expected {np.dtype(dtype)}")
    if shape == ():
        if value.size != 1:
            raise PortError(f"{path}: array {name!r} has shape {value.shape}, expected a scalar")
        return value.reshape(())
    if value.shape != tuple(shape):
        raise PortError(f"{path}: array {name!r} has shape {value.shape}, expected {tuple(shape)}")
    return value


def read_reply(path, op, sizes):
    """OUT.bin of the call `op` -> {name: float32 array} of exactly REPLIES[op], each checked for its shape.
    sizes: {"B", "T", "Vp", "P", "N": int} (those the call's shapes use)."""
    arrays = read_arrays(path)
    return {
        name: expect_array(arrays, path, name, tuple(sizes[d] for d in shape)).copy()
        for name, shape in REPLIES[op].items()
    }
