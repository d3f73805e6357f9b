"""llm.c's binary files, read and written byte-compatibly, every header field checked.

Every file starts with a header of 256 little-endian int32 (1024 bytes); fields not listed are zero.

  model checkpoint   magic 20240326, version 3 (fp32) or 5 (bf16); [2..7] maxT, V, L, NH, C, Vp;
                     then num_parameters values in llm.c's tensor order (reference.model.PARAM_NAMES)
  debug state        magic 20240327, version 2; [2] B, [3] T; then x, y (B*T int32 each),
                     logits (B,T,V) fp32 with the unpadded V, loss (1 fp32), grads (num_parameters fp32)
  token data         magic 20240520, version 1; [2] number of tokens; then that many uint16
  tokenizer          magic 20240328, version 2 ([2] n, [3] EOT) or 1 ([2] n, EOT implied 50256);
                     then for each token a 1-byte length (1..255) and its raw bytes
  trainer state      ours (tools.train's resume): magic 20261126, version 2; see its section below

Readers raise FormatError (a ValueError naming the file and the field) for a wrong magic or version,
a nonsense header, a truncated or oversized file and bad payload values; writers go through
atomic_write, so a reader never sees a half-written file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
import hashlib
import math
import os
from pathlib import Path
import re
from typing import IO
import uuid

import numpy as np

from reference.model import GPT2Config

PathLike = str | os.PathLike

HEADER_INTS = 256
HEADER_BYTES = 4 * HEADER_INTS

MODEL_MAGIC = 20240326
MODEL_VERSIONS = {3: "fp32", 5: "bf16"}
STATE_MAGIC = 20240327
STATE_VERSION = 2
TOKENS_MAGIC = 20240520
TOKENS_VERSION = 1
TOKENIZER_MAGIC = 20240328
TOKENIZER_VERSIONS = (1, 2)
TOKENIZER_V1_EOT, TOKENIZER_V1_VOCAB = 50256, 50257  # what llm.c's reader assumes for a v1 file

MAX_TOKEN_ID = np.iinfo(np.uint16).max
MAX_TOKEN_COUNT = 2**31 - 1  # the count is an int32 header field

# model checkpoint header: index -> GPT2Config field
CONFIG_FIELDS = {
    2: "max_seq_len",
    3: "vocab_size",
    4: "num_layers",
    5: "num_heads",
    6: "channels",
    7: "padded_vocab_size",
}

CHUNK = 1 << 22  # elements per pass when converting or scanning a large payload


class FormatError(ValueError):
    """A file that is not what its format says. .path is the file, .field the header field or part."""

    def __init__(self, path, field, detail):
        self.path = os.fspath(path)
        self.field = field
        super().__init__(f"{self.path}: {detail}")


# ----------------------------------------------------------------------------- writing
@contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to `path` for writing; on success fsync it and os.replace it onto
    `path`, so readers see the old file or the whole new one. On an exception nothing is left behind.
    mode: "wb" or "w" (UTF-8 text).

    The temporary file is `.NAME.PID.RANDOM.tmp`, PID the writer's process id. A writer killed before
    it could clean up (kill -9) leaves it behind; the next atomic_write of the same `path` removes those
    whose writer no longer runs (a writer still running keeps its own)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    _remove_stale_temporaries(directory, os.path.basename(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    # os.open with 0o666 lets the umask decide the permissions, as a plain open() would
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # makes the rename itself durable
    finally:
        os.close(dir_fd)


def _remove_stale_temporaries(directory, name):
    """Removes atomic_write's `.name.PID.RANDOM.tmp` files in directory whose process PID is gone."""
    prefix = f".{name}."
    try:
        entries = os.listdir(directory)
    except OSError:
        return  # the os.open of the new temporary file reports what is wrong with the directory
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(".tmp")):
            continue
        match = re.fullmatch(r"(\d+)\.[0-9a-f]{12}", entry[len(prefix) : -len(".tmp")])
        if match is None or _process_running(int(match.group(1))):
            continue
        try:
            os.unlink(os.path.join(directory, entry))
        except FileNotFoundError:
            pass  # another writer of the same path removed it first


def _process_running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it runs, under another user
    return True


def _header(magic, version, *fields):
    header = np.zeros(HEADER_INTS, "<i4")
    header[0], header[1] = magic, version
    header[2 : 2 + len(fields)] = fields
    return header


# ----------------------------------------------------------------------------- reading helpers
def _read_header(path, magic, versions, kind):
    """-> header int32[256] with magic and version checked."""
    size = os.path.getsize(path)
    if size < HEADER_BYTES:
        raise FormatError(
            path, "header", f"file is {size} bytes, shorter than the {HEADER_BYTES}-byte header of a {kind}"
        )
    header = np.fromfile(path, "<i4", count=HEADER_INTS)
    if header[0] != magic:
        raise FormatError(path, "magic", f"header[0] magic is {header[0]}, expected {magic} ({kind})")
    if header[1] not in versions:
        expected = " or ".join(str(v) for v in versions)
        raise FormatError(path, "version", f"header[1] version is {header[1]}, expected {expected} ({kind})")
    return header


def _check_reserved_zero(path, header, first_reserved):
    nonzero = np.flatnonzero(header[first_reserved:])
    if nonzero.size:
        i = first_reserved + int(nonzero[0])
        raise FormatError(path, f"header[{i}]", f"header[{i}] is {header[i]}, expected 0 (reserved)")


def _check_size(path, expected, what):
    size = os.path.getsize(path)
    if size < expected:
        raise FormatError(path, "size", f"file is truncated: {size} bytes, {what} needs {expected}")
    if size > expected:
        raise FormatError(
            path, "size", f"file has {size - expected} trailing bytes: {size} bytes, {what} needs exactly {expected}"
        )


def _tensor_at(config, index):
    """(name, index within the tensor) of flat parameter `index`."""
    offset = 0
    for name, shape in config.param_shapes().items():
        if index < offset + math.prod(shape):
            return name, index - offset
        offset += math.prod(shape)
    raise IndexError(index)


def _first_nonfinite(values):
    for lo in range(0, values.size, CHUNK):
        bad = np.flatnonzero(~np.isfinite(values[lo : lo + CHUNK]))
        if bad.size:
            return lo + int(bad[0])
    return None


# ----------------------------------------------------------------------------- bf16
def fp32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16) by round-to-nearest-even, as torch's .to(bfloat16);
    NaN stays a (quiet) NaN."""
    values = np.ascontiguousarray(values, np.float32)
    bits = values.view(np.uint32)
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16  # finite values cannot overflow uint32 here
    quiet_nan = (bits >> 16) | 0x0040
    return np.where(np.isnan(values), quiet_nan, rounded).astype(np.uint16)


def bf16_bits_to_fp32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns -> float32, exactly (bf16 is the top half of an fp32)."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


# ----------------------------------------------------------------------------- model checkpoint
def checkpoint_size(config: GPT2Config, dtype: str = "fp32") -> int:
    return HEADER_BYTES + (4 if dtype == "fp32" else 2) * config.num_parameters


def config_from_header(path: PathLike, header: np.ndarray) -> GPT2Config:
    values = {}
    for i, name in CONFIG_FIELDS.items():
        if header[i] <= 0:
            raise FormatError(path, f"header[{i}]", f"header[{i}] {name} is {header[i]}, must be positive")
        values[name] = int(header[i])
    if values["channels"] % values["num_heads"]:
        raise FormatError(
            path,
            "header[6]",
            f"header[6] channels ({values['channels']}) is not divisible by "
            f"header[5] num_heads ({values['num_heads']})",
        )
    if values["padded_vocab_size"] < values["vocab_size"]:
        raise FormatError(
            path,
            "header[7]",
            f"header[7] padded_vocab_size ({values['padded_vocab_size']}) is "
            f"smaller than header[3] vocab_size ({values['vocab_size']})",
        )
    return GPT2Config(**values)


def read_checkpoint(path: PathLike) -> tuple[GPT2Config, np.ndarray]:
    """-> (GPT2Config, flat float32 params in llm.c's order). A v5 (bf16) file is widened exactly."""
    header = _read_header(path, MODEL_MAGIC, tuple(MODEL_VERSIONS), "model checkpoint")
    config = config_from_header(path, header)
    _check_reserved_zero(path, header, 8)
    dtype = MODEL_VERSIONS[int(header[1])]
    n = config.num_parameters
    _check_size(path, checkpoint_size(config, dtype), f"the header's model ({n} {dtype} parameters)")
    if dtype == "fp32":
        params = np.fromfile(path, "<f4", count=n, offset=HEADER_BYTES).astype(np.float32, copy=False)
    else:
        params = bf16_bits_to_fp32(np.fromfile(path, "<u2", count=n, offset=HEADER_BYTES))
    bad = _first_nonfinite(params)
    if bad is not None:
        name, i = _tensor_at(config, bad)
        raise FormatError(
            path,
            "params",
            f"parameter {bad} ({name}, flat index {i}) is {params[bad]}, checkpoints must hold finite values",
        )
    return config, params


def write_checkpoint(path: PathLike, config: GPT2Config, params: np.ndarray, dtype: str = "fp32") -> None:
    """Write a v3 (dtype "fp32") or v5 ("bf16", rounded to nearest even) llm.c checkpoint."""
    versions = {name: version for version, name in MODEL_VERSIONS.items()}
    if dtype not in versions:
        raise ValueError(f"write_checkpoint: dtype must be 'fp32' or 'bf16', got {dtype!r}")
    params = np.asarray(params)
    if params.shape != (config.num_parameters,):
        raise ValueError(
            f"write_checkpoint: expected {config.num_parameters} params for {config}, got shape {params.shape}"
        )
    bad = _first_nonfinite(params)
    if bad is not None:
        name, i = _tensor_at(config, bad)
        raise ValueError(f"write_checkpoint: parameter {bad} ({name}, flat index {i}) is {params[bad]}, not finite")
    header = _header(MODEL_MAGIC, versions[dtype], *(getattr(config, f) for f in CONFIG_FIELDS.values()))
    with atomic_write(path) as f:
        f.write(header.tobytes())
        for lo in range(0, params.size, CHUNK):
            chunk = params[lo : lo + CHUNK].astype("<f4")
            f.write(chunk.tobytes() if dtype == "fp32" else fp32_to_bf16_bits(chunk).astype("<u2").tobytes())


# ----------------------------------------------------------------------------- debug state
@dataclass
class DebugState:
    B: int
    T: int
    x: np.ndarray  # (B,T) int32 inputs
    y: np.ndarray  # (B,T) int32 targets
    logits: np.ndarray  # (B,T,V) float32
    loss: float
    grads: np.ndarray  # (num_parameters,) float32, llm.c's order, wte's padded rows zero


def debug_state_size(config: GPT2Config, B: int, T: int) -> int:
    """header, x and y (int32), logits (B,T,V), loss, and num_parameters gradients (fp32)."""
    return HEADER_BYTES + 4 * (2 * B * T + B * T * config.vocab_size + 1 + config.num_parameters)


def write_debug_state(
    path: PathLike, x: np.ndarray, y: np.ndarray, logits_BTV: np.ndarray, loss: float, grads_flat: np.ndarray
) -> None:
    """llm.c's gpt2_124M_debug_state.bin (train_gpt2.py write_state); V is read off the logits."""
    x, y = np.asarray(x), np.asarray(y)
    logits, grads = np.asarray(logits_BTV), np.asarray(grads_flat)
    if x.ndim != 2 or y.shape != x.shape:
        raise ValueError(f"write_debug_state: x and y must both be (B,T), got {x.shape} and {y.shape}")
    B, T = x.shape
    if logits.ndim != 3 or logits.shape[:2] != (B, T):
        raise ValueError(f"write_debug_state: logits must be (B={B},T={T},V), got {logits.shape}")
    if grads.ndim != 1:
        raise ValueError(f"write_debug_state: grads must be flat, got shape {grads.shape}")
    header = _header(STATE_MAGIC, STATE_VERSION, B, T)
    with atomic_write(path) as f:
        f.write(header.tobytes())
        f.write(x.astype("<i4").tobytes())
        f.write(y.astype("<i4").tobytes())
        f.write(logits.astype("<f4").tobytes())
        f.write(np.array([loss], "<f4").tobytes())
        f.write(grads.astype("<f4").tobytes())


def read_debug_state(path: PathLike, config: GPT2Config) -> DebugState:
    """-> DebugState; the file size must be exactly what B, T (header) and the config imply."""
    header = _read_header(path, STATE_MAGIC, (STATE_VERSION,), "debug state")
    B, T = int(header[2]), int(header[3])
    if B <= 0:
        raise FormatError(path, "header[2]", f"header[2] B is {B}, must be positive")
    if not 0 < T <= config.max_seq_len:
        raise FormatError(path, "header[3]", f"header[3] T is {T}, must lie in [1, max_seq_len={config.max_seq_len}]")
    _check_reserved_zero(path, header, 4)
    BT, V, n = B * T, config.vocab_size, config.num_parameters
    _check_size(path, debug_state_size(config, B, T), f"a debug state of B={B}, T={T}, V={V} and {n} gradients")
    offset = HEADER_BYTES
    parts = {}
    for name, dtype, count in (
        ("x", "<i4", BT),
        ("y", "<i4", BT),
        ("logits", "<f4", BT * V),
        ("loss", "<f4", 1),
        ("grads", "<f4", n),
    ):
        parts[name] = np.fromfile(path, dtype, count=count, offset=offset)
        offset += 4 * count
    for name in ("x", "y"):
        check_tokens(parts[name], V, path, field=name)
    # a NaN here would only surface later, looking like a backend's failure
    for name in ("logits", "loss", "grads"):
        bad = _first_nonfinite(parts[name])
        if bad is not None:
            where = np.unravel_index(bad, (B, T, V)) if name == "logits" else (bad,)
            index = "" if name == "loss" else "[" + ", ".join(str(int(i)) for i in where) + "]"
            raise FormatError(path, name, f"{name}{index} is {parts[name][bad]}, must be finite")
    loss = float(parts["loss"][0])
    return DebugState(
        B,
        T,
        parts["x"].astype(np.int32).reshape(B, T),
        parts["y"].astype(np.int32).reshape(B, T),
        parts["logits"].astype(np.float32).reshape(B, T, V),
        loss,
        parts["grads"].astype(np.float32),
    )


# ----------------------------------------------------------------------------- token data
def write_tokens(path: PathLike, tokens: np.ndarray) -> None:
    """llm.c's GPT-2 token file (dev/data/data_common.py write_datafile): uint16 ids."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"write_tokens: tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size > MAX_TOKEN_COUNT:
        raise ValueError(f"write_tokens: {tokens.size} tokens, the format holds fewer than 2^31")
    if tokens.size and (tokens.min() < 0 or tokens.max() > MAX_TOKEN_ID):
        raise ValueError(
            f"write_tokens: token ids must lie in [0, {MAX_TOKEN_ID}], got [{tokens.min()}, {tokens.max()}]"
        )
    with atomic_write(path) as f:
        f.write(_header(TOKENS_MAGIC, TOKENS_VERSION, tokens.size).tobytes())
        f.write(tokens.astype("<u2").tobytes())


def count_tokens(path: PathLike) -> int:
    """-> the number of tokens in a token file, from its header, checked against the file's size (the
    tokens themselves are not read: a loader validates every shard of a data set this way up front)."""
    header = _read_header(path, TOKENS_MAGIC, (TOKENS_VERSION,), "token file")
    ntok = int(header[2])
    if ntok < 0:
        raise FormatError(path, "header[2]", f"header[2] num_tokens is {ntok}, must be >= 0")
    _check_reserved_zero(path, header, 3)
    _check_size(path, HEADER_BYTES + 2 * ntok, f"the header's {ntok} uint16 tokens")
    return ntok


def read_tokens(path: PathLike) -> np.ndarray:
    """-> np.uint16 array of the file's tokens."""
    ntok = count_tokens(path)
    return np.fromfile(path, "<u2", count=ntok, offset=HEADER_BYTES).astype(np.uint16, copy=False)


def check_tokens(
    tokens: np.ndarray, V: int, path: PathLike, B: int | None = None, T: int | None = None, field: str = "tokens"
) -> None:
    """Every id in [0, V); with B and T, at least B*T+1 tokens (one batch of inputs plus its targets)."""
    tokens = np.asarray(tokens)
    if tokens.size:
        bad = np.flatnonzero((tokens < 0) | (tokens >= V))
        if bad.size:
            i = int(bad[0])
            raise FormatError(path, field, f"{field}[{i}] is token id {tokens.flat[i]}, outside [0, vocab_size={V})")
    if B is not None and T is not None and tokens.size < B * T + 1:
        raise FormatError(path, field, f"{tokens.size} {field}, too few for B*T+1 = {B * T + 1} (B={B}, T={T})")


# ----------------------------------------------------------------------------- tokenizer
def write_tokenizer(path: PathLike, token_bytes: list[bytes], eot: int) -> None:
    """llm.c's gpt2_tokenizer.bin, version 2 (train_gpt2.py write_tokenizer)."""
    n = len(token_bytes)
    if not 0 <= eot < n:
        raise ValueError(f"write_tokenizer: eot {eot} is outside [0, {n})")
    for i, b in enumerate(token_bytes):
        if not 0 < len(b) < 256:
            raise ValueError(f"write_tokenizer: token {i} is {len(b)} bytes, the format holds 1..255")
    with atomic_write(path) as f:
        f.write(_header(TOKENIZER_MAGIC, 2, n, eot).tobytes())
        f.write(b"".join(bytes([len(b)]) + bytes(b) for b in token_bytes))


def read_tokenizer(path: PathLike) -> tuple[list[bytes], int | None]:
    """-> (list of each token's bytes, EOT id). Reads version 2 and the EOT-less version 1."""
    header = _read_header(path, TOKENIZER_MAGIC, TOKENIZER_VERSIONS, "tokenizer")
    n = int(header[2])
    if n <= 0:
        raise FormatError(path, "header[2]", f"header[2] num_tokens is {n}, must be positive")
    if header[1] == 1:
        if n != TOKENIZER_V1_VOCAB:
            raise FormatError(
                path,
                "header[2]",
                f"header[2] num_tokens is {n}, a version 1 tokenizer must "
                f"have {TOKENIZER_V1_VOCAB} (its EOT is implied)",
            )
        eot = TOKENIZER_V1_EOT
        _check_reserved_zero(path, header, 3)
    else:
        eot = int(header[3])
        if not 0 <= eot < n:
            raise FormatError(path, "header[3]", f"header[3] eot is {eot}, outside [0, num_tokens={n})")
        _check_reserved_zero(path, header, 4)
    with open(path, "rb") as f:
        data = f.read()[HEADER_BYTES:]
    tokens, pos = [], 0
    for i in range(n):
        if pos >= len(data):
            raise FormatError(path, "size", f"file is truncated: it ends before token {i} of {n}")
        length = data[pos]
        if length == 0:
            raise FormatError(path, f"token[{i}]", f"token[{i}] has length 0 (at byte {HEADER_BYTES + pos})")
        if pos + 1 + length > len(data):
            raise FormatError(
                path, "size", f"file is truncated: token {i} of {n} needs {length} bytes, {len(data) - pos - 1} left"
            )
        tokens.append(data[pos + 1 : pos + 1 + length])
        pos += 1 + length
    if pos != len(data):
        raise FormatError(path, "size", f"file has {len(data) - pos} trailing bytes after its {n} tokens")
    return tokens, eot


# ----------------------------------------------------------------------------- checksums
def sha256_file(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- trainer state (tools.train)
# Ours, not llm.c's (train_gpt2.cu's state file, magic 20240527, holds CUDA-side fields we have no use for):
# what tools.train needs to continue a run bit for bit, beside the model checkpoint of the same step.
#
#   header int32[256], the rest zero:
#     [0] magic 20261126, [1] version 2, [2] step, [3] B, [4] T, [5] grad_accum,
#     [10..11] uint64 num_parameters, [12..13] uint64 sampler xorshift state,
#     the train loader (reference.data.DataLoader): [14] process_rank, [15] num_processes, [16] shuffle (0/1),
#     [17] num_shards, [18..19] uint64 current_shard, [20..21] uint64 current_sample,
#     shuffled only (else 0): [22..23] uint64 shard_num_samples, [24] mt19937 left, [25] mt19937 next
#   then AdamW m and v, num_parameters float32 each,
#   then, shuffled only: shard_order int32[num_shards], sample_order int32[shard_num_samples], mt19937 state
#   uint32[624] (llm.c's state file stores the same three for its shuffled loader)
TRAINER_STATE_MAGIC = 20261126
TRAINER_STATE_VERSION = 2
MT19937_WORDS = 624


@dataclass
class LoaderState:
    """Where a reference.data.DataLoader stands: its rank's slice, the shard and sample it reads next, and,
    when it shuffles, its permutations and its mt19937 (None when it does not)."""

    process_rank: int
    num_processes: int
    shuffle: bool
    num_shards: int
    current_shard: int  # position in the (shuffled) shard order
    current_sample: int  # samples of the current shard already read
    shard_order: np.ndarray | None = None  # int32 (num_shards,): llm.c's shard_indices
    sample_order: np.ndarray | None = None  # int32 (shard_num_samples,): llm.c's intra_shard_indices
    rng_words: np.ndarray | None = None  # uint32 (624,): mt19937 state_
    rng_left: int = 0
    rng_next: int = 0


@dataclass
class TrainerState:
    step: int
    B: int
    T: int
    grad_accum: int
    sampler_state: int  # reference.sampling.Sampler's xorshift state
    m: np.ndarray  # AdamW moments, float32 (num_parameters,), in tools.train's grad_accum scale
    v: np.ndarray
    loader: LoaderState


def _u64(header, first_int32):
    """The uint64 stored little-endian in int32 fields first_int32 and first_int32 + 1."""
    return int(header[first_int32 : first_int32 + 2].view("<u8")[0])


def write_trainer_state(path: PathLike, state: TrainerState) -> None:
    loader, n = state.loader, np.asarray(state.m).size
    header = np.zeros(HEADER_INTS, "<i4")
    header[:6] = TRAINER_STATE_MAGIC, TRAINER_STATE_VERSION, state.step, state.B, state.T, state.grad_accum
    header[14:18] = loader.process_rank, loader.num_processes, int(loader.shuffle), loader.num_shards
    wide = header.view("<u8")  # uint64 k is int32 fields 2k, 2k + 1
    wide[5], wide[6], wide[9], wide[10] = n, state.sampler_state, loader.current_shard, loader.current_sample
    if loader.shuffle:
        wide[11] = loader.sample_order.size
        header[24:26] = loader.rng_left, loader.rng_next
    with atomic_write(path) as f:
        f.write(header.tobytes())
        f.write(np.asarray(state.m, "<f4").tobytes())
        f.write(np.asarray(state.v, "<f4").tobytes())
        if loader.shuffle:
            f.write(np.asarray(loader.shard_order, "<i4").tobytes())
            f.write(np.asarray(loader.sample_order, "<i4").tobytes())
            f.write(np.asarray(loader.rng_words, "<u4").tobytes())


def _check_permutation(path, field, values):
    if not np.array_equal(np.sort(values), np.arange(values.size)):
        raise FormatError(path, field, f"{field} ({values.size} entries) is not a permutation of 0..{values.size - 1}")


def read_trainer_state(path: PathLike, num_parameters: int) -> TrainerState:
    """-> TrainerState; FormatError names the field. num_parameters: the model's, which m and v must match."""
    header = _read_header(path, TRAINER_STATE_MAGIC, (TRAINER_STATE_VERSION,), "trainer state")
    step, B, T, grad_accum = (int(x) for x in header[2:6])
    if step < 0:
        raise FormatError(path, "header[2]", f"header[2] step is {step}, must be >= 0")
    for i, name, value in ((3, "B", B), (4, "T", T), (5, "grad_accum", grad_accum)):
        if value <= 0:
            raise FormatError(path, f"header[{i}]", f"header[{i}] {name} is {value}, must be positive")
    _check_reserved_zero(path, header[:10], 6)  # int32 fields 10..25 hold the loader and the uint64s
    _check_reserved_zero(path, header, 26)
    n, sampler_state = _u64(header, 10), _u64(header, 12)
    if n != num_parameters:
        raise FormatError(path, "header[10]", f"header[10] num_parameters is {n}, the model has {num_parameters}")
    rank, nproc, shuffle, num_shards = (int(x) for x in header[14:18])
    if nproc <= 0:
        raise FormatError(path, "header[15]", f"header[15] num_processes is {nproc}, must be positive")
    if not 0 <= rank < nproc:
        raise FormatError(path, "header[14]", f"header[14] process_rank is {rank}, outside [0, {nproc})")
    if shuffle not in (0, 1):
        raise FormatError(path, "header[16]", f"header[16] shuffle is {shuffle}, must be 0 or 1")
    if num_shards <= 0:
        raise FormatError(path, "header[17]", f"header[17] num_shards is {num_shards}, must be positive")
    current_shard, current_sample, num_samples = _u64(header, 18), _u64(header, 20), _u64(header, 22)
    if current_shard >= num_shards:
        raise FormatError(
            path, "header[18]", f"header[18] current_shard is {current_shard}, outside [0, num_shards={num_shards})"
        )
    left, next_ = int(header[24]), int(header[25])
    if not shuffle:
        _check_reserved_zero(path, header[:26], 22)  # no permutations, no generator
        extra = 0
    else:
        if current_sample > num_samples:
            raise FormatError(
                path,
                "header[20]",
                f"header[20] current_sample is {current_sample}, beyond header[22] shard_num_samples {num_samples}",
            )
        if not 1 <= left <= MT19937_WORDS:
            raise FormatError(path, "header[24]", f"header[24] mt19937 left is {left}, outside [1, {MT19937_WORDS}]")
        if not 0 <= next_ <= MT19937_WORDS:
            raise FormatError(path, "header[25]", f"header[25] mt19937 next is {next_}, outside [0, {MT19937_WORDS}]")
        extra = 4 * (num_shards + num_samples + MT19937_WORDS)
    _check_size(
        path,
        HEADER_BYTES + 8 * n + extra,
        f"m and v of {n} parameters"
        + (f", {num_shards} + {num_samples} permutation entries and an mt19937 state" if shuffle else ""),
    )
    m = np.fromfile(path, "<f4", count=n, offset=HEADER_BYTES)
    v = np.fromfile(path, "<f4", count=n, offset=HEADER_BYTES + 4 * n)
    loader = LoaderState(rank, nproc, bool(shuffle), num_shards, current_shard, current_sample)
    if shuffle:
        offset = HEADER_BYTES + 8 * n
        loader.shard_order = np.fromfile(path, "<i4", count=num_shards, offset=offset).astype(np.int32)
        loader.sample_order = np.fromfile(path, "<i4", count=num_samples, offset=offset + 4 * num_shards)
        loader.sample_order = loader.sample_order.astype(np.int32)
        loader.rng_words = np.fromfile(
            path, "<u4", count=MT19937_WORDS, offset=offset + 4 * (num_shards + num_samples)
        ).astype(np.uint32)
        loader.rng_left, loader.rng_next = left, next_
        _check_permutation(path, "shard_order", loader.shard_order)
        _check_permutation(path, "sample_order", loader.sample_order)
    return TrainerState(step, B, T, grad_accum, sampler_state, m, v, loader)


# ----------------------------------------------------------------------------- a trainer's checkpoints
# OUTPUT_DIR/model_STEP.bin (write_checkpoint), state_STEP.bin (write_trainer_state) and DONE_STEP (empty),
# STEP as %08d, llm.c's layout (train_gpt2.cu). Written in that order, each atomically, so a crash at any
# point leaves every DONE-marked step complete.
def checkpoint_paths(outdir: PathLike, step: int, rank: int = 0) -> tuple[Path, Path, Path]:
    """-> (model, trainer state, DONE marker) paths of `step`; a data-parallel rank > 0 has a state file of its
    own (its data loader's place), beside rank 0's."""
    outdir = Path(outdir)
    state = f"state_{step:08d}.bin" if rank == 0 else f"state_{step:08d}_rank{rank}.bin"
    return outdir / f"model_{step:08d}.bin", outdir / state, outdir / f"DONE_{step:08d}"


def write_training_checkpoint(outdir: PathLike, config: GPT2Config, params: np.ndarray, state: TrainerState) -> None:
    """The model, the trainer state, then the DONE marker of step state.step (rank 0's part: the other ranks
    write their states with write_rank_state before it)."""
    model_path, state_path, done_path = checkpoint_paths(outdir, state.step)
    write_checkpoint(model_path, config, params)
    write_trainer_state(state_path, state)
    with atomic_write(done_path):
        pass


def write_rank_state(outdir: PathLike, rank: int, state: TrainerState) -> None:
    write_trainer_state(checkpoint_paths(outdir, state.step, rank)[1], state)


def done_steps(outdir: PathLike) -> list[int]:
    """Steps with a DONE marker, ascending."""
    matches = (re.fullmatch(r"DONE_(\d{8})", p.name) for p in Path(outdir).glob("DONE_*"))
    return sorted(int(m[1]) for m in matches if m)


def newest_checkpoint(outdir: PathLike) -> int | None:
    """The highest step with a DONE marker and its two files, or None."""
    return next(
        (s for s in reversed(done_steps(outdir)) if all(p.exists() for p in checkpoint_paths(outdir, s)[:2])), None
    )


def delete_old_checkpoints(outdir: PathLike, keep: int) -> None:
    """All but the newest `keep` DONE steps go, their DONE marker first (a half-deleted one is incomplete)."""
    for step in done_steps(outdir)[:-keep]:
        model_path, state_path, done_path = checkpoint_paths(outdir, step)
        for path in (done_path, model_path, state_path, *Path(outdir).glob(f"state_{step:08d}_rank*.bin")):
            path.unlink(missing_ok=True)
