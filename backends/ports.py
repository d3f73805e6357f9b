"""Third-party ports behind the backend interface: "lib:PATH" and "cmd:COMMAND" (PORTING.md).

- lib:PATH   a shared library with libllmc's C ABI (native/llmc.h): the llmc_* model API and/or llm.c's
             layer kernels. Driven by the same cffi binding as our own libraries; kernels the library
             does not export are absent, and their tests skip saying so. Its precision class (the
             tolerance column it is judged by) comes from LLMC_PORT_PRECISION (default fp32), and the
             library is set to the matching mode (llmc_set_precision 0, 1, 2) where it exports that.
- cmd:COMMAND a program in any language speaking the command-line protocol below; model level only.

The command-line protocol (version 1), in brief (PORTING.md has the full text):

    COMMAND info                                    -> JSON on stdout: protocol, name, version, precision
    COMMAND forward  --model M.bin --batch X.bin --out OUT.bin   -> logits (B,T,Vp) [, loss ()]
    COMMAND backward --model M.bin --batch X.bin --out OUT.bin   -> logits, loss, grads (P,)
    COMMAND train    --model M.bin --batch X.bin --out OUT.bin --steps N --first-step t
                     --learning-rate --beta1 --beta2 --eps --weight-decay --decay-all 0|1 --grad-clip
                     [--state S.bin]                -> losses (N,), grad_norms (N,), params, m, v (P,)

M.bin is an llm.c checkpoint (v3, fp32). X.bin, S.bin and OUT.bin are "array files": named little-endian
arrays (write_arrays / read_arrays below). Exit status 0 = done, 3 = this port does not support the
request (the check is skipped with the port's stderr as the reason), anything else = failure.
"""
import json
import math
import os
from pathlib import Path
import shlex
import shutil
import subprocess
import tempfile
import weakref

import numpy as np

from backends.base import Backend, BackendUnavailable
from backends.native import NativeBackend, open_library
from backends.protocol import (
    EXIT_UNSUPPORTED,
    PROTOCOL_VERSION,
    PortError,
    PortUnsupported,
    expect_array,
    read_arrays,
    write_arrays,
)
from native.binding import ERROR_CODES, LlmcError
from reference.formats import read_checkpoint, write_checkpoint
from reference.layers import KERNEL_NAMES

PRECISIONS = ("fp32", "tf32", "bf16")
PRECISION_MODES = {"fp32": 0, "tf32": 1, "bf16": 2}   # llmc_set_precision's mode for each class
DEFAULT_TIMEOUT_S = 600         # LLMC_PORT_TIMEOUT's default: gpt2_124M's train call on a slow port
TRAIN_LOOKAHEAD = 10             # steps a train call runs ahead of the handle: test_gpt2.c's loop length


# ----------------------------------------------------------------------------- registry entry
def port_precision():
    precision = os.environ.get("LLMC_PORT_PRECISION", "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"LLMC_PORT_PRECISION={precision!r}: use one of {', '.join(PRECISIONS)}")
    return precision


def port_backend(name):
    """lib:PATH or cmd:COMMAND -> a Backend; BackendUnavailable (with the reason) when it cannot run."""
    kind, _, target = name.partition(":")
    if not target:
        raise ValueError(f"backend {name!r}: say what to load, e.g. lib:build/libfoo.so or cmd:'./myport'")
    if kind == "lib":
        return lib_backend(name, target)
    if kind == "cmd":
        return CmdBackend(name, target)
    raise ValueError(f"backend {name!r}: ports are lib:PATH or cmd:COMMAND")


# ----------------------------------------------------------------------------- lib:PATH
def lib_backend(name, path):
    """A shared library with libllmc's ABI, through native/binding.py's loader for arbitrary paths."""
    if not Path(path).is_file():
        raise BackendUnavailable(f"{path}: no such shared library")
    return LibBackend(open_library(path), name, port_precision())


class LibBackend(NativeBackend):
    """NativeBackend for a third-party library, which may export only part of the ABI: kernels it lacks
    are absent (their checks skip, saying so); without the llmc_* model API the model level is skipped."""

    def __init__(self, library, name, precision):
        super().__init__(library, name, precision, PRECISION_MODES[precision])
        lib, ffi = library.lib, library.ffi
        self.port_name = ffi.string(lib.llmc_backend_name()).decode() if library.has("llmc_backend_name") else "?"
        missing = [k for k in KERNEL_NAMES if not library.has(k)]
        self.description = (f"{self.port_name} ({self.description}); kernels: "
                            + (f"missing {', '.join(missing)}" if missing else "all 15"))

    def _require_model_api(self):
        if not self.library.has("llmc_model_from_params"):
            raise PortUnsupported(f"{self.library.path} exports no llmc_* model API (llm.c's train_gpt2.c "
                                  "gets one from native/llmc_adapter.c: python -m tools.validate_llmc)")

    def model(self, config, params, max_B, max_T):
        self._require_model_api()
        return super().model(config, params, max_B, max_T)

    def model_from_checkpoint(self, path, max_B, max_T):
        self._require_model_api()
        return super().model_from_checkpoint(path, max_B, max_T)


# ----------------------------------------------------------------------------- cmd:COMMAND
class CmdBackend(Backend):
    """A port in any language, run as a command per protocol call (PORTING.md). Model level only."""

    kernels = None

    def __init__(self, name, command):
        self.name = name
        self.argv = shlex.split(command)
        info = self._info()
        self.port_name = str(info.get("name", "?"))
        self.port_version = str(info.get("version", "?"))
        self.precision = info.get("precision", "fp32")
        if self.precision not in PRECISIONS:
            raise PortError(f"`{command} info`: precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        self.description = (f"{self.port_name} {self.port_version} ({info.get('description', 'no description')}), "
                            f"command-line protocol {PROTOCOL_VERSION}: `{command}`")

    def _info(self):
        command = f"`{shlex.join(self.argv)} info`"
        try:
            done = _run(self.argv + ["info"])
        except OSError as e:
            raise BackendUnavailable(f"cannot run {shlex.join(self.argv)}: {e}") from e
        if done.returncode != 0:
            raise BackendUnavailable(f"{command} exited with {done.returncode}: {_tail(done.stderr)}")
        try:
            info = json.loads(done.stdout)
        except json.JSONDecodeError as e:
            raise PortError(f"{command} did not print JSON: {e}: {done.stdout[:200]!r}") from e
        if not isinstance(info, dict):
            raise PortError(f"{command} printed {type(info).__name__} JSON, expected an object: {done.stdout[:200]!r}")
        if info.get("protocol") != PROTOCOL_VERSION:
            raise PortError(f"{command}: protocol {info.get('protocol')!r}, this suite speaks {PROTOCOL_VERSION}")
        return info

    def has_kernel(self, name):
        return False

    def call(self, op, args):
        """Run `COMMAND op args...`; PortUnsupported on exit 3, PortError on any other failure."""
        argv = self.argv + [op] + [str(a) for a in args]
        try:
            done = _run(argv)
        except OSError as e:
            raise PortError(f"cannot run `{shlex.join(argv)}`: {e}") from e
        if done.returncode == EXIT_UNSUPPORTED:
            raise PortUnsupported(f"{self.port_name}: {op} unsupported: {_tail(done.stderr)}")
        if done.returncode != 0:
            raise PortError(f"`{shlex.join(argv)}` exited with {done.returncode}: {_tail(done.stderr)}")

    def model(self, config, params, max_B, max_T):
        return CmdModel(self, config, params, max_B, max_T)

    def model_from_checkpoint(self, path, max_B, max_T):
        config, params = read_checkpoint(path)
        return CmdModel(self, config, params, max_B, max_T)


def port_timeout():
    """Seconds one protocol call may take (env LLMC_PORT_TIMEOUT): a hung port fails its checks, never the suite."""
    value = os.environ.get("LLMC_PORT_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not seconds > 0:
        raise ValueError(f"LLMC_PORT_TIMEOUT={value!r}: expected a positive number of seconds")
    return seconds


def _run(argv):
    """One protocol call -> CompletedProcess; PortError naming the command when it runs past port_timeout()."""
    timeout = port_timeout()
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise PortError(f"`{shlex.join(argv)}` ran past LLMC_PORT_TIMEOUT={timeout:g} s") from e


def is_unsupported(error):
    """Whether an exception says "this backend does not do that" (a skip, not a failure): a port's
    PortUnsupported or libllmc's LLMC_ERR_UNSUPPORTED."""
    return isinstance(error, PortUnsupported) or (isinstance(error, LlmcError) and error.code == ERROR_CODES["LLMC_ERR_UNSUPPORTED"])


def _tail(text, lines=5):
    return " | ".join(text.strip().splitlines()[-lines:]) or "(no output on stderr)"


class _Forward:
    """The last forward: its batch, the state it ran at, and what is known of its results."""

    def __init__(self, x, y, state, loss=None, logits=None, grads=None):
        self.x, self.y, self.state = x, y, state
        self.loss, self.logits, self.grads = loss, logits, grads


class CmdModel:
    """The model-handle interface over protocol calls.

    Every protocol call starts from a checkpoint, so the handle keeps the state itself: a base (params,
    AdamW m and v) plus the updates applied since, kept pending. Updates are batched: the first update
    after a forward / zero_grad / backward on one batch runs `train` for TRAIN_LOOKAHEAD steps at once,
    and the following forwards and updates of the same pattern (test_gpt2.c's loop) are answered from
    that run. Anything else materializes the pending updates (a `train` call of exactly that many steps)
    and continues from there. Gradients are tracked as terms (state index, batch) evaluated on demand
    with `backward` calls, so llm.c's accumulate-until-zero_grad semantics hold. Unsupported: an update
    whose gradient is not exactly one backward of the current forward (gradient accumulation).
    """

    def __init__(self, port, config, params, max_B, max_T):
        self.port, self.config = port, config
        self.max_B, self.max_T = max_B, max_T
        params = np.asarray(params, np.float32)
        if params.shape != (config.num_parameters,):
            raise ValueError(f"params: expected {config.num_parameters} values for {config}, got {params.shape}")
        self.dir = Path(tempfile.mkdtemp(prefix="llmc-port-"))
        self._remove_dir = weakref.finalize(self, shutil.rmtree, self.dir, True)   # also if close() is forgotten
        self.base_params, self.m, self.v = params.copy(), None, None   # the base state
        self.model_file = None          # the base params as a checkpoint, written when first needed
        self.pending = []               # update step numbers t since the base, all on pending_batch / settings
        self.pending_batch = self.pending_settings = None
        self.run = None                 # the latest train call from the base: losses, grad_norms, params, m, v
        self.fwd = None                 # the last forward (_Forward)
        self.acc = None                 # accumulated gradients evaluated so far (None: zero)
        self.terms = []                 # backward() calls not evaluated yet: (state, x, y)

    # -------------------------------------------------------------- protocol calls
    def _model_path(self):
        if self.model_file is None:
            self.model_file = self.dir / "model.bin"
            write_checkpoint(self.model_file, self.config, self.base_params)
        return self.model_file

    def _call(self, op, batch, extra=(), state=None):
        batch_path, out = self.dir / "batch.bin", self.dir / "out.bin"
        write_arrays(batch_path, batch)
        args = ["--model", self._model_path(), "--batch", batch_path, "--out", out, *extra]
        if state is not None:
            write_arrays(self.dir / "state.bin", state)
            args += ["--state", self.dir / "state.bin"]
        if out.exists():
            out.unlink()
        self.port.call(op, args)
        if not out.exists():
            raise PortError(f"`{op}` of {self.port.port_name} wrote no {out}")
        return out, read_arrays(out)

    def _evaluate(self, x, y):
        """forward (y None) or backward at the base -> (loss or None, logits, grads or None)."""
        B, T = x.shape
        Vp, P = self.config.padded_vocab_size, self.config.num_parameters
        batch = {"x": x} if y is None else {"x": x, "y": y}
        out, arrays = self._call("forward" if y is None else "backward", batch)
        logits = expect_array(arrays, out, "logits", (B, T, Vp)).copy()
        if y is None:
            return None, logits, None
        loss = float(expect_array(arrays, out, "loss", ()))
        return loss, logits, expect_array(arrays, out, "grads", (P,)).copy()

    def _train(self, steps):
        """`train` from the base over the pending batch and settings, `steps` steps from pending[0]."""
        x, y = self.pending_batch
        s = self.pending_settings
        P = self.config.num_parameters
        extra = ["--steps", steps, "--first-step", self.pending[0],
                 "--learning-rate", repr(s.learning_rate), "--beta1", repr(s.beta1), "--beta2", repr(s.beta2),
                 "--eps", repr(s.eps), "--weight-decay", repr(s.weight_decay),
                 "--decay-all", int(bool(s.decay_all)), "--grad-clip", repr(s.grad_clip)]
        state = None if self.m is None else {"m": self.m, "v": self.v}
        out, arrays = self._call("train", {"x": x, "y": y}, extra, state)
        run = {name: expect_array(arrays, out, name, (steps,)).astype(np.float64) for name in ("losses", "grad_norms")}
        run.update({name: expect_array(arrays, out, name, (P,)).copy() for name in ("params", "m", "v")})
        run["steps"] = steps
        self.run = run
        return run

    def _run_covering(self, steps):
        if self.run is None or self.run["steps"] < steps:
            self._train(max(steps, TRAIN_LOOKAHEAD))
        return self.run

    # -------------------------------------------------------------- the state machine
    def _materialize(self, n):
        """Apply the first n pending updates to the base. On the way, whatever is still owed from the
        states passed over (a backward's gradient, the last forward's logits) is evaluated first."""
        while n > 0:
            owed = [j for j, _, _ in self.terms if j < n]
            if self.fwd is not None and self.fwd.logits is None and self.fwd.state is not None and self.fwd.state < n:
                owed.append(self.fwd.state)
            step = min(owed, default=n)
            if step == 0:
                self._settle_base()
                continue
            run = self.run if self.run is not None and self.run["steps"] == step else self._train(step)
            self.base_params, self.m, self.v = run["params"], run["m"], run["v"]
            self.model_file, self.run = None, None
            self.pending = self.pending[step:]
            if not self.pending:
                self.pending_batch = self.pending_settings = None
            self.terms = [(j - step, x, y) for j, x, y in self.terms]
            if self.fwd is not None and self.fwd.state is not None:   # its results are settled if passed over
                self.fwd.state = self.fwd.state - step if self.fwd.state >= step else None
            n -= step

    def _settle_base(self):
        """Evaluate what is owed at the base state: the gradient terms and the last forward's logits."""
        f = self.fwd
        if f is not None and f.state == 0 and f.logits is None:
            f.loss, f.logits, f.grads = self._evaluate(f.x, f.y)
        for term in [t for t in self.terms if t[0] == 0]:
            self.terms.remove(term)
            _, x, y = term
            if f is not None and f.state == 0 and f.grads is not None and _same(f.x, x) and _same(f.y, y):
                grads = f.grads
            else:
                grads = self._evaluate(x, y)[2]
            self.acc = grads.copy() if self.acc is None else self.acc + grads

    def _materialize_all(self):
        self._materialize(len(self.pending))

    def _resolve_grads(self):
        while self.terms:
            self._materialize(min(j for j, _, _ in self.terms))
            self._settle_base()

    # -------------------------------------------------------------- the interface
    def forward(self, inputs, targets=None):
        x = self._tokens(inputs, "inputs")
        y = None if targets is None else self._tokens(targets, "targets")
        if y is not None and x.shape != y.shape:
            raise ValueError(f"targets: shape {y.shape} differs from inputs {x.shape}")
        k = len(self.pending)
        if k and y is not None and _same(self.pending_batch[0], x) and _same(self.pending_batch[1], y):
            self.fwd = _Forward(x, y, k, loss=float(self._run_covering(k + 1)["losses"][k]))
            return self.fwd.loss
        if k:
            self._materialize_all()
        f = self.fwd
        if f is not None and f.state == 0 and f.logits is not None and _same(f.x, x) and _same(f.y, y):
            self.fwd = _Forward(x, y, 0, f.loss, f.logits, f.grads)
        else:
            self.fwd = _Forward(x, y, 0, *self._evaluate(x, y))
        return self.fwd.loss

    def _tokens(self, values, name):
        values = np.asarray(values)
        if values.ndim != 2:
            raise ValueError(f"{name}: expected shape (B, T), got {values.shape}")
        B, T = values.shape
        if not (0 < B <= self.max_B and 0 < T <= self.max_T):
            raise ValueError(f"{name}: B={B}, T={T} exceed the model's max_B={self.max_B}, max_T={self.max_T}")
        if values.min() < 0 or values.max() >= self.config.vocab_size:
            raise ValueError(f"{name}: token ids must lie in [0, {self.config.vocab_size}), "
                             f"got [{values.min()}, {values.max()}]")
        return np.ascontiguousarray(values, np.int32)

    def logits(self):
        f = self.fwd
        if f is None:
            raise RuntimeError("logits: no forward yet")
        if f.logits is None:
            self._materialize(f.state)
            f.loss, f.logits, f.grads = self._evaluate(f.x, f.y)
        return f.logits.copy()

    def zero_grad(self):
        self.acc, self.terms = None, []

    def backward(self):
        f = self.fwd
        if f is None or f.y is None:
            raise RuntimeError("backward needs a forward with targets first")
        if f.state is None:
            raise PortUnsupported("cmd: ports cannot backward a forward made before set_params")
        self.terms.append((f.state, f.x, f.y))

    def grads(self):
        self._resolve_grads()
        if self.acc is None:
            return np.zeros(self.config.num_parameters, np.float32)
        return self.acc.copy()

    def params(self):
        self._materialize_all()
        return self.base_params.copy()

    def set_params(self, flat):
        flat = np.asarray(flat, np.float32)
        if flat.shape != self.base_params.shape:
            raise ValueError(f"set_params: expected {self.base_params.shape}, got {flat.shape}")
        self._resolve_grads()
        if self.fwd is not None and self.fwd.logits is None:
            self.logits()
        self._materialize_all()
        self.base_params, self.model_file, self.run = flat.copy(), None, None
        if self.fwd is not None:
            self.fwd.state = None

    def update(self, settings, t):
        k = len(self.pending)
        if not (self.acc is None and len(self.terms) == 1 and self.terms[0][0] == k):
            raise PortUnsupported("cmd: ports update only right after forward, zero_grad and one backward "
                                  "on one batch (gradient accumulation is not expressible in the protocol)")
        _, x, y = self.terms[0]
        if k and not (_same(self.pending_batch[0], x) and _same(self.pending_batch[1], y)
                      and self.pending_settings == settings and t == self.pending[-1] + 1):
            self._materialize_all()
        if not self.pending:
            self.pending_batch, self.pending_settings = (x, y), settings
        self.pending.append(t)
        return float(self._run_covering(len(self.pending))["grad_norms"][len(self.pending) - 1])

    def optimizer_state(self):
        self._materialize_all()
        if self.m is None:
            zeros = np.zeros(self.config.num_parameters, np.float32)
            return zeros, zeros.copy()
        return self.m.copy(), self.v.copy()

    def set_optimizer_state(self, m, v):
        self._materialize_all()
        P = self.config.num_parameters
        self.m, self.v = (np.asarray(a, np.float32).reshape(P).copy() for a in (m, v))
        self.run = None

    def close(self):
        self._remove_dir()


def _same(a, b):
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and np.array_equal(a, b)
