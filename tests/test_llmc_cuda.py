"""llm.c's CUDA programs behind llmc.h: native/llmc_adapter_cuda.cu (train_gpt2.cu, bf16) and
native/llmc_adapter_cuda_fp32.cu (train_gpt2_fp32.cu), built by tools/validate_llmc.py --cuda.

- Against the CUDA stand-in (tests/standin_llmc/train_gpt2.cu, train_gpt2_fp32.cu: llm.c's names and
  signatures, the zero model inside), wherever nvcc and cuBLAS are: both adapters compile and link, export
  every llmc_* function of llmc.h and none of its kernels (llm.c's CUDA launchers take device pointers),
  and check every argument before the device is touched, so bad input is an error code with or without a
  GPU; without one, llmc_init says so.
- Against a real llm.c checkout (LLMC_SRC, default .dev-llmc/llm.c) on a GPU: llm.c's exits come back as
  error codes, and the adapters keep llmc.h's semantics where llm.c's own differ (logits that outlive the
  loss and the backward, one backward per forward, a new B and T, gradient accumulation in fp32). The
  numbers themselves are the suite's to judge: python -m tools.validate_llmc LLMC_SRC --cuda.
Skipped, saying why: without nvcc or cuBLAS (building), without llm.c or a GPU (running).
"""

import json
import os
from pathlib import Path
import re
import subprocess
import sys

import pytest

from conformance.fixture import FIXTURES_DIR
from native.binding import ERROR_CODES, Library, read_cdef
from reference.layers import KERNEL_NAMES
from tools.validate_llmc import CUDA_VARIANTS, REPO_ROOT, STANDIN, BuildError, build_cuda_adapter

LLMC_SRC = Path(os.environ.get("LLMC_SRC", REPO_ROOT / ".dev-llmc" / "llm.c"))
# every llmc_* function llmc.h declares, but data parallelism (llm.c's multi-GPU path is MPI/NCCL, not built
# here) and the library's own checkpoint writer (llm.c writes its checkpoints from its training program)
API = sorted(
    name
    for name in set(re.findall(r"\b(llmc_\w+)\s*\(", read_cdef()))
    if not name.startswith(("llmc_dist_", "llmc_set_device", "llmc_device_count", "llmc_save_checkpoint"))
)
CODE = {name.removeprefix("LLMC_ERR_").removeprefix("LLMC_").lower(): code for name, code in ERROR_CODES.items()}
RESULT = "RESULT "  # the child's line with its JSON (llm.c's own printf output may come after it)
TINY_BYTES = FIXTURES_DIR / "tiny-bytes"


def build_both(llmc_dir, out):
    """variant -> library path, both adapters built against llmc_dir; skips, saying why, without nvcc or cuBLAS."""
    libs = {}
    for variant in CUDA_VARIANTS:
        try:
            libs[variant] = build_cuda_adapter(llmc_dir, variant, out / f"libllmc_llmc_cuda_{variant}.so")
        except BuildError as e:
            if "no nvcc" in str(e) or "no cuBLAS" in str(e):
                pytest.skip(f"the CUDA adapter cannot be built here: {e}")
            raise
    return libs


@pytest.fixture(scope="module")
def standin_libs(tmp_path_factory):
    return build_both(STANDIN, tmp_path_factory.mktemp("standin_cuda"))


@pytest.fixture(scope="module")
def llmc_libs(tmp_path_factory):
    if not (LLMC_SRC / "train_gpt2.cu").is_file():
        pytest.skip(f"no llm.c checkout at {LLMC_SRC} (set LLMC_SRC to one)")
    libs = build_both(LLMC_SRC, tmp_path_factory.mktemp("llmc_cuda"))
    library = Library(libs["bf16"])
    if library.lib.llmc_init() != ERROR_CODES["LLMC_OK"]:
        pytest.skip(f"llm.c's CUDA code needs a GPU: {library.last_error()}")
    return libs


def run_script(code, env=None):
    """Runs code in a child process (an abort there fails the test instead of ending pytest) and returns
    the JSON object it prints after RESULT."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ, **(env or {})}
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith(RESULT))
    return json.loads(line.removeprefix(RESULT))


# ----------------------------------------------------------------------------- built against the stand-in
def test_adapters_export_the_api_and_no_kernel(standin_libs):
    for variant, path in standin_libs.items():
        library = Library(path)
        assert [name for name in API if not library.has(name)] == [], f"{variant}: llmc_* functions missing"
        assert [name for name in KERNEL_NAMES if library.has(name)] == [], f"{variant}: exports kernels"
        name = library.ffi.string(library.lib.llmc_backend_name()).decode()
        info = library.ffi.string(library.lib.llmc_build_info()).decode()
        assert name == f"llm.c-cuda-{variant}"
        assert f"llm.c source {CUDA_VARIANTS[variant][1]}@sha256:" in info, info


CHECKS_BEFORE_THE_DEVICE = """
import json
import numpy as np
from native.binding import Library
from reference.formats import write_checkpoint
from reference.model import GPT2Config, init_params
from tests.badfiles import patch_header, truncate
lib = Library({path!r})
ffi = lib.ffi
def code(rc):
    return [rc, lib.last_error()]
def config(NH, C, maxT=64):
    return ffi.new("llmc_config*", dict(max_seq_len=maxT, vocab_size=200, padded_vocab_size=256, num_layers=1,
                                        num_heads=NH, channels=C))
out = ffi.new("llmc_model**")
params = np.zeros(1, np.float32)   # never read: each call below is refused first
got = {{}}
for name, (NH, C), B, T in (("heads", (3, 128), 1, 64), ("max_T", (2, 128), 1, 65), ("shape", ({shape}), 1, 16)):
    got[name] = code(lib.lib.llmc_model_from_params(config(NH, C), ffi.from_buffer("float[]", params), B, T, out))
good = GPT2Config.from_descriptor("L1-NH2-C128-V200-T16")
for dtype in ("fp32", "bf16"):
    path = {tmp!r} + f"/model_{{dtype}}.bin"
    write_checkpoint(path, good, init_params(good), dtype)
    truncate(path, 4)
    got[f"short_{{dtype}}"] = code(lib.lib.llmc_model_from_checkpoint(path.encode(), 1, 16, out))
write_checkpoint({tmp!r} + "/magic.bin", good, init_params(good))
patch_header({tmp!r} + "/magic.bin", 0, 12345)
got["magic"] = code(lib.lib.llmc_model_from_checkpoint(({tmp!r} + "/magic.bin").encode(), 1, 16, out))
got["missing"] = code(lib.lib.llmc_model_from_checkpoint(({tmp!r} + "/none.bin").encode(), 1, 16, out))
got["bf16_checkpoint"] = code(lib.lib.llmc_model_from_checkpoint({bf16_checkpoint!r}.encode(), 4, 32, out))
got["threads"] = code(lib.lib.llmc_set_num_threads(0))
got["modes"] = [lib.lib.llmc_set_precision(mode) for mode in (0, 1, 2, 7)]
got["init"] = code(lib.lib.llmc_init())
print("RESULT " + json.dumps(got))
"""


@pytest.mark.parametrize("variant", CUDA_VARIANTS)
def test_arguments_are_checked_before_the_device(standin_libs, variant, tmp_path):
    """Each refusal comes with the code llmc.h gives it, GPU or not: none of these reaches llm.c."""
    # a config llm.c's kernels cannot run (num_heads, channels): channels not a multiple of 8 (bf16
    # vectors), of 128 (fp32 tiles)
    shape = {"bf16": "2, 12", "fp32": "2, 64"}[variant]
    got = run_script(
        CHECKS_BEFORE_THE_DEVICE.format(
            path=str(standin_libs[variant]),
            shape=shape,
            tmp=str(tmp_path),
            bf16_checkpoint=str(TINY_BYTES / "gpt2_124M_bf16.bin"),
        )
    )
    expected = {
        "heads": "argument",
        "max_T": "argument",
        "shape": "unsupported",
        "short_fp32": "format",
        "short_bf16": "format",
        "magic": "format",
        "missing": "file",
        "threads": "argument",
    }
    assert {key: got[key][0] for key in expected} == {key: CODE[c] for key, c in expected.items()}, got
    assert "num_heads" in got["heads"][1] and "max_seq_len" in got["max_T"][1], got
    assert "channels" in got["shape"][1] and "magic" in got["magic"][1], got
    ok, unsupported, argument = CODE["ok"], CODE["unsupported"], CODE["argument"]
    if variant == "bf16":  # train_gpt2.cu is bf16 only; it reads v5 checkpoints (and the adapter reads v3)
        assert got["modes"] == [unsupported, unsupported, ok, argument], got
    else:  # train_gpt2_fp32.cu: fp32 or TF32, v3 checkpoints only
        assert got["modes"] == [ok, ok, unsupported, argument], got
        assert got["bf16_checkpoint"][0] == unsupported and "version 5" in got["bf16_checkpoint"][1], got
    if got["init"][0] != ok:  # a machine without a GPU: the reason, not an abort
        assert got["init"][0] == CODE["device"] and "no usable CUDA device" in got["init"][1], got


# ----------------------------------------------------------------------------- llm.c itself, on a GPU
LLMC_BF16 = """
import json
import re
import numpy as np
from backends.ports import port_backend
from conformance.fixture import load_fixture
from native.binding import LlmcError
from reference.adamw import AdamWSettings
from reference.model import GPT2Config, init_params
b = port_backend("lib:{path}")
def code(fn):
    try:
        fn()
    except LlmcError as e:
        return e.code
    return 0
f = load_fixture({fixture!r})   # Vp 256: llm.c's partial sums can overrun its scratch buffer (B*T*Vp bf16)
try:
    b.model(f.config, f.params, f.B, f.T)
    got = {{"tiny_bytes": [0, ""]}}
except LlmcError as e:
    got = {{"tiny_bytes": [e.code, str(e)]}}
got["SMs"] = int(re.search(r"(\\d+) SMs", b.description)[1])
config = GPT2Config.from_descriptor("L1-NH2-C64-V1000-T64")   # Vp 1024: room for them at B*T = 128
V, Vp = config.vocab_size, config.padded_vocab_size
rng = np.random.default_rng(0)
x, y = rng.integers(0, V, (4, 32)).astype(np.int32), rng.integers(0, V, (4, 32)).astype(np.int32)
params = init_params(config)
m = b.model(config, params, 4, 32)
got.update({{"backward_first": code(m.backward), "token": code(lambda: m.forward(np.full((1, 16), V, np.int32))),
            "too_long": code(lambda: m.forward(np.zeros((1, 36), np.int32))),
            "t_not_4": code(lambda: m.forward(np.zeros((1, 6), np.int32)))}})
m.forward(x, y)
logits = m.logits()
m.zero_grad()
m.backward()
got["logits_kept"] = bool(np.array_equal(m.logits(), logits))
got["second_backward"] = code(m.backward)
m.forward(x, y)
got["accumulate"] = code(m.backward)
m.zero_grad()
m.backward()
got["decay_all"] = code(lambda: m.update(AdamWSettings(weight_decay=0.01, decay_all=True), 1))
norm = m.update(AdamWSettings(weight_decay=0.01, decay_all=False, grad_clip=1.0), 1)
got["norm"] = bool(np.isfinite(norm) and norm > 0)
got["params_moved"] = bool(not np.array_equal(m.params(), params))
m.forward(x[:1, :16], y[:1, :16])
got["reshape"] = list(m.logits().shape) == [1, 16, Vp]
print("RESULT " + json.dumps(got))
"""


def test_llmc_bf16_keeps_llmc_h_semantics(llmc_libs):
    got = run_script(LLMC_BF16.format(path=llmc_libs["bf16"], fixture=str(TINY_BYTES)), {"LLMC_PORT_PRECISION": "bf16"})
    # tiny-bytes (C 64, B*T 128): layernorm_backward's 32 + 4*C floats per SM overrun the 16384 floats of
    # llm.c's scratch buffer from 64 SMs on (H100, H200: 132)
    tiny_bytes, SMs = got.pop("tiny_bytes"), got.pop("SMs")
    if 32 + 4 * 64 * SMs > 4 * 32 * 256 // 2:
        assert tiny_bytes[0] == CODE["unsupported"] and "scratch buffer acts.output" in tiny_bytes[1], tiny_bytes
    else:
        assert tiny_bytes[0] == CODE["ok"], tiny_bytes
    assert got == {
        "backward_first": CODE["state"],
        "token": CODE["token"],
        "too_long": CODE["argument"],
        "t_not_4": CODE["unsupported"],
        "logits_kept": True,
        "second_backward": CODE["state"],
        "accumulate": CODE["unsupported"],
        "decay_all": CODE["unsupported"],
        "norm": True,
        "params_moved": True,
        "reshape": True,
    }


LLMC_FP32 = """
import json
import numpy as np
from backends.ports import port_backend
from native.binding import LlmcError
from reference.adamw import TEST_GPT2_SETTINGS, AdamWSettings
from reference.model import GPT2Config, init_params
b = port_backend("lib:{path}")
config = GPT2Config.from_descriptor("L1-NH2-C128-V200-T128")   # the smallest llm.c's fp32 tiles take
rng = np.random.default_rng(0)
x, y = rng.integers(0, 200, (2, 64)).astype(np.int32), rng.integers(0, 200, (2, 64)).astype(np.int32)
def code(fn):
    try:
        fn()
    except LlmcError as e:
        return e.code
    return 0
m = b.model(config, init_params(config), 2, 128)
got = {{"rows_not_128": code(lambda: m.forward(x[:1], y[:1]))}}
m.forward(x)
logits = m.logits()
m.forward(x, y)
got["logits_kept"] = bool(np.array_equal(m.logits(), logits))
m.zero_grad()
m.backward()
once = m.grads().astype(np.float64)
got["second_backward"] = code(m.backward)
m.forward(x, y)
m.backward()
twice = m.grads().astype(np.float64)
# the same gradient added twice: float32 roundings (~6e-8 each) and encoder_backward's atomicAdd order apart
got["accumulated"] = float(np.linalg.norm(twice - 2 * once) / np.linalg.norm(2 * once))
got["decay_2d"] = code(lambda: m.update(AdamWSettings(weight_decay=0.01, decay_all=False), 1))
got["clip"] = code(lambda: m.update(AdamWSettings(grad_clip=1.0), 1))
norm = m.update(AdamWSettings(**TEST_GPT2_SETTINGS), 1)
got["norm"] = bool(abs(norm - np.linalg.norm(twice)) <= 1e-5 * np.linalg.norm(twice))
m.forward(np.concatenate([x[0], x[1]])[None], np.concatenate([y[0], y[1]])[None])
got["reshape"] = list(m.logits().shape) == [1, 128, config.padded_vocab_size]
print("RESULT " + json.dumps(got))
"""


def test_llmc_fp32_keeps_llmc_h_semantics(llmc_libs):
    got = run_script(LLMC_FP32.format(path=llmc_libs["fp32"]), {"LLMC_PORT_PRECISION": "tf32"})
    accumulated = got.pop("accumulated")
    assert accumulated <= 1e-5, f"two backwards accumulate to {accumulated:.2e} (relative norm) off twice one"
    assert got == {
        "rows_not_128": CODE["unsupported"],
        "logits_kept": True,
        "second_backward": CODE["state"],
        "decay_2d": CODE["unsupported"],
        "clip": CODE["unsupported"],
        "norm": True,
        "reshape": True,
    }
