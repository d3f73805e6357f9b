"""libllmc's robustness contract, through the cffi binding, for every native backend available here.

Bad input never crashes the process: malformed checkpoints, sizes beyond what a model was built
for, out-of-range tokens and calls out of order come back as LlmcError (with the library's code and
a message naming the file / field / position); NULL pointers and wrong arrays are caught by the
binding before C sees them. Also: a fixed thread count repeats a training step bit for bit.
"""

import os
from pathlib import Path
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from backends.base import BackendUnavailable
from backends.native import BUILTIN as NATIVE_BUILTIN
from backends.native import NativeBackend, native_backend
from conformance.checks import compare
from native import binding
from native.binding import ERROR_CODES, LlmcArgumentError, LlmcError, load_library
from reference.adamw import TEST_GPT2_SETTINGS, AdamWSettings
from reference.formats import FormatError, bf16_bits_to_fp32, fp32_to_bf16_bits, read_checkpoint, write_checkpoint
from reference.layers import KERNEL_NAMES
from reference.model import GPT2, PARAM_NAMES, GPT2Config, init_params, split_params
from tests.badfiles import append, patch_header, truncate

ROOT = Path(__file__).resolve().parent.parent
NATIVE = tuple(NATIVE_BUILTIN)
CONFIG = GPT2Config.from_descriptor("L2-NH4-C64-V256-T64")
TINY_DESCRIPTOR = "L1-NH2-C8-V10-T8"
TINY = GPT2Config.from_descriptor(TINY_DESCRIPTOR)  # Vp 128: a 5 KB checkpoint
LLMC_ERR_ARGUMENT, LLMC_ERR_FILE, LLMC_ERR_FORMAT, LLMC_ERR_TOKEN, LLMC_ERR_STATE, LLMC_ERR_UNSUPPORTED = (
    ERROR_CODES[f"LLMC_ERR_{name}"] for name in ("ARGUMENT", "FILE", "FORMAT", "TOKEN", "STATE", "UNSUPPORTED")
)


def pytest_generate_tests(metafunc):
    """Every native backend (each skips, saying why, where it cannot run)."""
    if "native" in metafunc.fixturenames:
        metafunc.parametrize("native", NATIVE, indirect=True, scope="module")


@pytest.fixture(scope="module")
def native(request):
    try:
        return native_backend(request.param)
    except BackendUnavailable as e:
        pytest.skip(str(e))


def tokens(rng, shape, V):
    return rng.integers(0, V, shape).astype(np.int32)


# ----------------------------------------------------------------------------- checkpoints
def checkpoint(path, config, params, dtype="fp32", header=None, tail=b"", cut=0):
    """reference.formats' llm.c model file, then damaged: header {index: value} patched, tail appended,
    cut bytes dropped at the end."""
    write_checkpoint(path, config, params, dtype)
    for i, value in (header or {}).items():
        patch_header(path, i, value)
    if tail:
        append(path, tail)
    if cut:
        truncate(path, cut)
    return path


def test_checkpoint_round_trip(native, tmp_path):
    params = init_params(TINY, seed=3)
    model = native.model_from_checkpoint(checkpoint(tmp_path / "m.bin", TINY, params), 2, 8)
    assert model.config == TINY
    np.testing.assert_array_equal(model.params(), params)
    model.close()


def test_checkpoint_bf16(native, tmp_path):
    params = init_params(TINY, seed=3)
    model = native.model_from_checkpoint(checkpoint(tmp_path / "m.bin", TINY, params, "bf16"), 2, 8)
    np.testing.assert_array_equal(model.params(), bf16_bits_to_fp32(fp32_to_bf16_bits(params)))  # widened exactly
    model.close()


MALFORMED = {
    # name: (checkpoint keyword arguments, expected code, words the message must contain)
    "magic": (dict(header={0: 20240327}), LLMC_ERR_FORMAT, ["magic", "20240327"]),
    "version": (dict(header={1: 4}), LLMC_ERR_FORMAT, ["version", "4"]),
    "truncated": (dict(cut=7), LLMC_ERR_FORMAT, ["size", "truncated"]),
    "short-header": (dict(cut=10**9), LLMC_ERR_FORMAT, ["header"]),
    "oversized": (dict(tail=b"\0" * 4), LLMC_ERR_FORMAT, ["size", "oversized"]),
    "zero-heads": (dict(header={5: 0}), LLMC_ERR_FORMAT, ["num_heads", "0"]),
    "negative-layers": (dict(header={4: -3}), LLMC_ERR_FORMAT, ["num_layers", "-3"]),
    "heads-not-dividing": (dict(header={5: 3}), LLMC_ERR_FORMAT, ["channels", "num_heads"]),
    "padded-vocab-too-small": (dict(header={7: 5}), LLMC_ERR_FORMAT, ["padded_vocab_size"]),
    "huge-channels": (dict(header={6: 2**30}), LLMC_ERR_FORMAT, ["channels"]),
    "huge-vocab": (dict(header={3: 2**31 - 1, 7: 2**31 - 1}), LLMC_ERR_FORMAT, ["vocab_size"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_checkpoint(native, tmp_path, case):
    kwargs, code, words = MALFORMED[case]
    path = checkpoint(tmp_path / f"{case}.bin", TINY, init_params(TINY), **kwargs)
    with pytest.raises(LlmcError) as info:
        native.model_from_checkpoint(path, 1, 8)
    assert info.value.code == code, str(info.value)
    message = str(info.value)
    for word in [str(path)] + words:
        assert word in message, f"{word!r} missing from: {message}"


def test_checkpoint_not_a_file(native, tmp_path):
    for path in (tmp_path / "missing.bin", tmp_path):
        with pytest.raises(LlmcError) as info:
            native.model_from_checkpoint(path, 1, 8)
        assert info.value.code == LLMC_ERR_FILE and str(path) in str(info.value)


def test_malformed_checkpoint_in_subprocess(native, tmp_path):
    """The strongest form of 'never aborts': a fresh process reads a broken file and exits normally."""
    path = checkpoint(tmp_path / "broken.bin", TINY, init_params(TINY), header={5: 0}, cut=100)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from backends.native import native_backend
        from native.binding import LlmcError
        backend = native_backend({native.name!r})
        try:
            backend.model_from_checkpoint({str(path)!r}, 1, 8)
        except LlmcError as e:
            print("code", e.code)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"code {LLMC_ERR_FORMAT}" in result.stdout


# ----------------------------------------------------------------------------- the model API
@pytest.fixture
def model(native):
    m = native.model(CONFIG, init_params(CONFIG, seed=1), 2, 16)
    yield m
    m.close()


def test_model_limits(native, model):
    rng = np.random.default_rng(0)
    for B, T in ((3, 8), (2, 17), (3, 17)):
        with pytest.raises(LlmcArgumentError) as info:
            model.forward(tokens(rng, (B, T), CONFIG.vocab_size))
        assert info.value.code == LLMC_ERR_ARGUMENT and "max_B" in str(info.value)
    with pytest.raises(LlmcArgumentError):  # max_T beyond the config's max_seq_len
        native.model(CONFIG, init_params(CONFIG), 1, CONFIG.max_seq_len + 1)
    for max_B, max_T in ((0, 8), (1, 0), (-1, 8)):
        with pytest.raises(LlmcArgumentError):
            native.model(CONFIG, init_params(CONFIG), max_B, max_T)
    assert model.forward(tokens(rng, (2, 16), CONFIG.vocab_size), tokens(rng, (2, 16), CONFIG.vocab_size)) > 0


@pytest.mark.parametrize("which", ["inputs", "targets"])
@pytest.mark.parametrize("bad", [-1, CONFIG.vocab_size, CONFIG.padded_vocab_size])
def test_token_out_of_range(model, which, bad):
    rng = np.random.default_rng(0)
    x, y = tokens(rng, (2, 8), CONFIG.vocab_size), tokens(rng, (2, 8), CONFIG.vocab_size)
    (x if which == "inputs" else y)[1, 5] = bad
    with pytest.raises(LlmcError) as info:
        model.forward(x, y)
    assert info.value.code == LLMC_ERR_TOKEN
    assert f"{which}[1][5] = {bad}" in str(info.value), str(info.value)


def test_backward_needs_forward_with_targets(model):
    rng = np.random.default_rng(0)
    x, y = tokens(rng, (2, 8), CONFIG.vocab_size), tokens(rng, (2, 8), CONFIG.vocab_size)
    with pytest.raises(LlmcError) as info:
        model.backward()
    assert info.value.code == LLMC_ERR_STATE
    assert model.forward(x) is None
    with pytest.raises(LlmcError) as info:
        model.backward()
    assert info.value.code == LLMC_ERR_STATE
    model.forward(x, y)
    model.zero_grad()
    model.backward()


def test_gradients_accumulate_until_zero_grad(native, model):
    """llm.c's contract: backward adds into the gradients; zero_grad (however lazily) empties them."""
    rng = np.random.default_rng(0)
    batches = [(tokens(rng, (2, 8), CONFIG.vocab_size), tokens(rng, (2, 8), CONFIG.vocab_size)) for _ in range(2)]
    single = []
    for x, y in batches:
        model.forward(x, y)
        model.zero_grad()
        model.backward()
        single.append(model.grads())
    model.zero_grad()
    for x, y in batches:
        model.forward(x, y)
        model.backward()
    # not bit for bit: adding into g1 rounds differently from adding g1 and g2 afterwards
    accumulated, summed = split_params(model.grads(), CONFIG), split_params(single[0] + single[1], CONFIG)
    assert_within_tolerance(
        native, [(f"accumulated/d{name}", accumulated[name], summed[name], f"grad:d{name}") for name in PARAM_NAMES]
    )
    model.zero_grad()
    assert not model.grads().any()
    m, v = model.optimizer_state()
    assert not m.any() and not v.any()


def test_binding_rejects_bad_model_arguments(model):
    rng = np.random.default_rng(0)
    x = tokens(rng, (2, 8), CONFIG.vocab_size)
    with pytest.raises(TypeError, match="inputs"):
        model.forward(x.astype(np.float32))
    with pytest.raises(ValueError, match="inputs"):
        model.forward(x[0])
    with pytest.raises(ValueError, match="targets"):
        model.forward(x, x[:, :4])
    with pytest.raises(ValueError, match="flat"):
        model.set_params(np.zeros(CONFIG.num_parameters - 1, np.float32))
    with pytest.raises(ValueError, match="m"):
        model.set_optimizer_state(np.zeros(3, np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="params"):
        model._library.model_from_params(CONFIG, np.zeros(10, np.float32), 1, 8)
    model.close()
    with pytest.raises(ValueError, match="closed"):
        model.forward(x)
    model.close()  # closing twice is harmless


def test_update_rejects_bad_step(model):
    rng = np.random.default_rng(0)
    x = tokens(rng, (2, 8), CONFIG.vocab_size)
    model.forward(x, x)
    model.zero_grad()
    model.backward()
    with pytest.raises(LlmcArgumentError, match="t = 0"):
        model.update(AdamWSettings(**TEST_GPT2_SETTINGS), 0)


def test_matches_reference(native, model):
    """A smoke check of the whole step (the model-level suite does the careful comparison)."""
    rng = np.random.default_rng(0)
    x, y = tokens(rng, (2, 16), CONFIG.vocab_size), tokens(rng, (2, 16), CONFIG.vocab_size)
    ref = GPT2(CONFIG, init_params(CONFIG, seed=1), dtype=np.float64)
    expected = ref.forward(x, y)
    ref.backward()
    loss = model.forward(x, y)
    model.zero_grad()
    model.backward()
    got, want = split_params(model.grads(), CONFIG), split_params(ref.grads_memory, CONFIG)
    assert_within_tolerance(
        native,
        [("loss", loss, expected, "loss"), ("logits", model.logits(), ref.logits, "logits")]
        + [(f"grad/d{name}", got[name], want[name], f"grad:d{name}") for name in PARAM_NAMES],
    )


def assert_within_tolerance(native, comparisons):
    """comparisons: (check, got, want, quantity); each judged by the table's entry at the backend's precision."""
    results = [
        compare(check, native.name, got, want, (quantity, native.precision))
        for check, got, want, quantity in comparisons
    ]
    failed = [r.message() for r in results if not r.passed]
    assert not failed, "\n".join(failed)


# ----------------------------------------------------------------------------- determinism and threads
def train_twice(native, steps=2):
    rng = np.random.default_rng(7)
    x, y = tokens(rng, (2, 16), CONFIG.vocab_size), tokens(rng, (2, 16), CONFIG.vocab_size)
    model = native.model(CONFIG, init_params(CONFIG, seed=2), 2, 16)
    settings = AdamWSettings(learning_rate=1e-3, weight_decay=0.1, decay_all=False, grad_clip=1.0)
    losses, norms = [], []
    for t in range(1, steps + 1):
        losses.append(model.forward(x, y))
        model.zero_grad()
        model.backward()
        norms.append(model.update(settings, t))
    result = losses, norms, model.params(), model.grads(), model.optimizer_state(), model.logits()
    model.close()
    return result


def assert_bitwise_equal(a, b):
    flat_a, flat_b = (np.concatenate([np.ravel(v) for v in _leaves(x)]) for x in (a, b))
    assert flat_a.tobytes() == flat_b.tobytes()


def _leaves(x):
    if isinstance(x, (list, tuple)):
        for item in x:
            yield from _leaves(item)
    else:
        yield np.asarray(x, np.float32)


@pytest.mark.parametrize("threads", [1, 2])
def test_deterministic_at_fixed_thread_count(native, threads):
    native.set_num_threads(threads)
    try:
        assert_bitwise_equal(train_twice(native), train_twice(native))
    finally:
        native.set_num_threads(binding.default_threads())


def test_thread_count_settable(native):
    native.set_num_threads(1)
    one = train_twice(native, steps=1)
    native.set_num_threads(2)
    two = train_twice(native, steps=1)
    native.set_num_threads(binding.default_threads())
    # another thread count splits the reductions differently, so rounds differently: no more than that
    grads_one, grads_two = split_params(one[3], CONFIG), split_params(two[3], CONFIG)
    assert_within_tolerance(
        native,
        [("loss", one[0][0], two[0][0], "loss")]
        + [(f"grad/d{name}", grads_two[name], grads_one[name], f"grad:d{name}") for name in PARAM_NAMES],
    )
    with pytest.raises(ValueError, match="n = 0"):
        native.set_num_threads(0)


def test_cpu_refuses_tf32_and_bf16():
    try:
        cpu = native_backend("cpu")
    except BackendUnavailable as e:
        pytest.skip(str(e))
    assert cpu.library.lib.llmc_set_precision(1) == LLMC_ERR_UNSUPPORTED
    assert cpu.library.lib.llmc_set_precision(2) == LLMC_ERR_UNSUPPORTED
    assert cpu.library.lib.llmc_set_precision(0) == 0


# ----------------------------------------------------------------------------- kernel arguments
def test_kernels_complete(native):
    assert all(native.has_kernel(name) for name in KERNEL_NAMES)


def test_kernel_arguments_checked(native):
    k = native.kernels
    rng = np.random.default_rng(0)
    B, T, C, OC = 2, 3, 8, 5
    x = rng.standard_normal((B, T, C), dtype=np.float32)
    w = rng.standard_normal((OC, C), dtype=np.float32)
    out = np.zeros((B, T, OC), np.float32)
    with pytest.raises(TypeError, match="inp"):
        k.matmul_forward(out, x.astype(np.float64), w, None)
    with pytest.raises(ValueError, match="weight"):
        k.matmul_forward(out, x, w[:, :4], None)
    with pytest.raises(ValueError, match="out"):
        k.matmul_forward(out[:, :, :4], x, w, None)
    with pytest.raises(ValueError, match="inp"):  # a transposed view is not C-contiguous
        k.matmul_forward(out, np.ascontiguousarray(x.transpose(0, 2, 1)).transpose(0, 2, 1), w, None)
    readonly = out.copy()
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        k.matmul_forward(readonly, x, w, None)
    with pytest.raises(TypeError, match="bias"):
        k.matmul_forward(out, x, w, [0.0] * OC)
    with pytest.raises(ValueError, match="NH"):
        k.attention_forward(
            np.zeros((B, T, C), np.float32),
            np.zeros((B, 3, T, T), np.float32),
            np.zeros((B, 3, T, T), np.float32),
            np.zeros((B, T, 3 * C), np.float32),
            3,
        )
    wte, wpe = np.zeros((16, C), np.float32), np.zeros((T, C), np.float32)
    with pytest.raises(ValueError, match="inp"):
        k.encoder_forward(x, np.full((B, T), 16, np.int32), wte, wpe)
    with pytest.raises(TypeError, match="inp"):
        k.encoder_forward(x, np.zeros((B, T), np.int64), wte, wpe)
    with pytest.raises(ValueError, match="targets"):
        k.crossentropy_forward(
            np.zeros((B, T), np.float32), np.zeros((B, T, 16), np.float32), np.full((B, T), -1, np.int32)
        )
    with pytest.raises(ValueError, match="V"):
        k.softmax_forward(np.zeros((B, T, 16), np.float32), np.zeros((B, T, 16), np.float32), 17)


# ----------------------------------------------------------------------------- loading
def test_missing_library(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMC_CPU_LIB", str(tmp_path / "nowhere.so"))
    with pytest.raises(BackendUnavailable, match="not found: run make"):
        native_backend("cpu")


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler to build a partial library")
def test_partial_library_loads(tmp_path):
    """A port that exports only some of the ABI still loads; what it lacks is simply absent."""
    source = tmp_path / "partial.c"
    source.write_text(
        "void residual_forward(float* out, float* a, float* b, int n) {\n"
        "    for (int i = 0; i < n; i++) out[i] = a[i] + b[i];\n}\n"
    )
    lib = tmp_path / "libpartial.so"
    subprocess.run([os.environ.get("CC", "cc"), "-shared", "-fPIC", "-o", str(lib), str(source)], check=True)
    partial = NativeBackend(load_library(lib), "lib:partial")
    assert partial.has_kernel("residual_forward") and not partial.has_kernel("gelu_forward")
    a, b = np.arange(5, dtype=np.float32), np.ones(5, np.float32)
    out = np.zeros(5, np.float32)
    partial.kernels.residual_forward(out, a, b)
    np.testing.assert_array_equal(out, a + b)


# ----------------------------------------------------------------------------- the host C core, in every library
# native/core is compiled into the CPU library, the CUDA library and the llm.c adapter; these tests hold
# each of the three to it. The adapter is built against the stand-in llm.c (tests/standin_llmc).
CORE_LIBRARIES = ("cpu", "cuda", "adapter")
ADAPTER_SETTINGS = dict(decay_all=True, grad_clip=0.0)  # what llm.c's gpt2_update can do


@pytest.fixture(scope="module")
def adapter_path(tmp_path_factory):
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler to build the llm.c adapter")
    from tools.validate_llmc import STANDIN, build_adapter

    return build_adapter(STANDIN, tmp_path_factory.mktemp("adapter") / "libllmc_adapter.so")


@pytest.fixture(scope="module", params=CORE_LIBRARIES)
def core_library(request):
    """A NativeBackend over one of the three libraries built with the core."""
    if request.param != "adapter":
        try:
            return native_backend(request.param)
        except BackendUnavailable as e:
            pytest.skip(str(e))
    return NativeBackend(load_library(request.getfixturevalue("adapter_path")), "lib:adapter")


@pytest.fixture(scope="module", params=CORE_LIBRARIES)
def core_library_file(request):
    """One of the three libraries, loaded but not initialized: the CUDA library's error state and settings
    need no GPU."""
    if request.param == "adapter":
        return load_library(request.getfixturevalue("adapter_path"))
    path = binding.library_path(request.param)
    if not path.is_file():
        pytest.skip(f"{path} not built")
    return load_library(path)


def run_child(script, timeout=120):
    """script in a fresh interpreter (a crash or a hang fails the test, not the test run) -> its stdout."""
    code = f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n" + textwrap.dedent(script)
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the child process hung for {timeout} s:\n{code}")
    assert done.returncode == 0, f"the child process ended with {done.returncode}:\n{done.stderr}"
    return done.stdout


def open_library_in_child(library):
    """Child-process code that binds `backend` to the same library as `library`."""
    return f"""
        from backends.native import NativeBackend
        from native.binding import load_library
        backend = NativeBackend(load_library({library.library.path!r}), {library.name!r})
    """


def test_last_error_message_survives_success(core_library_file):
    """llmc.h: llmc_last_error() keeps the last failed call's message; llmc_last_error_code() is LLMC_OK
    after a success (the CUDA library used to clear the message)."""
    lib, ffi = core_library_file.lib, core_library_file.ffi
    assert lib.llmc_set_num_threads(0) == LLMC_ERR_ARGUMENT
    message = ffi.string(lib.llmc_last_error()).decode()
    assert "llmc_set_num_threads" in message and lib.llmc_last_error_code() == LLMC_ERR_ARGUMENT
    assert lib.llmc_set_precision(0) == 0 and lib.llmc_set_num_threads(1) == 0
    assert lib.llmc_last_error_code() == 0
    assert ffi.string(lib.llmc_last_error()).decode() == message
    assert lib.llmc_set_num_threads(binding.default_threads()) == 0


def test_checkpoint_fifo_does_not_block(core_library, tmp_path):
    """A FIFO with no writer: the loader refuses it at once (it used to block in fopen forever)."""
    fifo = tmp_path / "model.bin"
    os.mkfifo(fifo)
    out = run_child(
        open_library_in_child(core_library)
        + f"""
        from native.binding import LlmcError
        try:
            backend.model_from_checkpoint({str(fifo)!r}, 1, 8)
        except LlmcError as e:
            print(e.code, e.llmc_message)
    """,
        timeout=60,
    )
    assert out.startswith(f"{LLMC_ERR_FILE} ") and str(fifo) in out and "not a regular file" in out, out


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_checkpoint_nonfinite_parameter_rejected(core_library, tmp_path, dtype, value):
    """As reference.formats.read_checkpoint: every parameter finite, the tensor and index named."""
    if dtype == "bf16" and core_library.name == "lib:adapter":
        pytest.skip("llm.c's train_gpt2.c reads fp32 checkpoints only (bf16 is LLMC_ERR_UNSUPPORTED)")
    path = checkpoint(tmp_path / "m.bin", TINY, init_params(TINY), dtype)
    offsets = np.cumsum([0] + [np.prod(shape) for shape in TINY.param_shapes().values()])
    index = int(offsets[PARAM_NAMES.index("qkvw")]) + 5  # qkvw, flat index 5
    elem = 4 if dtype == "fp32" else 2
    bits = np.array([value], "<f4") if dtype == "fp32" else fp32_to_bf16_bits(np.array([value], np.float32))
    data = bytearray(path.read_bytes())
    data[1024 + elem * index : 1024 + elem * (index + 1)] = bits.astype("<f4" if dtype == "fp32" else "<u2").tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=re.escape(f"parameter {index} (qkvw, flat index 5)")):
        read_checkpoint(path)  # the reader the C loader mirrors
    with pytest.raises(LlmcError) as info:
        core_library.model_from_checkpoint(path, 1, 8)
    assert info.value.code == LLMC_ERR_FORMAT
    for word in (str(path), f"parameter {index} (qkvw, flat index 5)", "finite"):
        assert word in str(info.value), f"{word!r} missing from: {info.value}"


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("index", [8, 100, 255])
def test_checkpoint_reserved_header_field_rejected(core_library, tmp_path, dtype, index):
    path = checkpoint(tmp_path / "m.bin", TINY, init_params(TINY), dtype, header={index: -7})
    with pytest.raises(FormatError, match=re.escape(f"header[{index}]")):
        read_checkpoint(path)  # the reader the C loader mirrors
    with pytest.raises(LlmcError) as info:
        core_library.model_from_checkpoint(path, 1, 8)
    assert info.value.code == LLMC_ERR_FORMAT, str(info.value)  # a bad file before an unsupported version
    for word in (str(path), f"header[{index}] = -7", "reserved"):
        assert word in str(info.value), f"{word!r} missing from: {info.value}"


BAD_UPDATE_SETTINGS = [
    # (field, value, words of the message)
    *[
        (field, value, [field, "finite"])
        for field in ("learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip")
        for value in (np.nan, np.inf, -np.inf)
    ],
    ("eps", 0.0, ["eps = 0", "positive"]),
    ("eps", -1e-8, ["eps", "positive"]),
    ("beta1", 1.0, ["beta1 = 1", "[0, 1)"]),
    ("beta1", -0.1, ["beta1", "[0, 1)"]),
    ("beta2", 1.0, ["beta2 = 1", "[0, 1)"]),
    ("beta2", 1.5, ["beta2", "[0, 1)"]),
]


@pytest.fixture
def tiny_trained(core_library):
    """A TINY model of core_library after a forward and backward: ready for an update."""
    m = core_library.model(TINY, init_params(TINY, seed=4), 1, 8)
    rng = np.random.default_rng(0)
    x, y = tokens(rng, (1, 8), TINY.vocab_size), tokens(rng, (1, 8), TINY.vocab_size)
    m.forward(x, y)
    m.zero_grad()
    m.backward()
    yield m
    m.close()


@pytest.mark.parametrize(
    "field, value, words", BAD_UPDATE_SETTINGS, ids=[f"{f}={v}" for f, v, _ in BAD_UPDATE_SETTINGS]
)
def test_update_rejects_bad_settings(tiny_trained, field, value, words):
    """NaN / Inf settings, eps <= 0, betas outside [0, 1): LLMC_ERR_ARGUMENT, and the parameters untouched
    (they used to come back all non-finite with LLMC_OK)."""
    before = tiny_trained.params()
    with pytest.raises(LlmcArgumentError) as info:
        tiny_trained.update(AdamWSettings(**{**ADAPTER_SETTINGS, field: value}), 1)
    assert info.value.code == LLMC_ERR_ARGUMENT
    for word in ["llmc_update"] + words:
        assert word in str(info.value), f"{word!r} missing from: {info.value}"
    np.testing.assert_array_equal(tiny_trained.params(), before)
    m, v = tiny_trained.optimizer_state()
    assert not m.any() and not v.any()


def test_update_accepts_edge_settings(tiny_trained):
    """The bounds are tight: beta 0, the smallest positive eps, a negative grad_clip (no clipping) pass."""
    tiny_trained.update(
        AdamWSettings(**{**ADAPTER_SETTINGS, "beta1": 0.0, "beta2": 0.0, "eps": float(np.finfo(np.float32).tiny)}), 1
    )
    tiny_trained.update(AdamWSettings(**{**ADAPTER_SETTINGS, "grad_clip": -1.0}), 2)
    assert np.isfinite(tiny_trained.params()).all()


@pytest.mark.parametrize("n", [2**30, 100_000, 2**31 - 1])
def test_huge_thread_count_is_clamped(core_library, n):
    """llmc_set_num_threads(n) takes any n >= 1 and clamps it: a forward, backward and update then run
    (2**30 used to overflow the stack array the update summed into; 100000 crashed libgomp)."""
    settings = {**ADAPTER_SETTINGS, "grad_clip": 0.0}
    out = run_child(
        open_library_in_child(core_library)
        + f"""
        import numpy as np
        from reference.adamw import AdamWSettings
        from reference.model import GPT2Config, init_params
        config = GPT2Config.from_descriptor({TINY_DESCRIPTOR!r})
        model = backend.model(config, init_params(config), 1, 8)
        assert backend.library.lib.llmc_set_num_threads({n}) == 0
        x = np.arange(8, dtype=np.int32).reshape(1, 8) % config.vocab_size
        model.forward(x, x)
        model.zero_grad()
        model.backward()
        norm = model.update(AdamWSettings(**{settings!r}), 1)
        print("ok", np.isfinite(model.params()).all(), norm > 0)
    """
    )
    assert out.split() == ["ok", "True", "True"], out


@pytest.mark.parametrize("n", [0, -1, binding.MAX_THREADS + 1, 100_000, 2.0, "2", True])
def test_binding_refuses_absurd_thread_counts(native, n):
    with pytest.raises(ValueError, match=f"n = {re.escape(repr(n))}: a thread count"):
        native.set_num_threads(n)


@pytest.mark.parametrize("value", ["100000", "0", "-2", "two", "1.5"])
def test_llmc_threads_variable_checked(monkeypatch, value):
    if not binding.library_path("cpu").is_file():
        pytest.skip("build/libllmc_cpu.so not found: run make")
    monkeypatch.setenv("LLMC_THREADS", value)
    with pytest.raises(ValueError, match=f"LLMC_THREADS = .*{re.escape(value)}"):
        native_backend("cpu")
