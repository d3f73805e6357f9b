"""libllmc's robustness contract, through the cffi binding, for every native backend available here.

Bad input never crashes the process: malformed checkpoints, sizes beyond what a model was built
for, out-of-range tokens and calls out of order come back as LlmcError (with the library's code and
a message naming the file / field / position); NULL pointers and wrong arrays are caught by the
binding before C sees them. Also: a fixed thread count repeats a training step bit for bit.
"""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conformance.backends import KERNEL_NAMES, BackendUnavailable
from conformance.badfiles import append, patch_header, truncate
from conformance.checks import compare
from native import binding
from native.binding import LlmcArgumentError, LlmcError, load_library, native_backend
from reference.adamw import TEST_GPT2_SETTINGS, AdamWSettings
from reference.formats import bf16_bits_to_fp32, fp32_to_bf16_bits, write_checkpoint
from reference.model import GPT2, PARAM_NAMES, GPT2Config, init_params, split_params

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ("cpu", "cuda", "cuda-tf32", "cuda-bf16")
CONFIG = GPT2Config.from_descriptor("L2-NH4-C64-V256-T64")
TINY = GPT2Config.from_descriptor("L1-NH2-C8-V10-T8")   # Vp 128: a 5 KB checkpoint
# llmc.h's error codes
LLMC_ERR_ARGUMENT, LLMC_ERR_FILE, LLMC_ERR_FORMAT, LLMC_ERR_TOKEN, LLMC_ERR_STATE, LLMC_ERR_UNSUPPORTED = 1, 2, 3, 5, 6, 8


def pytest_generate_tests(metafunc):
    """Every native backend, or those of them named with --backend."""
    if "native" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("backend") or NATIVE
        metafunc.parametrize("native", [n for n in NATIVE if n in chosen], indirect=True, scope="module")


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
    np.testing.assert_array_equal(model.params(), bf16_bits_to_fp32(fp32_to_bf16_bits(params)))   # widened exactly
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
        from native.binding import native_backend, LlmcError
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
    with pytest.raises(LlmcArgumentError):   # max_T beyond the config's max_seq_len
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
    assert_within_tolerance(native, [(f"accumulated/d{name}", accumulated[name], summed[name], f"grad:d{name}")
                                     for name in PARAM_NAMES])
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
        model._backend.model(CONFIG, np.zeros(10, np.float32), 1, 8)
    model.close()
    with pytest.raises(ValueError, match="closed"):
        model.forward(x)
    model.close()   # closing twice is harmless


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
    assert_within_tolerance(native, [("loss", loss, expected, "loss"), ("logits", model.logits(), ref.logits, "logits")]
                            + [(f"grad/d{name}", got[name], want[name], f"grad:d{name}") for name in PARAM_NAMES])


def assert_within_tolerance(native, comparisons):
    """comparisons: (check, got, want, quantity); each judged by the table's entry at the backend's precision."""
    results = [compare(check, native.name, got, want, (quantity, native.precision))
               for check, got, want, quantity in comparisons]
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
    flat_a, flat_b = np.concatenate([np.ravel(v) for v in _leaves(a)]), np.concatenate([np.ravel(v) for v in _leaves(b)])
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
    assert_within_tolerance(native, [("loss", one[0][0], two[0][0], "loss")]
                            + [(f"grad/d{name}", grads_two[name], grads_one[name], f"grad:d{name}")
                               for name in PARAM_NAMES])
    with pytest.raises(LlmcArgumentError):
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
    with pytest.raises(ValueError, match="inp"):   # a transposed view is not C-contiguous
        k.matmul_forward(out, np.ascontiguousarray(x.transpose(0, 2, 1)).transpose(0, 2, 1), w, None)
    readonly = out.copy()
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        k.matmul_forward(readonly, x, w, None)
    with pytest.raises(TypeError, match="bias"):
        k.matmul_forward(out, x, w, [0.0] * OC)
    with pytest.raises(ValueError, match="NH"):
        k.attention_forward(np.zeros((B, T, C), np.float32), np.zeros((B, 3, T, T), np.float32),
                            np.zeros((B, 3, T, T), np.float32), np.zeros((B, T, 3 * C), np.float32), 3)
    wte, wpe = np.zeros((16, C), np.float32), np.zeros((T, C), np.float32)
    with pytest.raises(ValueError, match="inp"):
        k.encoder_forward(x, np.full((B, T), 16, np.int32), wte, wpe)
    with pytest.raises(TypeError, match="inp"):
        k.encoder_forward(x, np.zeros((B, T), np.int64), wte, wpe)
    with pytest.raises(ValueError, match="targets"):
        k.crossentropy_forward(np.zeros((B, T), np.float32), np.zeros((B, T, 16), np.float32),
                               np.full((B, T), -1, np.int32))
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
    source.write_text("void residual_forward(float* out, float* a, float* b, int n) {\n"
                      "    for (int i = 0; i < n; i++) out[i] = a[i] + b[i];\n}\n")
    lib = tmp_path / "libpartial.so"
    subprocess.run([os.environ.get("CC", "cc"), "-shared", "-fPIC", "-o", str(lib), str(source)], check=True)
    partial = binding.NativeBackend(load_library(lib), "lib:partial")
    assert partial.has_kernel("residual_forward") and not partial.has_kernel("gelu_forward")
    a, b = np.arange(5, dtype=np.float32), np.ones(5, np.float32)
    out = np.zeros(5, np.float32)
    partial.kernels.residual_forward(out, a, b)
    np.testing.assert_array_equal(out, a + b)
