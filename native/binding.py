"""cffi (ABI mode) binding of libllmc: any shared library with the C ABI of native/llmc.h, from Python.

    load_library(path) -> Library            dlopen + the cdef read from llmc.h; symbols bind lazily,
                                              so a library that lacks some kernel still loads
    library.model_from_params(...), library.model_from_checkpoint(...) -> NativeModel
    NativeKernels(library, mode)             llm.c's layer kernels on numpy arrays
    library_path("cpu" | "cuda")             our own libraries: build/libllmc_{cpu,cuda}.so, or the
                                              paths in LLMC_CPU_LIB / LLMC_CUDA_LIB

Arrays cross the boundary without copies (ffi.from_buffer). Everything C would trust (dtype,
C-contiguity, writability of outputs, shapes that agree, token ids in range) is checked here first,
so a wrong call raises TypeError / ValueError naming the argument instead of crashing the process.
A model-API error code becomes LlmcError carrying llmc_last_error(); a library that cannot be loaded
or run here raises LibraryUnavailable. The binding knows nothing of the suite: backends/native.py puts
it behind the backend interface.
"""

from __future__ import annotations

from dataclasses import asdict
import os
from pathlib import Path
import re

from cffi import FFI
import numpy as np

from reference.adamw import AdamWSettings
from reference.layers import KERNEL_NAMES
from reference.model import GPT2Config

# libgomp reads its wait policy once, when it loads (with our library). Its default spins about a
# millisecond at every barrier; on a small machine shared with other work, a thread spinning while its
# partner is descheduled wastes the core the partner needs (measured on the 2-core dev box under
# load: d12 step 6.2 s with the default, 2.4 s with this, 2.2 s single-threaded). A short spin keeps
# the quiet-machine speed. Whoever sets OMP_WAIT_POLICY or GOMP_SPINCOUNT themselves keeps theirs.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"

ROOT = Path(__file__).resolve().parent.parent
HEADER = Path(__file__).resolve().with_name("llmc.h")
CORE_HEADER = Path(__file__).resolve().with_name("core") / "core.h"

LIBRARY_ENV = {"cpu": "LLMC_CPU_LIB", "cuda": "LLMC_CUDA_LIB"}


def read_cdef(header: str | os.PathLike = HEADER) -> str:
    """The declarations between the LLMC_CDEF markers of llmc.h, comments stripped."""
    text = Path(header).read_text()
    begin, end = "/* LLMC_CDEF_BEGIN */", "/* LLMC_CDEF_END */"
    if begin not in text or end not in text:
        raise ValueError(f"{header}: the {begin} / {end} markers are missing")
    body = text.split(begin, 1)[1].split(end, 1)[0]
    return re.sub(r"/\*.*?\*/", "", body, flags=re.S)


def _header_constants():
    """{name: value} of llmc.h's LLMC_* constants (the error codes, the id size) as cffi parses them: constants
    need no library loaded."""
    ffi = FFI()
    ffi.cdef(read_cdef())
    constants = ffi.dlopen(None)
    return {name: getattr(constants, name) for name in dir(constants) if name.startswith("LLMC_")}


HEADER_CONSTANTS = _header_constants()
ERROR_CODES = {name: value for name, value in HEADER_CONSTANTS.items() if name == "LLMC_OK" or "_ERR_" in name}
DIST_ID_BYTES = HEADER_CONSTANTS["LLMC_DIST_ID_BYTES"]
ERROR_NAMES = {code: name for name, code in ERROR_CODES.items()}
LLMC_OK = ERROR_CODES["LLMC_OK"]


def _define(header, name):
    """The integer value of `#define name VALUE` in a C header."""
    match = re.search(rf"^#define {name} (\d+)", Path(header).read_text(), flags=re.M)
    if match is None:
        raise ValueError(f"{header}: no #define {name}")
    return int(match.group(1))


# The most threads a thread count may ask for: what llmc_set_num_threads clamps to on the largest machine.
# Larger is taken for a mistake (LLMC_THREADS=100000 once crashed libgomp) and refused here.
MAX_THREADS = _define(CORE_HEADER, "LLMC_MAX_THREADS")


def check_threads(n: int, name: str = "n") -> int:
    """n as an int, if it is a thread count in [1, MAX_THREADS]; ValueError naming `name` otherwise."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_THREADS:
        raise ValueError(f"{name} = {n!r}: a thread count must be an integer in [1, {MAX_THREADS}]")
    return int(n)


class LibraryUnavailable(Exception):
    """The library cannot be loaded, or cannot run here (llmc_init failed); the message says why."""


class LlmcError(RuntimeError):
    """A libllmc call returned an error code; .code is it, the message is llmc_last_error()."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{ERROR_NAMES.get(code, 'LLMC_ERR_?')} ({code}): {message}")
        self.code = code
        self.llmc_message = message


class LlmcArgumentError(LlmcError, ValueError):
    """LLMC_ERR_ARGUMENT or LLMC_ERR_TOKEN: the caller's input was wrong."""


class Library:
    """One dlopen'ed library with libllmc's ABI. has(name) says whether it exports a function."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self.ffi = FFI()
        self.ffi.cdef(read_cdef())
        try:
            self.lib = self.ffi.dlopen(self.path)
        except OSError as e:
            raise LibraryUnavailable(f"cannot load {self.path}: {e}") from e

    def has(self, name: str) -> bool:
        try:
            getattr(self.lib, name)
        except AttributeError:
            return False
        return True

    def check(self, rc: int) -> None:
        """Raises LlmcError for a nonzero return code."""
        if rc != LLMC_OK:
            message = self.ffi.string(self.lib.llmc_last_error()).decode(errors="replace")
            caller_wrong = rc in (ERROR_CODES["LLMC_ERR_ARGUMENT"], ERROR_CODES["LLMC_ERR_TOKEN"])
            cls = LlmcArgumentError if caller_wrong else LlmcError
            raise cls(rc, message)

    def last_error(self) -> str:
        return self.ffi.string(self.lib.llmc_last_error()).decode(errors="replace")

    def init(self) -> None:
        """llmc_init where exported; LibraryUnavailable with the library's reason (CUDA: no usable GPU)."""
        if self.has("llmc_init") and self.lib.llmc_init() != LLMC_OK:
            raise LibraryUnavailable(self.last_error())

    def activate(self, mode: int) -> None:
        """Sets the precision mode (llmc_set_precision) where exported: one loaded library serves several
        modes (cuda and cuda-tf32), so every call sets its own first. A successful call also resets
        llmc_last_error_code() to LLMC_OK."""
        if self.has("llmc_set_precision"):
            self.check(self.lib.llmc_set_precision(mode))

    def check_kernel(self, name: str) -> None:
        """Kernels return void; a library that can fail inside one (CUDA) says so through the error code."""
        if self.has("llmc_last_error_code"):
            code = self.lib.llmc_last_error_code()
            if code != LLMC_OK:
                self.check(code)

    def set_num_threads(self, n: int) -> None:
        self.check(self.lib.llmc_set_num_threads(check_threads(n)))

    def device_count(self) -> int:
        count = self.ffi.new("int*")
        self.check(self.lib.llmc_device_count(count))
        return int(count[0])

    def set_device(self, device: int) -> None:
        """The GPU of this process (a data-parallel rank's local rank); before init and the first model."""
        self.check(self.lib.llmc_set_device(int(device)))

    def dist_unique_id(self) -> bytes:
        """The id every rank joins with (rank 0 makes it, the launcher shares it)."""
        out = self.ffi.new("unsigned char[]", DIST_ID_BYTES)
        self.check(self.lib.llmc_dist_unique_id(out))
        return bytes(self.ffi.buffer(out))

    def build_info(self) -> str:
        return self.ffi.string(self.lib.llmc_build_info()).decode() if self.has("llmc_build_info") else "no build info"

    def model_from_params(
        self, config: GPT2Config, params: np.ndarray, max_B: int, max_T: int, mode: int = 0, model_class=None
    ) -> NativeModel:
        """A NativeModel (or model_class(library, handle, mode)) of config with the flat float32 params
        (num_parameters values, llm.c's order)."""
        params = np.ascontiguousarray(params, np.float32)
        if params.shape != (config.num_parameters,):
            raise ValueError(f"params: shape {params.shape}, expected ({config.num_parameters},) for {config}")
        cfg = self.ffi.new("llmc_config*", asdict(config))  # GPT2Config's fields are llmc_config's, by name
        out = self.ffi.new("llmc_model**")
        self.activate(mode)
        self.check(
            self.lib.llmc_model_from_params(cfg, self.ffi.from_buffer("float[]", params), int(max_B), int(max_T), out)
        )
        return (model_class or NativeModel)(self, out[0], mode)

    def model_from_checkpoint(
        self, path: str | os.PathLike, max_B: int, max_T: int, mode: int = 0, model_class=None
    ) -> NativeModel:
        """A NativeModel (or model_class(library, handle, mode)) read by the library itself from an llm.c
        checkpoint file."""
        out = self.ffi.new("llmc_model**")
        self.activate(mode)
        self.check(self.lib.llmc_model_from_checkpoint(os.fsencode(path), int(max_B), int(max_T), out))
        return (model_class or NativeModel)(self, out[0], mode)


_libraries = {}


def load_library(path: str | os.PathLike) -> Library:
    """A Library for path; each file is opened once per process."""
    key = os.path.realpath(path)
    if key not in _libraries:
        _libraries[key] = Library(path)
    return _libraries[key]


# ----------------------------------------------------------------------------- argument checks
def _array(ffi, name, a, dtype, shape=None, ndim=None, output=False):
    """A C pointer into a, after checking it is what C will assume."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name}: dtype {a.dtype}, expected {np.dtype(dtype)}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: {a.ndim} dimensions {a.shape}, expected {ndim}")
    if shape is not None and a.shape != tuple(shape):
        raise ValueError(f"{name}: shape {a.shape}, expected {tuple(shape)}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous")
    if output and not a.flags.writeable:
        raise ValueError(f"{name}: is an output and must be writable")
    if a.size == 0:
        raise ValueError(f"{name}: is empty {a.shape}; every dimension must be positive")
    if a.size >= 2**31:
        raise ValueError(f"{name}: {a.size} elements, the kernels count in int32")
    return ffi.from_buffer("float[]" if dtype == np.float32 else "int[]", a)


def _shape(name, a, ndim):
    """a's shape, after checking it is an ndim-dimensional numpy array (sizes are read off it)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(a).__name__}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: {a.ndim} dimensions {a.shape}, expected {ndim}")
    return a.shape


def _tokens(ffi, name, a, shape, limit):
    ptr = _array(ffi, name, a, np.int32, shape)
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi >= limit:
        raise ValueError(f"{name}: token ids must lie in [0, {limit}), got [{lo}, {hi}]")
    return ptr


def _heads(NH, C):
    if not isinstance(NH, (int, np.integer)) or NH <= 0 or C % NH:
        raise ValueError(f"NH: {NH!r} must be a positive integer dividing C = {C}")
    return int(NH)


class NativeKernels:
    """llm.c's layer kernels on numpy arrays, in llm.c's argument order, sizes read off the shapes
    (as backends/reference.py's ReferenceKernels). Kernels the library lacks are absent attributes.
    mode: the precision mode each call runs in (Library.activate)."""

    def __init__(self, library, mode=0):
        self._library, self._mode = library, mode
        self._ffi, self._lib = library.ffi, library.lib
        for name in KERNEL_NAMES:
            if library.has(name):
                setattr(self, name, getattr(self, "_" + name))

    def _f(self, name, a, shape=None, ndim=None, output=False):
        return _array(self._ffi, name, a, np.float32, shape, ndim, output)

    def _run(self, name, *args):
        self._library.activate(self._mode)
        getattr(self._lib, name)(*args)
        self._library.check_kernel(name)

    def _encoder_forward(self, out, inp, wte, wpe):
        B, T, C = _shape("out", out, 3)
        o = self._f("out", out, ndim=3, output=True)
        Vp, maxT = _shape("wte", wte, 2)[0], _shape("wpe", wpe, 2)[0]
        if T > maxT:
            raise ValueError(f"out: T = {T} exceeds wpe's {maxT} rows")
        args = (
            o,
            _tokens(self._ffi, "inp", inp, (B, T), Vp),
            self._f("wte", wte, (Vp, C)),
            self._f("wpe", wpe, (maxT, C)),
        )
        self._run("encoder_forward", *args, B, T, C)

    def _encoder_backward(self, dwte, dwpe, dout, inp):
        B, T, C = _shape("dout", dout, 3)
        d = self._f("dout", dout, ndim=3)
        Vp, maxT = _shape("dwte", dwte, 2)[0], _shape("dwpe", dwpe, 2)[0]
        if T > maxT:
            raise ValueError(f"dout: T = {T} exceeds dwpe's {maxT} rows")
        args = (
            self._f("dwte", dwte, (Vp, C), output=True),
            self._f("dwpe", dwpe, (maxT, C), output=True),
            d,
            _tokens(self._ffi, "inp", inp, (B, T), Vp),
        )
        self._run("encoder_backward", *args, B, T, C)

    def _layernorm_forward(self, out, mean, rstd, inp, weight, bias):
        B, T, C = _shape("inp", inp, 3)
        args = (
            self._f("out", out, (B, T, C), output=True),
            self._f("mean", mean, (B, T), output=True),
            self._f("rstd", rstd, (B, T), output=True),
            self._f("inp", inp, ndim=3),
            self._f("weight", weight, (C,)),
            self._f("bias", bias, (C,)),
        )
        self._run("layernorm_forward", *args, B, T, C)

    def _layernorm_backward(self, dinp, dweight, dbias, dout, inp, weight, mean, rstd):
        B, T, C = _shape("inp", inp, 3)
        args = (
            self._f("dinp", dinp, (B, T, C), output=True),
            self._f("dweight", dweight, (C,), output=True),
            self._f("dbias", dbias, (C,), output=True),
            self._f("dout", dout, (B, T, C)),
            self._f("inp", inp, ndim=3),
            self._f("weight", weight, (C,)),
            self._f("mean", mean, (B, T)),
            self._f("rstd", rstd, (B, T)),
        )
        self._run("layernorm_backward", *args, B, T, C)

    def _matmul_forward(self, out, inp, weight, bias):
        B, T, C = _shape("inp", inp, 3)
        OC = _shape("weight", weight, 2)[0]
        args = (
            self._f("out", out, (B, T, OC), output=True),
            self._f("inp", inp, ndim=3),
            self._f("weight", weight, (OC, C)),
            self._ffi.NULL if bias is None else self._f("bias", bias, (OC,)),
        )
        self._run("matmul_forward", *args, B, T, C, OC)

    def _matmul_backward(self, dinp, dweight, dbias, dout, inp, weight):
        B, T, C = _shape("inp", inp, 3)
        OC = _shape("weight", weight, 2)[0]
        args = (
            self._f("dinp", dinp, (B, T, C), output=True),
            self._f("dweight", dweight, (OC, C), output=True),
            self._ffi.NULL if dbias is None else self._f("dbias", dbias, (OC,), output=True),
            self._f("dout", dout, (B, T, OC)),
            self._f("inp", inp, ndim=3),
            self._f("weight", weight, (OC, C)),
        )
        self._run("matmul_backward", *args, B, T, C, OC)

    def _attention_forward(self, out, preatt, att, inp, NH):
        B, T, C3 = _shape("inp", inp, 3)
        if C3 % 3:
            raise ValueError(f"inp: last dimension {C3} is not 3*C")
        C = C3 // 3
        NH = _heads(NH, C)
        args = (
            self._f("out", out, (B, T, C), output=True),
            self._f("preatt", preatt, (B, NH, T, T), output=True),
            self._f("att", att, (B, NH, T, T), output=True),
            self._f("inp", inp, ndim=3),
        )
        self._run("attention_forward", *args, B, T, C, NH)

    def _attention_backward(self, dinp, dpreatt, datt, dout, inp, att, NH):
        B, T, C3 = _shape("inp", inp, 3)
        if C3 % 3:
            raise ValueError(f"inp: last dimension {C3} is not 3*C")
        C = C3 // 3
        NH = _heads(NH, C)
        args = (
            self._f("dinp", dinp, (B, T, C3), output=True),
            self._f("dpreatt", dpreatt, (B, NH, T, T), output=True),
            self._f("datt", datt, (B, NH, T, T), output=True),
            self._f("dout", dout, (B, T, C)),
            self._f("inp", inp, ndim=3),
            self._f("att", att, (B, NH, T, T)),
        )
        self._run("attention_backward", *args, B, T, C, NH)

    def _gelu_forward(self, out, inp):
        i = self._f("inp", inp)
        args = (self._f("out", out, inp.shape, output=True), i)
        self._run("gelu_forward", *args, inp.size)

    def _gelu_backward(self, dinp, inp, dout):
        i = self._f("inp", inp)
        args = (self._f("dinp", dinp, inp.shape, output=True), i, self._f("dout", dout, inp.shape))
        self._run("gelu_backward", *args, inp.size)

    def _residual_forward(self, out, inp1, inp2):
        i1 = self._f("inp1", inp1)
        args = (self._f("out", out, inp1.shape, output=True), i1, self._f("inp2", inp2, inp1.shape))
        self._run("residual_forward", *args, inp1.size)

    def _residual_backward(self, dinp1, dinp2, dout):
        d = self._f("dout", dout)
        args = (self._f("dinp1", dinp1, dout.shape, output=True), self._f("dinp2", dinp2, dout.shape, output=True), d)
        self._run("residual_backward", *args, dout.size)

    def _softmax_forward(self, probs, logits, V):
        B, T, Vp = _shape("logits", logits, 3)
        _check_vocab(V, Vp)
        args = (self._f("probs", probs, (B, T, Vp), output=True), self._f("logits", logits, ndim=3))
        self._run("softmax_forward", *args, B, T, int(V), Vp)

    def _crossentropy_forward(self, losses, probs, targets):
        B, T, Vp = _shape("probs", probs, 3)
        args = (
            self._f("losses", losses, (B, T), output=True),
            self._f("probs", probs, ndim=3),
            _tokens(self._ffi, "targets", targets, (B, T), Vp),
        )
        self._run("crossentropy_forward", *args, B, T, Vp)

    def _crossentropy_softmax_backward(self, dlogits, dlosses, probs, targets, V):
        B, T, Vp = _shape("probs", probs, 3)
        _check_vocab(V, Vp)
        args = (
            self._f("dlogits", dlogits, (B, T, Vp), output=True),
            self._f("dlosses", dlosses, (B, T)),
            self._f("probs", probs, ndim=3),
            _tokens(self._ffi, "targets", targets, (B, T), int(V)),
        )
        self._run("crossentropy_softmax_backward", *args, B, T, int(V), Vp)


def _check_vocab(V, Vp):
    if not isinstance(V, (int, np.integer)) or not 0 < V <= Vp:
        raise ValueError(f"V: {V!r} must be an integer in [1, Vp = {Vp}]")


# ----------------------------------------------------------------------------- model handles
class NativeModel:
    """A libllmc model with the model-handle interface of backends/base.py."""

    def __init__(self, library: Library, handle, mode: int = 0) -> None:
        self._library, self._mode = library, mode
        self._ffi, self._lib = library.ffi, library.lib
        self._handle = self._ffi.gc(handle, self._lib.llmc_model_free)
        cfg = self._ffi.new("llmc_config*")
        self._call("llmc_model_config", cfg)
        self.config = GPT2Config(
            cfg.max_seq_len, cfg.vocab_size, cfg.padded_vocab_size, cfg.num_layers, cfg.num_heads, cfg.channels
        )
        self.num_parameters = int(self._lib.llmc_model_num_parameters(self._handle))
        self._BT = None

    def _call(self, name, *args):
        if self._handle is None:
            raise ValueError("this model has been closed")
        self._library.activate(self._mode)
        self._library.check(getattr(self._lib, name)(self._handle, *args))

    def _flat(self, name, a, output=False):
        return _array(self._ffi, name, a, np.float32, (self.num_parameters,), output=output)

    def forward(self, inputs: np.ndarray, targets: np.ndarray | None = None) -> float | None:
        inputs = _token_array("inputs", inputs)
        B, T = inputs.shape
        tgt = self._ffi.NULL
        if targets is not None:
            targets = _token_array("targets", targets)
            if targets.shape != inputs.shape:
                raise ValueError(f"targets: shape {targets.shape} differs from inputs {inputs.shape}")
            tgt = self._ffi.from_buffer("int[]", targets)
        loss = self._ffi.new("float*")
        self._call("llmc_forward", self._ffi.from_buffer("int[]", inputs), tgt, B, T, loss)
        self._BT = (B, T)
        return None if targets is None else float(loss[0])

    def logits(self) -> np.ndarray:
        if self._BT is None:
            raise ValueError("logits(): no forward has run yet")
        out = np.empty((*self._BT, self.config.padded_vocab_size), np.float32)
        self._call("llmc_get_logits", self._ffi.from_buffer("float[]", out))
        return out

    def zero_grad(self) -> None:
        self._call("llmc_zero_grad")

    def backward(self) -> None:
        self._call("llmc_backward")

    def grads(self) -> np.ndarray:
        out = np.empty(self.num_parameters, np.float32)
        self._call("llmc_get_grads", self._flat("dst", out, output=True))
        return out

    def params(self) -> np.ndarray:
        out = np.empty(self.num_parameters, np.float32)
        self._call("llmc_get_params", self._flat("dst", out, output=True))
        return out

    def set_params(self, flat: np.ndarray) -> None:
        self._call("llmc_set_params", self._flat("flat", np.ascontiguousarray(flat, np.float32)))

    def update(self, settings: AdamWSettings, t: int) -> float:
        opt = self._ffi.new(
            "llmc_adamw*",
            dict(
                learning_rate=settings.learning_rate,
                beta1=settings.beta1,
                beta2=settings.beta2,
                eps=settings.eps,
                weight_decay=settings.weight_decay,
                decay_all=int(bool(settings.decay_all)),
                grad_clip=settings.grad_clip,
            ),
        )
        norm = self._ffi.new("float*")
        self._call("llmc_update", opt, int(t), norm)
        return float(norm[0])

    def optimizer_state(self) -> tuple[np.ndarray, np.ndarray]:
        m, v = np.empty(self.num_parameters, np.float32), np.empty(self.num_parameters, np.float32)
        self._call("llmc_get_optimizer_state", self._flat("m", m, output=True), self._flat("v", v, output=True))
        return m, v

    def set_optimizer_state(self, m: np.ndarray, v: np.ndarray) -> None:
        self._call(
            "llmc_set_optimizer_state",
            self._flat("m", np.ascontiguousarray(m, np.float32)),
            self._flat("v", np.ascontiguousarray(v, np.float32)),
        )

    def save_checkpoint(self, path: str | os.PathLike, dtype: str = "fp32") -> None:
        """The parameters as an llm.c checkpoint (dtype "fp32": version 3, "bf16": version 5), written
        whole or not at all, by the library itself."""
        versions = {"fp32": 3, "bf16": 5}
        if dtype not in versions:
            raise ValueError(f"dtype: {dtype!r}, expected 'fp32' or 'bf16'")
        self._call("llmc_save_checkpoint", os.fsencode(path), versions[dtype])

    def dist_join(self, unique_id: bytes, rank: int, world_size: int, zero_stage: int) -> None:
        """Joins the data-parallel group (collective: every rank, the same id); llmc_update then averages."""
        if len(unique_id) != DIST_ID_BYTES:
            raise ValueError(f"unique_id: {len(unique_id)} bytes, expected {DIST_ID_BYTES}")
        self._call(
            "llmc_dist_join",
            self._ffi.from_buffer("unsigned char[]", unique_id),
            int(rank),
            int(world_size),
            int(zero_stage),
        )

    def dist_sync_grads(self) -> None:
        """The gradients averaged over the ranks now (collective); ZeRO-1: valid on this rank's shard."""
        self._call("llmc_dist_sync_grads")

    def dist_shard(self) -> tuple[int, int]:
        """(offset, count): the parameters this rank updates."""
        offset, count = self._ffi.new("size_t*"), self._ffi.new("size_t*")
        self._call("llmc_dist_shard", offset, count)
        return int(offset[0]), int(count[0])

    def dist_mean(self, values: np.ndarray) -> np.ndarray:
        """Host floats averaged over the ranks (collective)."""
        values = np.ascontiguousarray(values, np.float32).copy()
        self._call("llmc_dist_mean", self._ffi.from_buffer("float[]", values), values.size)
        return values

    def close(self) -> None:
        if self._handle is not None:
            self._ffi.release(self._handle)  # runs llmc_model_free now
            self._handle = None


def _token_array(name, a):
    """Integer (B,T) token ids as a C-contiguous int32 array (a copy only when needed)."""
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name}: dtype {a.dtype}, expected integer token ids")
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"{name}: shape {a.shape}, expected (B, T) with B, T >= 1")
    if a.dtype != np.int32:
        if a.min() < np.iinfo(np.int32).min or a.max() > np.iinfo(np.int32).max:
            raise ValueError(f"{name}: token ids beyond int32")
        a = a.astype(np.int32)
    return np.ascontiguousarray(a)


# ----------------------------------------------------------------------------- our own libraries
def default_threads() -> int:
    """LLMC_THREADS when set (ValueError naming it when it is not a thread count), else the CPU count."""
    value = os.environ.get("LLMC_THREADS")
    if not value:
        return min(os.cpu_count() or 1, MAX_THREADS)
    try:
        n = int(value)
    except ValueError:
        n = value
    return check_threads(n, "LLMC_THREADS")


def library_path(kind: str) -> Path:
    """build/libllmc_{kind}.so under the repository root, or the file named by LLMC_{KIND}_LIB."""
    return Path(os.environ.get(LIBRARY_ENV[kind]) or ROOT / "build" / f"libllmc_{kind}.so")
