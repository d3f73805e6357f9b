"""Third-party ports behind the backend interface: "lib:PATH" and "cmd:COMMAND" (PORTING.md).

- lib:PATH   a shared library with libllmc's C ABI (native/llmc.h): the llmc_* model API and/or llm.c's
             layer kernels. It runs in a child process of its own (backends/lib_worker.py): a segfault,
             abort, exit() or hang inside it is an error of the calls it was making, never the end of the
             harness. Functions the library does not export are skipped, saying which; a library with
             llmc_model_from_checkpoint but no llmc_model_from_params (llm.c's shape) gets its models from
             checkpoint files. Its precision class (the tolerance column it is judged by) comes from
             LLMC_PORT_PRECISION (default fp32), and the library is set to the matching mode
             (llmc_set_precision 0, 1, 2) where it exports that; whether it is bit-reproducible from
             LLMC_PORT_DETERMINISTIC.
- cmd:COMMAND a program in any language speaking the command-line protocol below; model level only.

The command-line protocol (version 1), in brief (PORTING.md has the full text):

    COMMAND info                                    -> JSON on stdout: protocol, name, version, precision,
                                                       deterministic
    COMMAND forward  --model M.bin --batch X.bin --out OUT.bin   -> logits (B,T,Vp)
    COMMAND backward --model M.bin --batch X.bin --out OUT.bin   -> logits, loss, grads (P,)
    COMMAND train    --model M.bin --batch X.bin --out OUT.bin --steps N --first-step t
                     --learning-rate --beta1 --beta2 --eps --weight-decay --decay-all 0|1 --grad-clip
                     [--state S.bin]                -> losses (N,), grad_norms (N,), params, m, v (P,)

M.bin is an llm.c checkpoint (v3, fp32). X.bin, S.bin and OUT.bin are "array files": named little-endian
arrays (backends/protocol.py; what each call replies: protocol.REPLIES). Exit status 0 = done, 3 = this
port does not support the request (the check is skipped with the port's stderr as the reason), anything
else = failure. Each call runs in a process group of its own; a call past LLMC_PORT_TIMEOUT seconds is
killed, group and all. The inputs of a failed call are kept (LLMC_PORT_KEEP_DIR, default the system's
temporary directory) and the error says how to rerun it.
"""

import json
import math
from multiprocessing.connection import Connection
import os
from pathlib import Path
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
import weakref

import numpy as np

from backends import lib_worker
from backends.base import Backend, BackendUnavailable
from backends.protocol import (
    EXIT_UNSUPPORTED,
    PROTOCOL_VERSION,
    PortError,
    PortUnsupported,
    read_reply,
    write_arrays,
)
from native.binding import ERROR_CODES, LlmcArgumentError, LlmcError
from reference.formats import MODEL_MAGIC, write_checkpoint
from reference.layers import KERNEL_NAMES
from reference.model import GPT2Config

PRECISIONS = ("fp32", "tf32", "bf16")
PRECISION_MODES = {"fp32": 0, "tf32": 1, "bf16": 2}  # llmc_set_precision's mode for each class
DEFAULT_TIMEOUT_S = 600  # LLMC_PORT_TIMEOUT's default: one call; a slow port's 124M train step may need more
ROOT = Path(__file__).resolve().parents[1]


class PortCrashed(PortError):
    """A port's process died during a call; the checks waiting for it are errors."""


class PortTimeout(PortCrashed):
    """A port call ran past LLMC_PORT_TIMEOUT and was killed; the rest of that fixture's checks are not tried."""


# ----------------------------------------------------------------------------- registry entry
def port_precision():
    precision = os.environ.get("LLMC_PORT_PRECISION", "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"LLMC_PORT_PRECISION={precision!r}: use one of {', '.join(PRECISIONS)}")
    return precision


def port_deterministic():
    """LLMC_PORT_DETERMINISTIC=1: the lib: port declares that the same call gives the same bits (the
    rerun checks then fail on a difference instead of reporting it)."""
    value = os.environ.get("LLMC_PORT_DETERMINISTIC", "0")
    if value not in ("0", "1"):
        raise ValueError(f"LLMC_PORT_DETERMINISTIC={value!r}: use 1 (bit-reproducible) or 0")
    return value == "1"


def port_backend(name, device=None):
    """lib:PATH or cmd:COMMAND -> a Backend; BackendUnavailable (with the reason) when it cannot run."""
    kind, _, target = name.partition(":")
    if not target:
        raise ValueError(f"backend {name!r}: say what to load, e.g. lib:build/libfoo.so or cmd:'./myport'")
    if kind == "lib":
        if not Path(target).is_file():
            raise BackendUnavailable(f"{target}: no such shared library")
        return LibBackend(name, target, port_precision(), port_deterministic(), device)
    if kind == "cmd":
        return CmdBackend(name, target)
    raise ValueError(f"backend {name!r}: ports are lib:PATH or cmd:COMMAND")


def port_timeout():
    """Seconds one port call may take (env LLMC_PORT_TIMEOUT): a hung port fails its checks, never the suite."""
    value = os.environ.get("LLMC_PORT_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not seconds > 0:
        raise ValueError(f"LLMC_PORT_TIMEOUT={value!r}: expected a positive number of seconds")
    return seconds


def timeout_message(what, timeout):
    return (
        f"{what} ran past LLMC_PORT_TIMEOUT={timeout:g} s and was killed; a slower port can have more time: "
        f"LLMC_PORT_TIMEOUT=SECONDS (e.g. 3600 for gpt2_124M) in the environment of the suite"
    )


def is_unsupported(error):
    """Whether an exception says "this backend does not do that" (a skip, not a failure): a port's
    PortUnsupported or libllmc's LLMC_ERR_UNSUPPORTED."""
    return isinstance(error, PortUnsupported) or (
        isinstance(error, LlmcError) and error.code == ERROR_CODES["LLMC_ERR_UNSUPPORTED"]
    )


def _tail(data, lines=5):
    text = data.decode("utf-8", errors="backslashreplace") if isinstance(data, bytes) else data
    return " | ".join(text.strip().splitlines()[-lines:]) or "(no output)"


def _kill_group(process):
    """SIGKILL the process's whole group (it leads one: start_new_session), then reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _exit_description(returncode):
    if returncode is not None and returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name} (signal {-returncode})"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


# ----------------------------------------------------------------------------- lib:PATH
class LibBackend(Backend):
    """A shared library with libllmc's ABI, loaded in a child process (backends/lib_worker.py) that this
    object drives over two pipes. A child that dies or hangs fails the call it was in (PortCrashed, with
    how it ended and the last lines it printed); the next call starts a fresh one, and model handles of
    the dead one refuse to work."""

    def __init__(self, name, path, precision, deterministic=False, device=None):
        self.name, self.precision, self.deterministic = name, precision, deterministic
        self.device = device  # the GPU the child uses (a data-parallel rank's), None: the library's default
        self.path = str(Path(path).resolve())
        self._process = self._requests = self._replies = None
        self._generation = 0
        # the child's stdout and stderr; the child ends when this object's pipes close (end of file)
        self._log = tempfile.NamedTemporaryFile(prefix="llmc-lib-port-", suffix=".log")
        hello = self._start()
        self.exports = frozenset(hello["exports"])
        self.library = _Exports(self.path, self.exports)
        self.port_name = hello["name"]
        self.kernels = _RemoteKernels(self, [k for k in KERNEL_NAMES if k in self.exports])
        missing = [k for k in KERNEL_NAMES if k not in self.exports]
        model_api = (
            "model API from parameters"
            if "llmc_model_from_params" in self.exports
            else "model API from checkpoint files (no llmc_model_from_params)"
            if "llmc_model_from_checkpoint" in self.exports
            else "no model API"
        )
        self.description = (
            f"{self.port_name} ({self.path}: {hello['build_info']}); {model_api}; kernels: "
            + (f"missing {', '.join(missing)}" if missing else "all 15")
            + f"; run in a child process; {'declared' if deterministic else 'not declared'} "
            "bit-reproducible"
        )

    # -------------------------------------------------------------- the child process
    def _start(self):
        """A fresh child -> its hello (exports, name, build info); BackendUnavailable if the library
        cannot be loaded here or refuses to start, PortCrashed if loading it kills the process (a port's
        defect: an error, never a skip)."""
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        try:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "backends.lib_worker",
                    str(request_read),
                    str(reply_write),
                    self.path,
                    str(PRECISION_MODES[self.precision]),
                    *([] if self.device is None else [str(self.device)]),
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                pass_fds=(request_read, reply_write),
                env=env,
                start_new_session=True,
            )
        finally:
            os.close(request_read)
            os.close(reply_write)
        self._requests = Connection(request_write, readable=False)
        self._replies = Connection(reply_read, writable=False)
        self._generation += 1
        try:
            return self._exchange(None, "loading the library")
        except PortError:  # PortCrashed, PortTimeout: the port's, an error
            raise
        except (LlmcError, RuntimeError, OSError) as e:  # LibraryUnavailable, llmc_init's refusal
            self._stop(self._process)
            raise BackendUnavailable(f"{self.name}: {e}") from e

    @staticmethod
    def _stop(process):
        if process is not None and process.poll() is None:
            _kill_group(process)

    def _exchange(self, request, what):
        """Send request (None: only wait for the child's greeting), wait for its reply -> the value."""
        if request is not None:
            self._send(request, what)
        return self._wait(what)

    def _send(self, request, what):
        try:
            lib_worker.send(self._requests, request)
        except (BrokenPipeError, ConnectionResetError):
            self._died(what)

    def _died(self, what):
        process, self._process = self._process, None
        try:
            returncode = process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            returncode = process.returncode
        raise PortCrashed(
            f"{self.name}: its process {_exit_description(returncode)} during {what}; "
            f"its last output: {_tail(self._log_text())}"
        ) from None

    def _wait(self, what):
        timeout = port_timeout()
        try:
            if not self._replies.poll(timeout):
                self._stop(self._process)
                self._process = None
                raise PortTimeout(timeout_message(f"{self.name}: {what}", timeout))
            reply = lib_worker.receive(self._replies)
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self._died(what)
        if reply[0] == "ok":
            return reply[1]
        raise _rebuild_error(*reply[1:])

    def _log_text(self):
        try:
            with open(self._log.name, "rb") as f:
                f.seek(max(0, os.path.getsize(self._log.name) - 4096))
                return f.read()
        except OSError:
            return b""

    def request(self, what, *message, generation=None):
        """One request to the child (a fresh one if the last died); generation: the child a model lives in."""
        self.post(what, *message, generation=generation)
        return self._wait(what)

    def post(self, what, *message, generation=None):
        """The first half of request(): sent, its reply left for collect(what). Several children can then
        work at once, as the ranks of a collective call must."""
        if generation is not None and (generation != self._generation or self._process is None):
            raise PortCrashed(
                f"{self.name}: this model lived in a process that has ended (an earlier crash "
                "or timeout); make a new model"
            )
        if self._process is None:
            self._start()
        self._send(message, what)

    def collect(self, what):
        return self._wait(what)

    # -------------------------------------------------------------- the backend interface
    def missing_kernel_reason(self, name):
        return None if name in self.exports else f"{self.path} does not export {name}"

    def unsupported(self, feature):
        for needs, function in (("model_config", "llmc_model_config"), ("save_checkpoint", "llmc_save_checkpoint")):
            if feature == needs and function not in self.exports:
                return f"{self.path} does not export {function}"
        return None

    def set_num_threads(self, n):
        self.request(f"llmc_set_num_threads({n})", "set_num_threads", int(n))

    @property
    def data_parallel(self):
        return "llmc_dist_join" in self.exports

    def dist_unique_id(self):
        return self.request("making the NCCL id", "dist_unique_id")

    def _require_model_api(self):
        if not self.exports & {"llmc_model_from_params", "llmc_model_from_checkpoint"}:
            raise PortUnsupported(
                f"{self.path} exports no llmc_* model API: neither llmc_model_from_params nor "
                "llmc_model_from_checkpoint (llm.c's train_gpt2.c gets one from "
                "native/llmc_adapter.c: python -m tools.validate_llmc)"
            )

    def model(self, config, params, max_B, max_T):
        self._require_model_api()
        params = np.ascontiguousarray(params, np.float32)
        if "llmc_model_from_params" in self.exports:
            return self._model("params", config, params, max_B, max_T)
        with tempfile.TemporaryDirectory(prefix="llmc-lib-model-") as tmp:  # llm.c's shape: files only
            path = Path(tmp) / "model.bin"
            write_checkpoint(path, config, params)
            return self._model("checkpoint", config, str(path), max_B, max_T)

    def model_from_checkpoint(self, path, max_B, max_T):
        self._require_model_api()
        if "llmc_model_from_checkpoint" not in self.exports:
            raise PortUnsupported(f"{self.path} does not export llmc_model_from_checkpoint")
        return self._model("checkpoint", _checkpoint_config(path), str(Path(path).resolve()), max_B, max_T)

    def _model(self, how, config, *args):
        fallback = None if config is None else vars(config)
        model_id, reported, num_parameters = self.request(f"llmc_model_from_{how}", "model", how, fallback, *args)
        return RemoteModel(self, self._generation, model_id, reported, num_parameters, config)


class _Exports:
    """What the harness may ask of a lib: port's library without loading it: its path, whether it exports a
    function (the tools ask before setting a thread count)."""

    def __init__(self, path, exports):
        self.path, self.exports = path, exports

    def has(self, name):
        return name in self.exports


def _checkpoint_config(path):
    """The configuration in an llm.c checkpoint's header, or None where it is no readable checkpoint
    (the library then says what is wrong)."""
    try:
        header = np.fromfile(path, "<i4", count=8)
        if header.size == 8 and header[0] == MODEL_MAGIC:
            return GPT2Config(*(int(header[i]) for i in (2, 3, 7, 4, 5, 6)))
    except (OSError, ValueError):
        pass
    return None


_ERRORS = {
    cls.__name__: cls
    for cls in (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        RuntimeError,
        NotImplementedError,
        MemoryError,
        OSError,
        PortError,
        PortUnsupported,
    )
}


def _rebuild_error(kind, message, llmc):
    """The child's exception, as the same class in this process where it is one the harness knows."""
    if llmc is not None:
        code, llmc_message = llmc
        cls = LlmcArgumentError if kind == "LlmcArgumentError" else LlmcError
        return cls(code, llmc_message)
    if kind == "LibraryUnavailable":
        return RuntimeError(message)
    cls = _ERRORS.get(kind)
    return cls(message) if cls is not None else RuntimeError(f"{kind}: {message}")


class RemoteModel:
    """A model handle (backends/base.py) whose model lives in a lib: port's child process.
    reported_config: what llmc_model_config says (None: the library does not export it)."""

    def __init__(self, backend, generation, model_id, reported, num_parameters, config):
        self._backend, self._generation, self._id = backend, generation, model_id
        self.reported_config = None if reported is None else GPT2Config(**reported)
        self.config = self.reported_config or config
        self.num_parameters = num_parameters

    def _call(self, method, *args):
        self.post(method, *args)
        return self.collect(method)

    def post(self, method, *args):
        """Starts the model's method in its process; collect(method) waits for what it returns."""
        self._backend.post(f"the model's {method}", "call", self._id, method, args, generation=self._generation)

    def collect(self, method):
        return self._backend.collect(f"the model's {method}")

    def forward(self, inputs, targets=None):
        return self._call("forward", inputs, targets)

    def logits(self):
        return self._call("logits")

    def zero_grad(self):
        self._call("zero_grad")

    def backward(self):
        self._call("backward")

    def grads(self):
        return self._call("grads")

    def params(self):
        return self._call("params")

    def set_params(self, flat):
        self._call("set_params", np.ascontiguousarray(flat, np.float32))

    def update(self, settings, t):
        return self._call("update", settings, int(t))

    def optimizer_state(self):
        return self._call("optimizer_state")

    def set_optimizer_state(self, m, v):
        self._call("set_optimizer_state", np.ascontiguousarray(m, np.float32), np.ascontiguousarray(v, np.float32))

    def save_checkpoint(self, path, dtype="fp32"):
        self._call("save_checkpoint", str(path), dtype)

    def close(self):
        if self.begin_close():
            self.end_close()

    def begin_close(self):
        """The first half of close(): sent, not waited for. -> whether end_close() has a reply to wait for.
        (The models of a data-parallel group close together: freeing a joined model is collective.)"""
        if self._id is not None and self._generation == self._backend._generation and self._backend._process:
            try:
                self._backend.post("closing a model", "close", self._id)
                return True
            except PortError:
                pass  # it died: nothing left to free
        self._id = None
        return False

    def end_close(self):
        try:
            self._backend.collect("closing a model")
        except PortError:
            pass
        self._id = None


class _RemoteKernels:
    """llm.c's kernels of a lib: port, called in its child process; outputs are copied back into the
    caller's arrays (every writable array argument, as the call in this process would have left it)."""

    def __init__(self, backend, names):
        for name in names:
            setattr(self, name, self._kernel(backend, name))

    @staticmethod
    def _kernel(backend, name):
        def call(*args):
            after = backend.request(name, "kernel", name, args)
            for mine, theirs in zip(args, after, strict=True):
                if isinstance(mine, np.ndarray) and mine.flags.writeable and isinstance(theirs, np.ndarray):
                    mine[...] = theirs

        call.__name__ = name
        return call


# ----------------------------------------------------------------------------- cmd:COMMAND
class CmdBackend(Backend):
    """A port in any language, run as a command per protocol call (PORTING.md). Model level only."""

    kernels = None

    def __init__(self, name, command, runner=None):
        """runner(argv) -> (exit status, stdout bytes, stderr bytes): how a call runs, run_port (a process
        per call) unless a test wants it otherwise."""
        self.name = name
        self.command = command
        self.argv = shlex.split(command)
        self.runner = runner or run_port
        info = self._info()
        self.port_name = str(info.get("name", "?"))
        self.port_version = str(info.get("version", "?"))
        self.precision = info.get("precision", "fp32")
        if self.precision not in PRECISIONS:
            raise PortError(f"`{command} info`: precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        deterministic = info.get("deterministic", False)
        if not isinstance(deterministic, bool):
            raise PortError(f"`{command} info`: deterministic is {deterministic!r}, expected true or false")
        self.deterministic = deterministic
        self.description = (
            f"{self.port_name} {self.port_version} ({info.get('description', 'no description')}), "
            f"command-line protocol {PROTOCOL_VERSION}: `{command}`; "
            f"{'declared' if deterministic else 'not declared'} bit-reproducible"
        )

    def _info(self):
        command = f"`{shlex.join(self.argv + ['info'])}`"
        try:
            returncode, stdout, stderr = self.runner(self.argv + ["info"])
        except OSError as e:
            raise BackendUnavailable(f"cannot run {shlex.join(self.argv)}: {e}") from e
        except subprocess.TimeoutExpired:
            raise PortTimeout(timeout_message(command, port_timeout())) from None
        if returncode != 0:
            raise BackendUnavailable(f"{command} {_exit_description(returncode)}: {_tail(stderr)}")
        try:
            text = stdout.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PortError(
                f"{command} exited with status 0 but printed bytes that are not UTF-8 on stdout: {e}"
            ) from e
        lines = [line for line in text.splitlines() if line.strip()]
        try:  # the JSON object is the whole output or its last line (what the port's runtime printed first is ignored)
            info = json.loads(text) if len(lines) <= 1 else json.loads(lines[-1])
        except json.JSONDecodeError as e:
            raise PortError(f"{command} did not print JSON: {e}: {text[-200:]!r}") from e
        if not isinstance(info, dict):
            raise PortError(f"{command} printed {type(info).__name__} JSON, expected an object: {text[-200:]!r}")
        if info.get("protocol") != PROTOCOL_VERSION:
            raise PortError(f"{command}: protocol {info.get('protocol')!r}, this suite speaks {PROTOCOL_VERSION}")
        return info

    def missing_kernel_reason(self, name):
        return (
            "the command-line protocol (cmd:) exposes no kernels, only the model; for the 15 kernel checks "
            "plug the port in as lib:PATH, a shared library exporting llm.c's kernels with native/llmc.h's "
            "signatures (PORTING.md; native/llmc_adapter.c is an example)"
        )

    def unsupported(self, feature):
        if feature == "accumulate":
            return (
                "the command-line protocol's backward starts from zero gradients: accumulating over two "
                "backwards is the harness's sum (backends/ports.py), not the port's"
            )
        if feature == "model_config":
            return "the command-line protocol reports no model configuration (the harness reads the checkpoint)"
        if feature == "save_checkpoint":
            return "the command-line protocol writes no checkpoint (the harness writes the port's inputs)"
        if feature in ("from_checkpoint", "set_params"):
            return (
                "the command-line protocol has no model of its own to load or set: every call gets the "
                "harness's parameters as its checkpoint file, which step 0's checks judge"
            )
        return None

    def call(self, op, args, keep):
        """Run `COMMAND op args...`; PortUnsupported on exit 3, PortError on any other failure (its
        inputs first kept by keep() -> (kept directory, the arguments pointing there))."""
        argv = self.argv + [op] + [str(a) for a in args]
        try:
            returncode, _, stderr = self.runner(argv)
        except OSError as e:
            raise PortError(f"cannot run `{shlex.join(argv)}`: {e}") from e
        except subprocess.TimeoutExpired:
            raise PortTimeout(
                timeout_message(f"`{shlex.join(argv)}`", port_timeout()) + _kept_note(self.argv + [op], keep)
            ) from None
        if returncode == EXIT_UNSUPPORTED:
            raise PortUnsupported(f"{self.port_name}: {op} unsupported: {_tail(stderr)}")
        if returncode != 0:
            raise PortError(
                f"`{shlex.join(argv)}` {_exit_description(returncode)}: {_tail(stderr)}"
                + _kept_note(self.argv + [op], keep)
            )

    def model(self, config, params, max_B, max_T):
        return CmdModel(self, config, params, max_B, max_T)

    def model_from_checkpoint(self, path, max_B, max_T):
        from reference.formats import read_checkpoint

        config, params = read_checkpoint(path)
        return CmdModel(self, config, params, max_B, max_T)


def run_port(argv):
    """One protocol call -> (returncode, stdout bytes, stderr bytes). The port leads a process group of its
    own, and a call past port_timeout() has the whole group killed (subprocess.TimeoutExpired)."""
    timeout = port_timeout()
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        try:
            process.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # something that left the group still holds the pipes
            pass
        raise
    return process.returncode, stdout, stderr


def _kept_note(argv, keep):
    kept, args = keep()
    return f"; its inputs are kept in {kept}, to rerun it: {shlex.join(argv + [str(a) for a in args])}"


def keep_dir():
    """Where the inputs of failed port calls are kept: LLMC_PORT_KEEP_DIR, default the temporary directory."""
    return Path(os.environ.get("LLMC_PORT_KEEP_DIR") or tempfile.gettempdir())


class _Forward:
    """One forward: its batch, the parameter array it ran on, and what is known of its results.
    speculation: a one-step `train` run from the state this forward saw, (settings, t, state id, reply)."""

    def __init__(self, x, y, params, loss=None, logits=None, grads=None, speculation=None):
        self.x, self.y, self.params = x, y, params
        self.loss, self.logits, self.grads, self.speculation = loss, logits, grads, speculation


class CmdModel:
    """The model-handle interface over protocol calls.

    Every protocol call starts from files, so the handle keeps the state itself: the parameters and AdamW's
    m and v (host arrays, replaced, never changed in place), and a state id that changes with them. Each
    update is one `train` call of one step from that state (with --state S.bin once m and v exist): its
    reply is the new state, so parameters and optimizer state can be read after every update at no cost.
    A forward with targets is a `backward` call (logits, loss and gradients at once), except right after an
    update on the same batch, test_gpt2.c's loop: then it runs the next step's `train` call at once,
    speculatively, taking the loss from its reply, and the update that follows (same settings, t + 1) adopts
    its result. So a training loop costs one call per step. Logits or gradients of such a forward, when
    asked for, are a `forward` / `backward` call at its parameters. Gradients follow llm.c's semantics: each
    backward() adds its forward's gradient, until zero_grad(). Not expressible in the protocol: an update
    whose gradient is not exactly one backward of the current forward (gradient accumulation).
    """

    def __init__(self, port, config, params, max_B, max_T):
        self.port, self.config = port, config
        self.max_B, self.max_T = max_B, max_T
        params = np.asarray(params, np.float32)
        if params.shape != (config.num_parameters,):
            raise ValueError(f"params: expected {config.num_parameters} values for {config}, got {params.shape}")
        self.dir = Path(tempfile.mkdtemp(prefix="llmc-port-"))
        self._remove_dir = weakref.finalize(self, shutil.rmtree, self.dir, True)  # also if close() is forgotten
        self.state_params, self.m, self.v = params.copy(), None, None
        self.state_id = 0  # changes whenever params, m or v do
        self._checkpoint = None  # (the params array written, its file)
        self.fwd = None  # the last forward (_Forward)
        self.terms = []  # the forwards backward() was called on since zero_grad
        self.last_update = None  # (x, y, settings, t) of the update that made this state

    # -------------------------------------------------------------- protocol calls
    def _model_path(self, params):
        if self._checkpoint is None or self._checkpoint[0] is not params:
            path = self.dir / "model.bin"
            write_checkpoint(path, self.config, params)
            self._checkpoint = (params, path)
        return self._checkpoint[1]

    def _call(self, op, params, batch, extra=(), state=None):
        batch_path, out = self.dir / "batch.bin", self.dir / "out.bin"
        write_arrays(batch_path, batch)
        args = ["--model", self._model_path(params), "--batch", batch_path, "--out", out, *extra]
        if state is not None:
            write_arrays(self.dir / "state.bin", state)
            args += ["--state", self.dir / "state.bin"]
        if out.exists():
            out.unlink()
        self.port.call(op, args, lambda: self._keep(args))
        if not out.exists():
            raise PortError(
                f"`{op}` of {self.port.port_name} wrote no {out}"
                + _kept_note(self.port.argv + [op], lambda: self._keep(args))
            )
        B, T = batch["x"].shape
        steps = int(extra[1]) if op == "train" else 0
        sizes = {"B": B, "T": T, "Vp": self.config.padded_vocab_size, "P": self.config.num_parameters, "N": steps}
        try:
            return read_reply(out, op, sizes)
        except PortError as e:
            raise PortError(f"{e}" + _kept_note(self.port.argv + [op], lambda: self._keep(args))) from e

    def _keep(self, args):
        """Copy (hard-link where possible) the call's input files to a directory that outlives this handle
        -> (that directory, args pointing into it)."""
        kept = keep_dir() / f"llmc-port-failed-{uuid.uuid4().hex[:8]}"
        kept.mkdir(parents=True)
        moved = []
        for arg in args:
            if isinstance(arg, Path) and arg.parent == self.dir:
                target = kept / arg.name
                if arg.exists() and arg.name != "out.bin":
                    try:
                        os.link(arg, target)
                    except OSError:
                        shutil.copyfile(arg, target)
                moved.append(target)
            else:
                moved.append(arg)
        return kept, moved

    def _backward_call(self, x, y, params):
        reply = self._call("backward", params, {"x": x, "y": y})
        return float(reply["loss"]), reply["logits"], reply["grads"]

    def _forward_call(self, x, params):
        return self._call("forward", params, {"x": x})["logits"]

    def _train_call(self, x, y, settings, t):
        """One `train` step from the current state -> its reply (losses, grad_norms, params, m, v)."""
        extra = [
            "--steps",
            1,
            "--first-step",
            t,
            "--learning-rate",
            repr(settings.learning_rate),
            "--beta1",
            repr(settings.beta1),
            "--beta2",
            repr(settings.beta2),
            "--eps",
            repr(settings.eps),
            "--weight-decay",
            repr(settings.weight_decay),
            "--decay-all",
            int(bool(settings.decay_all)),
            "--grad-clip",
            repr(settings.grad_clip),
        ]
        state = None if self.m is None else {"m": self.m, "v": self.v}
        return self._call("train", self.state_params, {"x": x, "y": y}, extra, state)

    def _set_state(self, params=None, m=None, v=None):
        if params is not None:
            self.state_params = params
        if m is not None:
            self.m, self.v = m, v
        self.state_id += 1

    # -------------------------------------------------------------- the interface
    def forward(self, inputs, targets=None):
        x = self._tokens(inputs, "inputs")
        y = None if targets is None else self._tokens(targets, "targets")
        if y is not None and x.shape != y.shape:
            raise ValueError(f"targets: shape {y.shape} differs from inputs {x.shape}")
        f = self.fwd
        if f is not None and f.params is self.state_params and _same(f.x, x) and _same(f.y, y):
            return f.loss  # the same forward again: nothing new to ask
        if y is None:
            self.fwd = _Forward(x, None, self.state_params, logits=self._forward_call(x, self.state_params))
        elif self.last_update is not None and _same(self.last_update[0], x) and _same(self.last_update[1], y):
            _, _, settings, t = self.last_update  # test_gpt2.c's loop: the next step, at once
            reply = self._train_call(x, y, settings, t + 1)
            self.fwd = _Forward(
                x,
                y,
                self.state_params,
                loss=float(reply["losses"][0]),
                speculation=(settings, t + 1, self.state_id, reply),
            )
        else:
            self.fwd = _Forward(x, y, self.state_params, *self._backward_call(x, y, self.state_params))
        return self.fwd.loss

    def _tokens(self, values, name):
        values = np.asarray(values)
        if values.ndim != 2:
            raise ValueError(f"{name}: expected shape (B, T), got {values.shape}")
        B, T = values.shape
        if not (0 < B <= self.max_B and 0 < T <= self.max_T):
            raise ValueError(f"{name}: B={B}, T={T} exceed the model's max_B={self.max_B}, max_T={self.max_T}")
        if values.min() < 0 or values.max() >= self.config.vocab_size:
            raise ValueError(
                f"{name}: token ids must lie in [0, {self.config.vocab_size}), got [{values.min()}, {values.max()}]"
            )
        return np.ascontiguousarray(values, np.int32)

    def logits(self):
        f = self.fwd
        if f is None:
            raise RuntimeError("logits: no forward yet")
        if f.logits is None:
            f.logits = self._forward_call(f.x, f.params)
        return f.logits.copy()

    def zero_grad(self):
        self.terms = []

    def backward(self):
        f = self.fwd
        if f is None or f.y is None:
            raise RuntimeError("backward needs a forward with targets first")
        self.terms.append(f)

    def grads(self):
        total = None
        for f in self.terms:
            if f.grads is None:
                _, logits, f.grads = self._backward_call(f.x, f.y, f.params)
                f.logits = logits if f.logits is None else f.logits
            total = f.grads.copy() if total is None else total + f.grads
        return np.zeros(self.config.num_parameters, np.float32) if total is None else total

    def params(self):
        return self.state_params.copy()

    def set_params(self, flat):
        flat = np.asarray(flat, np.float32)
        if flat.shape != (self.config.num_parameters,):
            raise ValueError(f"set_params: expected ({self.config.num_parameters},), got {flat.shape}")
        self._set_state(params=flat.copy())
        self.last_update = None

    def update(self, settings, t):
        f = self.fwd
        if not (len(self.terms) == 1 and self.terms[0] is f and f.params is self.state_params):
            raise PortUnsupported(
                "cmd: ports update only right after forward, zero_grad and one backward "
                "on one batch (gradient accumulation is not expressible in the protocol)"
            )
        spec = f.speculation
        if spec is not None and spec[0] == settings and spec[1] == t and spec[2] == self.state_id:
            reply = spec[3]
        else:
            reply = self._train_call(f.x, f.y, settings, t)
        f.speculation = None
        self._set_state(reply["params"], reply["m"], reply["v"])
        self.last_update = (f.x, f.y, settings, t)
        return float(reply["grad_norms"][0])

    def optimizer_state(self):
        if self.m is None:
            zeros = np.zeros(self.config.num_parameters, np.float32)
            return zeros, zeros.copy()
        return self.m.copy(), self.v.copy()

    def set_optimizer_state(self, m, v):
        P = self.config.num_parameters
        self._set_state(m=np.asarray(m, np.float32).reshape(P).copy(), v=np.asarray(v, np.float32).reshape(P).copy())
        self.last_update = None

    def close(self):
        self._remove_dir()


def _same(a, b):
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and np.array_equal(a, b)
