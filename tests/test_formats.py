"""llm.c's file formats, the tokenizer, the tiny Shakespeare data and the fixture directories.

Round trips are exact (bit-for-bit); sizes are llm.c's published byte counts; every reader must refuse
a damaged file with a FormatError naming the file and the field.
"""

import json
from pathlib import Path
import re
import shutil

import numpy as np
import pytest

from conformance.fixture import (
    CHECKPOINT,
    CHECKPOINT_BF16,
    DEBUG_STATE,
    GPT2_124M_FIXTURE,
    LOSSES_FROM_MANIFEST,
    LOSSES_FROM_ORACLE,
    MANIFEST,
    default_fixture_dirs,
    load_fixture,
)
from reference import formats, tokenizer
from reference.formats import (
    FormatError,
    atomic_write,
    bf16_bits_to_fp32,
    check_tokens,
    checkpoint_size,
    debug_state_size,
    fp32_to_bf16_bits,
    read_checkpoint,
    read_debug_state,
    read_tokenizer,
    read_tokens,
    write_checkpoint,
    write_debug_state,
    write_tokenizer,
    write_tokens,
)
from reference.model import GPT2Config, init_params
from reference.oracle import expected_outputs
from tests.badfiles import append, patch_header, truncate
from tools.export_tokenizer import GPT2_TOKENIZER_BYTES, export_tokenizer
from tools.prepare_data import TRAIN_TOKENS, VAL_TOKENS, prepare_tinyshakespeare

SMALL = GPT2Config.from_descriptor("L2-NH4-C16-V100-T16")  # Vp 128: wte has padded rows
D12 = GPT2Config.from_descriptor("d12")

# sha256 of tools/prepare_data.py's output, recorded from its first run (tiktoken 0.14, the GPT-2 encoding
# files pinned by SHA256SUMS). They catch any drift in tokenization; that the output is llm.c's is checked
# independently by the token counts llm.c's dev/data/tinyshakespeare.py prints (32,768 val / 305,260 train)
# and by the val split's first tokens, llm.c's well-known batch start "<|endoftext|>First Citizen:\nBefore".
TINYSHAKESPEARE_SHA256 = {
    "tiny_shakespeare_val.bin": "fe99db720dc7c83e694806d4e047a952909411da1daccde4ccc2e55f40882a62",
    "tiny_shakespeare_train.bin": "8a70606be574040c26d225694f5f9759973b419852d22f7fe5c118e1b359dcc8",
}
VAL_FIRST_TOKENS = [50256, 5962, 22307, 25, 198, 8421, 356, 5120, 597, 2252, 11, 3285, 502, 2740, 13]


def raises_format_error(path, field, detail):
    """pytest.raises for a FormatError naming `path` (in .path and the message) and `field`."""

    class Check:
        def __enter__(self):
            self.ctx = pytest.raises(FormatError, match=re.escape(Path(path).name))
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            suppressed = self.ctx.__exit__(*exc)
            if not suppressed:
                return False
            error = self.info.value
            assert Path(error.path) == Path(path)
            assert error.field == field, f"field {error.field!r}, expected {field!r}: {error}"
            assert re.search(detail, str(error)), f"{detail!r} not in {error}"
            return suppressed

    return Check()


def random_params(config, seed=0):
    return np.random.default_rng(seed).standard_normal(config.num_parameters).astype(np.float32)


# ----------------------------------------------------------------------------- writers of each format
def make_checkpoint(tmp_path, dtype="fp32", config=SMALL):
    path = tmp_path / ("model.bin" if dtype == "fp32" else "model_bf16.bin")
    write_checkpoint(path, config, random_params(config), dtype)
    return path


def make_debug_state(tmp_path, config=SMALL, B=2, T=8):
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, config.vocab_size, (B, T + 1))
    path = tmp_path / "debug_state.bin"
    write_debug_state(
        path,
        tokens[:, :-1],
        tokens[:, 1:],
        rng.standard_normal((B, T, config.vocab_size)),
        3.5,
        random_params(config, 2),
    )
    return path


def make_tokens(tmp_path, n=100):
    path = tmp_path / "tokens.bin"
    write_tokens(path, np.arange(n) * 600)
    return path


def make_tokenizer(tmp_path):
    path = tmp_path / "tokenizer.bin"
    write_tokenizer(path, [b"a", b"bc", bytes(range(1, 256)), b"<|eot|>"], 3)
    return path


# reader, writer of a valid file, its magic
FORMATS = {
    "checkpoint_fp32": (read_checkpoint, make_checkpoint, formats.MODEL_MAGIC),
    "checkpoint_bf16": (read_checkpoint, lambda p: make_checkpoint(p, "bf16"), formats.MODEL_MAGIC),
    "debug_state": (lambda p: read_debug_state(p, SMALL), make_debug_state, formats.STATE_MAGIC),
    "tokens": (read_tokens, make_tokens, formats.TOKENS_MAGIC),
    "tokenizer": (read_tokenizer, make_tokenizer, formats.TOKENIZER_MAGIC),
}


# ----------------------------------------------------------------------------- round trips and sizes
def test_checkpoint_fp32_round_trip(tmp_path):
    params = random_params(SMALL)
    path = tmp_path / "model.bin"
    write_checkpoint(path, SMALL, params)
    config, read = read_checkpoint(path)
    assert config == SMALL
    assert read.dtype == np.float32 and np.array_equal(read, params)
    assert path.stat().st_size == checkpoint_size(SMALL) == 1024 + 4 * SMALL.num_parameters
    header = np.fromfile(path, "<i4", count=256)
    assert list(header[:8]) == [20240326, 3, 16, 100, 2, 4, 16, 128] and not header[8:].any()


def test_checkpoint_bf16_round_trip(tmp_path):
    params = random_params(SMALL)
    path = tmp_path / "model_bf16.bin"
    write_checkpoint(path, SMALL, params, "bf16")
    config, read = read_checkpoint(path)
    assert config == SMALL and read.dtype == np.float32
    assert path.stat().st_size == checkpoint_size(SMALL, "bf16") == 1024 + 2 * SMALL.num_parameters
    assert np.fromfile(path, "<i4", count=2)[1] == 5
    # widened exactly: the read values are the bf16 numbers themselves, within bf16's half-ulp of the fp32 ones
    assert np.array_equal(fp32_to_bf16_bits(read), fp32_to_bf16_bits(params))
    assert np.array_equal(read, bf16_bits_to_fp32(fp32_to_bf16_bits(params)))
    assert np.all(np.abs(read - params) <= np.abs(params) * 2.0**-8)


def test_bf16_rounds_to_nearest_even():
    bits = np.array(
        [0x3F800000, 0x3F808000, 0x3F818000, 0x3F808001, 0x3F80FFFF, 0xBF818000, 0x7F7FFFFF, 0x7F800000, 0x00000001],
        np.uint32,
    )
    expected = [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0x3F81, 0xBF82, 0x7F80, 0x7F80, 0x0000]
    assert fp32_to_bf16_bits(bits.view(np.float32)).tolist() == expected
    assert fp32_to_bf16_bits(np.array([np.nan], np.float32))[0] & 0x7FFF > 0x7F80  # still a NaN


def test_bf16_matches_torch():
    torch = pytest.importorskip("torch", reason="optional cross-check: torch is not installed")
    values = np.random.default_rng(3).standard_normal(100_000).astype(np.float32) * 10.0 ** np.arange(-20, 20, 0.0004)
    values = values.astype(np.float32)
    theirs = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(fp32_to_bf16_bits(values), theirs)


def test_d12_sizes_are_llmc_sizes():
    assert D12.num_parameters == 124_475_904
    assert checkpoint_size(D12, "fp32") == 497_904_640
    assert checkpoint_size(D12, "bf16") == 248_952_832
    assert debug_state_size(D12, 4, 64) == 549_369_860


def test_debug_state_round_trip(tmp_path):
    B, T = 3, 5
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, SMALL.vocab_size, (B, T + 1))
    logits = rng.standard_normal((B, T, SMALL.vocab_size)).astype(np.float32)
    grads = random_params(SMALL, 5)
    path = tmp_path / "state.bin"
    write_debug_state(path, tokens[:, :-1], tokens[:, 1:], logits, np.float32(2.25), grads)
    state = read_debug_state(path, SMALL)
    assert (state.B, state.T) == (B, T)
    assert state.x.dtype == np.int32 and np.array_equal(state.x, tokens[:, :-1])
    assert np.array_equal(state.y, tokens[:, 1:])
    assert np.array_equal(state.logits, logits) and state.loss == 2.25 and np.array_equal(state.grads, grads)
    assert path.stat().st_size == debug_state_size(SMALL, B, T)


def test_debug_state_size_must_match_config(tmp_path):
    path = make_debug_state(tmp_path)
    other = GPT2Config.from_descriptor("L1-NH4-C16-V100-T16")
    with raises_format_error(path, "size", r"trailing bytes.*B=2, T=8, V=100"):
        read_debug_state(path, other)


def test_tokens_round_trip(tmp_path):
    tokens = np.array([0, 1, 50256, 65535, 7], np.int64)
    path = tmp_path / "tokens.bin"
    write_tokens(path, tokens)
    read = read_tokens(path)
    assert read.dtype == np.uint16 and np.array_equal(read, tokens)
    assert path.stat().st_size == 1024 + 2 * len(tokens)
    assert list(np.fromfile(path, "<i4", count=3)) == [20240520, 1, 5]


def test_tokens_writer_rejects_unrepresentable(tmp_path):
    with pytest.raises(ValueError, match="65535"):
        write_tokens(tmp_path / "t.bin", [1, 65536])
    with pytest.raises(ValueError, match=r"\[0, 65535\]"):
        write_tokens(tmp_path / "t.bin", [-1, 2])
    with pytest.raises(ValueError, match="2\\^31"):
        write_tokens(tmp_path / "t.bin", np.broadcast_to(np.uint16(0), (2**31,)))  # a view: no memory
    assert list(tmp_path.iterdir()) == []


def test_tokenizer_round_trip_v2_and_v1(tmp_path):
    token_bytes = [b"a", b"\x00\xff", bytes(range(1, 256))]
    path = tmp_path / "tok.bin"
    write_tokenizer(path, token_bytes, 1)
    assert read_tokenizer(path) == (token_bytes, 1)
    assert path.stat().st_size == 1024 + len(token_bytes) + sum(map(len, token_bytes))
    # version 1 has no EOT field: llm.c assumes 50256 and requires exactly 50257 tokens
    v1 = tmp_path / "tok_v1.bin"
    header = np.zeros(256, "<i4")
    header[:3] = 20240328, 1, 50257
    v1.write_bytes(header.tobytes() + b"\x01x" * 50257)
    tokens, eot = read_tokenizer(v1)
    assert eot == 50256 and len(tokens) == 50257 and tokens[0] == b"x"
    patch_header(v1, 2, 3)
    with raises_format_error(v1, "header[2]", "version 1 tokenizer must have 50257"):
        read_tokenizer(v1)


def test_tokenizer_writer_rejects_bad_tokens(tmp_path):
    with pytest.raises(ValueError, match="token 1 is 0 bytes"):
        write_tokenizer(tmp_path / "t.bin", [b"a", b""], 0)
    with pytest.raises(ValueError, match="token 0 is 256 bytes"):
        write_tokenizer(tmp_path / "t.bin", [b"a" * 256], 0)
    with pytest.raises(ValueError, match="eot 2"):
        write_tokenizer(tmp_path / "t.bin", [b"a", b"b"], 2)


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]
    with atomic_write(path, "w") as f:
        f.write("new\n")
    assert path.read_text() == "new\n" and list(tmp_path.iterdir()) == [path]


# ----------------------------------------------------------------------------- every reader refuses bad files
@pytest.mark.parametrize("kind", FORMATS)
def test_reader_rejects_wrong_magic(tmp_path, kind):
    read, make, magic = FORMATS[kind]
    path = make(tmp_path)
    patch_header(path, 0, 12345)
    with raises_format_error(path, "magic", rf"header\[0\] magic is 12345, expected {magic}"):
        read(path)


@pytest.mark.parametrize("kind", FORMATS)
def test_reader_rejects_wrong_version(tmp_path, kind):
    read, make, _ = FORMATS[kind]
    path = make(tmp_path)
    patch_header(path, 1, 4)
    with raises_format_error(path, "version", r"header\[1\] version is 4, expected"):
        read(path)


@pytest.mark.parametrize("kind", FORMATS)
def test_reader_rejects_truncated_file(tmp_path, kind):
    read, make, _ = FORMATS[kind]
    path = make(tmp_path)
    truncate(path, 1)
    with raises_format_error(path, "size", "truncated"):
        read(path)


@pytest.mark.parametrize("kind", FORMATS)
def test_reader_rejects_file_shorter_than_header(tmp_path, kind):
    read, make, _ = FORMATS[kind]
    path = make(tmp_path)
    path.write_bytes(path.read_bytes()[:1000])
    with raises_format_error(path, "header", "1000 bytes, shorter than the 1024-byte header"):
        read(path)


@pytest.mark.parametrize("kind", FORMATS)
def test_reader_rejects_oversized_file(tmp_path, kind):
    read, make, _ = FORMATS[kind]
    path = make(tmp_path)
    append(path, b"\x01\x02\x03\x04")
    with raises_format_error(path, "size", "4 trailing bytes"):
        read(path)


@pytest.mark.parametrize("kind", FORMATS)
def test_reader_rejects_nonzero_reserved_header(tmp_path, kind):
    read, make, _ = FORMATS[kind]
    path = make(tmp_path)
    patch_header(path, 255, 7)
    with raises_format_error(path, "header[255]", r"header\[255\] is 7, expected 0"):
        read(path)


@pytest.mark.parametrize(
    "index, value, detail",
    [
        (6, 18, r"header\[6\] channels \(18\) is not divisible by header\[5\] num_heads \(4\)"),
        (7, 64, r"header\[7\] padded_vocab_size \(64\) is smaller than header\[3\] vocab_size \(100\)"),
        (4, 0, r"header\[4\] num_layers is 0, must be positive"),
        (3, -5, r"header\[3\] vocab_size is -5, must be positive"),
    ],
)
def test_checkpoint_rejects_nonsense_config(tmp_path, index, value, detail):
    path = make_checkpoint(tmp_path)
    patch_header(path, index, value)
    with raises_format_error(path, f"header[{index}]", detail):
        read_checkpoint(path)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_checkpoint_rejects_nan_params(tmp_path, dtype):
    path = make_checkpoint(tmp_path, dtype)
    itemsize = 4 if dtype == "fp32" else 2
    index = SMALL.padded_vocab_size * SMALL.channels + 3  # wpe, flat index 3
    data = bytearray(path.read_bytes())
    nan = np.array([np.nan], "<f4") if dtype == "fp32" else np.array([0x7FC0], "<u2")
    data[1024 + itemsize * index : 1024 + itemsize * (index + 1)] = nan.tobytes()
    path.write_bytes(bytes(data))
    with raises_format_error(path, "params", rf"parameter {index} \(wpe, flat index 3\) is nan"):
        read_checkpoint(path)


def test_checkpoint_writer_rejects_nan(tmp_path):
    params = random_params(SMALL)
    params[5] = np.inf
    with pytest.raises(ValueError, match=r"parameter 5 \(wte, flat index 5\) is inf"):
        write_checkpoint(tmp_path / "m.bin", SMALL, params)
    assert list(tmp_path.iterdir()) == []


def test_debug_state_rejects_bad_header_and_tokens(tmp_path):
    path = make_debug_state(tmp_path)
    patch_header(path, 3, SMALL.max_seq_len + 1)
    with raises_format_error(path, "header[3]", r"T is 17, must lie in \[1, max_seq_len=16\]"):
        read_debug_state(path, SMALL)
    path = make_debug_state(tmp_path)
    patch_header(path, 256 + 5, SMALL.vocab_size)  # x[5]
    with raises_format_error(path, "x", r"x\[5\] is token id 100, outside \[0, vocab_size=100\)"):
        read_debug_state(path, SMALL)


NAN_BITS = int(np.array(np.nan, "<f4").view("<i4"))
INF_BITS = int(np.array(np.inf, "<f4").view("<i4"))


@pytest.mark.parametrize(
    "word, bits, field, detail",
    [
        # words of make_debug_state's file (B=2, T=8, V=100): header 256, x and y 16 each, logits, loss, grads
        (256 + 32 + 1 * 100 + 3, NAN_BITS, "logits", r"logits\[0, 1, 3\] is nan, must be finite"),
        (256 + 32 + 1600, INF_BITS, "loss", r"loss is inf, must be finite"),
        (256 + 32 + 1600 + 1 + 7, INF_BITS, "grads", r"grads\[7\] is inf, must be finite"),
    ],
)
def test_debug_state_rejects_nonfinite(tmp_path, word, bits, field, detail):
    """A NaN in the oracle's file must be caught here, not later as an apparent backend failure."""
    path = make_debug_state(tmp_path)
    patch_header(path, word, bits)
    with raises_format_error(path, field, detail):
        read_debug_state(path, SMALL)


def test_check_tokens(tmp_path):
    path = make_tokens(tmp_path, 10)  # ids 0, 600, ..., 5400
    tokens = read_tokens(path)
    check_tokens(tokens, 5401, path, B=3, T=3)
    with raises_format_error(path, "tokens", r"tokens\[9\] is token id 5400, outside \[0, vocab_size=5400\)"):
        check_tokens(tokens, 5400, path)
    with raises_format_error(path, "tokens", r"10 tokens, too few for B\*T\+1 = 17 \(B=4, T=4\)"):
        check_tokens(tokens, 50257, path, B=4, T=4)


def test_tokenizer_rejects_zero_length_token(tmp_path):
    path = make_tokenizer(tmp_path)
    data = bytearray(path.read_bytes())
    data[1024 + 2] = 0  # token 1's length byte (token 0 is b"a")
    path.write_bytes(bytes(data))
    with raises_format_error(path, "token[1]", "token.1. has length 0"):
        read_tokenizer(path)


# ----------------------------------------------------------------------------- tokenizer and data
def test_offline_encoding_matches_gpt2():
    # ids from GPT-2's published vocabulary: "Hello" 15496, " world" 995, EOT 50256
    assert tokenizer.encode("Hello world<|endoftext|>") == [15496, 995, 50256]
    assert tokenizer.decode([15496, 995]) == "Hello world"
    assert tokenizer.token_bytes(50256) == b"<|endoftext|>"
    assert tokenizer.gpt2_encoding().n_vocab == 50257


def test_encoding_files_checked_against_sha256sums(tmp_path, monkeypatch):
    for name in ("SHA256SUMS", "vocab.bpe", "encoder.json"):
        shutil.copy(tokenizer.ENCODING_DIR / name, tmp_path / name)
    with open(tmp_path / "vocab.bpe", "a") as f:
        f.write("x y\n")
    monkeypatch.setattr(tokenizer, "ENCODING_DIR", tmp_path)
    tokenizer.gpt2_encoding.cache_clear()
    try:
        with raises_format_error(tmp_path / "vocab.bpe", "sha256", "expected 1ce16647"):
            tokenizer.gpt2_encoding()
    finally:
        tokenizer.gpt2_encoding.cache_clear()


def test_export_tokenizer_is_llmc_size_and_round_trips(tmp_path):
    path = export_tokenizer(tmp_path / "gpt2_tokenizer.bin")
    assert path.stat().st_size == GPT2_TOKENIZER_BYTES == 372_108
    assert list(np.fromfile(path, "<i4", count=4)) == [20240328, 2, 50257, 50256]
    tokens, eot = read_tokenizer(path)
    assert eot == 50256 and len(tokens) == 50257
    assert tokens[:3] == [b"!", b'"', b"#"] and tokens[50256] == b"<|endoftext|>"
    assert all(tokens[i] == tokenizer.token_bytes(i) for i in range(0, 50257, 97))


def test_prepare_tinyshakespeare(tmp_path):
    val_path, train_path = prepare_tinyshakespeare(tmp_path)
    val, train = read_tokens(val_path), read_tokens(train_path)
    assert (val.size, train.size) == (VAL_TOKENS, TRAIN_TOKENS) == (32_768, 305_260)
    assert val[: len(VAL_FIRST_TOKENS)].tolist() == VAL_FIRST_TOKENS
    for path in (val_path, train_path):
        assert formats.sha256_file(path) == TINYSHAKESPEARE_SHA256[path.name]


# ----------------------------------------------------------------------------- fixtures
COMMITTED = [d for d in default_fixture_dirs() if d.name != GPT2_124M_FIXTURE.name]


@pytest.mark.parametrize("fixture_dir", COMMITTED, ids=lambda d: d.name)
def test_committed_fixture_loads_and_is_small(fixture_dir):
    fixture = load_fixture(fixture_dir)
    assert fixture.losses_source == LOSSES_FROM_MANIFEST and len(fixture.expected_losses) == 10
    assert fixture.x.shape == fixture.y.shape == (fixture.B, fixture.T) and fixture.x.dtype == np.int32
    assert np.array_equal(fixture.x[:, 1:], fixture.y[:, :-1])  # y is x shifted by one
    assert fixture.logits.shape == (fixture.B, fixture.T, fixture.config.vocab_size)
    assert fixture.params.shape == fixture.grads.shape == (fixture.config.num_parameters,)
    assert fixture.loss == fixture.expected_losses[0]
    for path in fixture_dir.iterdir():
        assert path.stat().st_size < 4 << 20, f"{path} is too big to commit"


@pytest.mark.parametrize("fixture_dir", COMMITTED, ids=lambda d: d.name)
def test_committed_fixture_matches_current_oracle(fixture_dir):
    """The stored expected values are the float64 oracle's, rounded once to fp32 (relative 2^-24 per element),
    and the parameters are init_params' at the manifest's seed. The oracle recomputed here may differ from the
    one that wrote the fixture by float64 rounding under another BLAS: at most ~1e-15 of the tensor's scale,
    which can exceed 2^-24 of an element that cancels to near zero, hence atol 1e-12 * max |value|."""
    fixture = load_fixture(fixture_dir)
    manifest = fixture.manifest
    assert np.array_equal(fixture.params, init_params(fixture.config, manifest["seed"], np.float32))
    expected = expected_outputs(fixture.config, fixture.params, fixture.x, fixture.y, settings=fixture.optimizer)
    for name in ("logits", "grads"):
        stored, recomputed = getattr(fixture, name), getattr(expected, name)
        np.testing.assert_allclose(stored, recomputed, rtol=2**-23, atol=1e-12 * np.abs(recomputed).max(), err_msg=name)
    np.testing.assert_allclose(fixture.expected_losses, expected.losses, rtol=2**-23)
    _, bf16 = read_checkpoint(fixture.bf16_checkpoint_path)
    assert np.array_equal(bf16, bf16_bits_to_fp32(fp32_to_bf16_bits(fixture.params)))


def test_fixture_sha256_mismatch_names_file(tmp_path):
    shutil.copytree(COMMITTED[0], tmp_path, dirs_exist_ok=True)
    path = tmp_path / DEBUG_STATE
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with raises_format_error(path, "sha256", f"sha256 is [0-9a-f]{{64}}, .*{MANIFEST} says"):
        load_fixture(tmp_path)


def _drop(entry, key):
    del entry[key]


MANIFEST_DAMAGE = {
    # name: (change to the manifest dict, field, words of the message)
    "file-without-size": (
        lambda m: _drop(m["files"][CHECKPOINT], "size"),
        f"files[{CHECKPOINT!r}]",
        r"has no 'size' entry",
    ),
    "file-size-not-int": (
        lambda m: m["files"][CHECKPOINT].update(size="big"),
        f"files[{CHECKPOINT!r}].size",
        r"is 'big', must be an integer",
    ),
    "unknown-optimizer-key": (
        lambda m: m["optimizer"].update(lr=1e-3),
        "optimizer",
        r"unknown entry 'lr' \(known: learning_rate, ",
    ),
    "optimizer-value-not-number": (
        lambda m: m["optimizer"].update(beta1="0.9"),
        "optimizer.beta1",
        r"is '0.9', must be a number",
    ),
    "negative-channels": (
        lambda m: m["config"].update(channels=-8),
        "config",
        r"GPT2Config.channels must be a positive integer, got -8",
    ),
    "config-missing-key": (lambda m: _drop(m["config"], "num_heads"), "config", r"has no 'num_heads' entry"),
    "no-losses": (lambda m: _drop(m["expected"], "losses"), "expected", r"has no 'losses' entry"),
    "three-losses": (
        lambda m: m["expected"].update(losses=[10.8, 10.7, 10.6]),
        "expected.losses",
        r"has 3 values, test_gpt2's loop needs 10",
    ),
    "loss-not-number": (
        lambda m: m["expected"]["losses"].__setitem__(4, None),
        "expected.losses",
        r"expected.losses\[4\] is None",
    ),
    "B-not-positive": (lambda m: m.update(B=0), "B", r"B is 0, must be positive"),
    "no-T": (lambda m: _drop(m, "T"), "T", r"has no 'T' entry"),
    "files-not-an-object": (lambda m: m.update(files=[]), "files", r"files is \[\], must be an object"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_DAMAGE))
def test_fixture_rejects_bad_manifest(tmp_path, case):
    change, field, detail = MANIFEST_DAMAGE[case]
    shutil.copytree(COMMITTED[0], tmp_path, dirs_exist_ok=True)
    path = tmp_path / MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    with raises_format_error(path, field, detail):
        load_fixture(tmp_path)


def test_fixture_without_manifest_uses_oracle(tmp_path):
    source = load_fixture(COMMITTED[0])
    for name in (CHECKPOINT, DEBUG_STATE):
        shutil.copy(COMMITTED[0] / name, tmp_path / name)
    fixture = load_fixture(tmp_path)
    assert fixture.manifest is None and fixture.losses_source == LOSSES_FROM_ORACLE
    assert fixture.bf16_checkpoint_path is None
    np.testing.assert_allclose(fixture.expected_losses, source.expected_losses, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(
    not (GPT2_124M_FIXTURE / MANIFEST).exists(), reason="fixtures/gpt2_124M is not generated (run `make fixtures`)"
)
def test_gpt2_124m_fixture_sizes():
    manifest = json.loads((GPT2_124M_FIXTURE / MANIFEST).read_text())
    sizes = {name: (GPT2_124M_FIXTURE / name).stat().st_size for name in (CHECKPOINT, CHECKPOINT_BF16, DEBUG_STATE)}
    assert sizes == {CHECKPOINT: 497_904_640, CHECKPOINT_BF16: 248_952_832, DEBUG_STATE: 549_369_860}
    assert {name: entry["size"] for name, entry in manifest["files"].items()} == sizes
    fixture = load_fixture(GPT2_124M_FIXTURE)
    assert fixture.config == D12 and (fixture.B, fixture.T) == (4, 64)
    assert fixture.x[0, : len(VAL_FIRST_TOKENS)].tolist() == VAL_FIRST_TOKENS


def test_stored_trajectories_are_the_oracles_and_tied_to_their_fixture(tmp_path, monkeypatch):
    """tools.make_fixtures --trajectories writes what Fixture.trajectory would compute; a file made for
    another checkpoint or batch, or with other settings, is an error naming it and how to regenerate."""
    from conformance import fixture as fixture_module
    from conformance.fixture import _TRAJECTORIES, FIXTURES_DIR, TRAJECTORIES, read_trajectories
    from conformance.model_checks import CONVENTIONS, DECAY_2D_CLIP, convention_settings
    from tools.make_fixtures import make_trajectories

    copy = tmp_path / "tiny-gpt2"
    shutil.copytree(FIXTURES_DIR / "tiny-gpt2", copy)
    make_trajectories(copy)
    fixture = load_fixture(copy)
    computed = {
        name: load_fixture(FIXTURES_DIR / "tiny-gpt2").trajectory(name, convention_settings(fixture, name))
        for name in CONVENTIONS
    }
    _TRAJECTORIES.clear()
    monkeypatch.setattr(fixture_module, "expected_trajectory", None)  # read from the file, never computed
    for name in CONVENTIONS:
        stored = fixture.trajectory(name, convention_settings(fixture, name))
        for field in ("losses", "grad_norms", "params", "m", "v"):
            assert np.array_equal(getattr(stored, field), getattr(computed[name], field)), (name, field)
    assert sorted(read_trajectories(fixture)) == sorted(CONVENTIONS)
    _TRAJECTORIES.clear()
    with pytest.raises(FormatError, match="decay_2d_clip was computed with"):
        fixture.trajectory("decay_2d_clip", type(DECAY_2D_CLIP)(learning_rate=1e-3))
    bad = tmp_path / "tiny-bytes"
    shutil.copytree(FIXTURES_DIR / "tiny-bytes", bad)
    shutil.copy(copy / TRAJECTORIES, bad / TRAJECTORIES)
    with pytest.raises(FormatError, match=f"{TRAJECTORIES}.*another checkpoint.*--trajectories"):
        read_trajectories(load_fixture(bad))
