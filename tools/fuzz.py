"""Fuzz every file reader and libllmc's C ABI: a seeded mutator, every case run in a worker subprocess.

    python -m tools.fuzz --seconds N [--seed S] [--target NAME ...] [--timeout T]
    python -m tools.fuzz --seed S --case TARGET:INDEX        # one case alone: what a report says to run

Targets (--target, repeatable; by default all but the self-tests, taken in turn until the time is up):
  checkpoint-v3, checkpoint-v5  a mutated llm.c model file (fp32, bf16) through reference.formats
                                read_checkpoint AND the C loader (llmc_model_from_checkpoint): both must
                                accept it or both reject it, and when they accept, read the same values
  debug-state, tokens, tokenizer  reference.formats' other readers: FormatError or a result, nothing else
  arrays                        the port protocol's array files (backends.protocol.read_arrays): PortError
                                or a result
  abi-config, abi-forward, abi-update, abi-threads, abi-null
                                random calls of the model API with bad sizes, configs, B and T, token ids,
                                AdamW settings, thread counts and NULL pointers, straight through cffi: each
                                must return the code llmc.h gives for it (predicted here)
  abi-kernels                   the layer kernels through the binding with one argument spoiled (a shape,
                                dtype, layout, token id, NH or V): the binding refuses it, or the call runs
  selftest-crash, selftest-hang cases that crash or hang on purpose, to show the harness reports them

A mutation is a bit flip, random bytes, a truncation, an extension, a header field set to an extreme
value, or NaN / Inf / another extreme float written into the payload; each case applies one to three.
The C library is build/libllmc_cpu.so, or the file LLMC_CPU_LIB names (e.g. the sanitizer build of
`make asan`, with libasan in LD_PRELOAD).

Case INDEX of TARGET under seed S is the same on every machine. The cases run in a worker process that
is restarted after a crash; a crash (the worker dies) or a hang (no answer within --timeout seconds) is
run again alone in a fresh worker, and reported with the command that reproduces it. The summary gives
the cases per target and how many were accepted and rejected.
Exit status: 0 every case passed; 1 a crash, a hang, an unexpected exception, a wrong error code, or the
C loader and the Python reader disagreeing; 2 a usage error.
"""

import argparse
from dataclasses import asdict
import inspect
import json
import math
import os
from pathlib import Path
import random
import selectors
import shlex
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
FILE_TARGETS = ("checkpoint-v3", "checkpoint-v5", "debug-state", "tokens", "tokenizer", "arrays")
ABI_TARGETS = ("abi-config", "abi-forward", "abi-update", "abi-threads", "abi-null", "abi-kernels")
SELFTEST_TARGETS = ("selftest-crash", "selftest-hang")
TARGETS = FILE_TARGETS + ABI_TARGETS
TINY = "L1-NH2-C8-V10-T8"  # Vp 128: a 4 KB checkpoint, microseconds per call
ACCEPTED, REJECTED = "accepted", "rejected"
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class CaseFailure(Exception):
    """A case found a defect: the message says what."""


# ----------------------------------------------------------------------------- mutations
EXTREME_INTS = (0, -1, 1, 2, 3, 5, 7, 8, 255, 256, 2**16, 2**24, 2**30, INT32_MAX, INT32_MIN, INT32_MIN + 1)
EXTREME_FLOATS = (math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, -1.0, 3.4e38, -3.4e38, 1e-45, 1e-38, 65504.0)
# bf16 bit patterns: quiet and signalling NaN, +-Inf, the largest finite, the smallest subnormal, -0
EXTREME_BF16 = (0x7FC0, 0x7F81, 0xFFC0, 0x7F80, 0xFF80, 0x7F7F, 0x0001, 0x8000)


def extreme_int(rng, old=None):
    choices = list(EXTREME_INTS) + [rng.randint(INT32_MIN, INT32_MAX)]
    if old is not None:
        choices += [old + 1, old - 1, old * 2, -old]
    return max(INT32_MIN, min(INT32_MAX, rng.choice(choices)))


def mutate(data, rng, header_ints=256, payload_start=1024, elem=4):
    """1 to 3 mutations of the bytes `data` -> (bytes, description). header_ints: the int32 fields worth
    aiming at; payload_start and elem: where the float payload starts and its element size (4 fp32, 2 bf16,
    0 for a file without one)."""
    data = bytearray(data)
    done = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["bitflip", "bytes", "truncate", "extend", "header", "header", "payload", "payload"])
        if kind == "bitflip" and data:
            bits = [rng.randrange(8 * len(data)) for _ in range(rng.randint(1, 8))]
            for bit in bits:
                data[bit // 8] ^= 1 << (bit % 8)
            done.append(f"bitflip{bits}")
        elif kind == "bytes" and data:
            at = rng.randrange(len(data))
            new = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
            data[at : at + len(new)] = new
            done.append(f"bytes[{at}]={new.hex()}")
        elif kind == "truncate" and data:
            size = rng.choice(
                [
                    0,
                    3,
                    4 * header_ints - 1,
                    4 * header_ints,
                    len(data) - 1,
                    len(data) - elem or 1,
                    rng.randrange(len(data)),
                ]
            )
            size = max(0, min(len(data) - 1, size))
            del data[size:]
            done.append(f"truncate->{size}")
        elif kind == "extend":
            extra = bytes(rng.choice([0, rng.randrange(256)]) for _ in range(rng.choice([1, 2, 4, rng.randint(1, 64)])))
            data += extra
            done.append(f"extend+{len(extra)}")
        elif kind == "header" and len(data) >= 4:
            fields = min(header_ints, len(data) // 4)
            index = rng.randrange(min(fields, 12)) if rng.random() < 0.8 else rng.randrange(fields)
            old = int(np.frombuffer(bytes(data[4 * index : 4 * index + 4]), "<i4")[0])
            value = extreme_int(rng, old)
            data[4 * index : 4 * index + 4] = np.array([value], "<i4").tobytes()
            done.append(f"header[{index}]={value}")
        elif kind == "payload" and elem and len(data) >= payload_start + elem:
            at = payload_start + elem * rng.randrange((len(data) - payload_start) // elem)
            if elem == 4:
                value = rng.choice(EXTREME_FLOATS)
                data[at : at + 4] = np.array([value], "<f4").tobytes()
            else:
                value = rng.choice(EXTREME_BF16)
                data[at : at + 2] = np.array([value], "<u2").tobytes()
            done.append(f"payload[{at}]={value!r}")
    return bytes(data), " ".join(done) or "none"


# ----------------------------------------------------------------------------- the worker's cases
class Worker:
    """Runs cases in this process (the worker): the base files, the C library and the case functions."""

    def __init__(self, workdir):
        from native.binding import library_path, load_library
        from reference import formats
        from reference.model import GPT2Config, init_params

        self.dir = Path(workdir)
        self.config = GPT2Config.from_descriptor(TINY)
        self.params = init_params(self.config, seed=0)
        self.library = load_library(library_path("cpu"))
        self.library.init()
        self.threads = min(os.cpu_count() or 1, 2)
        self.library.set_num_threads(self.threads)
        self.base = {}
        for name, write in self._base_writers(formats).items():
            path = self.dir / f"base-{name}"
            write(path)
            self.base[name] = path.read_bytes()
        self.case_path = self.dir / "case.bin"

    def _base_writers(self, formats):
        from backends.protocol import write_arrays

        rng = np.random.default_rng(0)
        c = self.config
        x = rng.integers(0, c.vocab_size, (1, 4)).astype(np.int32)
        logits = rng.standard_normal((1, 4, c.vocab_size)).astype(np.float32)
        grads = rng.standard_normal(c.num_parameters).astype(np.float32)
        token_bytes = [bytes([65 + i]) * (1 + i % 4) for i in range(20)]
        arrays = {
            "x": np.arange(6, dtype=np.int32).reshape(2, 3),
            "loss": np.float32(1.5),
            "logits": rng.standard_normal((2, 3, 4)).astype(np.float32),
        }
        return {
            "checkpoint-v3": lambda p: formats.write_checkpoint(p, c, self.params, "fp32"),
            "checkpoint-v5": lambda p: formats.write_checkpoint(p, c, self.params, "bf16"),
            "debug-state": lambda p: formats.write_debug_state(p, x, x, logits, 2.5, grads),
            "tokens": lambda p: formats.write_tokens(p, rng.integers(0, 50257, 64)),
            "tokenizer": lambda p: formats.write_tokenizer(p, token_bytes, 19),
            "arrays": lambda p: write_arrays(p, arrays),
        }

    def run(self, target, seed, index):
        """-> {"verdict": accepted | rejected, "failure": message or None, "mutations": ...}."""
        rng = random.Random(f"{seed}/{target}/{index}")
        self.mutations = ""
        try:
            verdict = getattr(self, "case_" + target.replace("-", "_"))(rng)
            failure = None
        except CaseFailure as e:
            verdict, failure = "failed", str(e)
        except Exception as e:  # a defect of this tool, reported as one
            verdict, failure = "failed", f"the fuzz case itself raised {type(e).__name__}: {e}"
        return {"verdict": verdict, "failure": failure, "mutations": self.mutations}

    def _mutated(self, name, rng, **layout):
        data, self.mutations = mutate(self.base[name], rng, **layout)
        self.case_path.write_bytes(data)
        return self.case_path

    def _read(self, reader, expected_error, *args):
        """(accepted, result) or (rejected, the error); any other exception is a CaseFailure."""
        try:
            return ACCEPTED, reader(self.case_path, *args)
        except expected_error as e:
            return REJECTED, e
        except Exception as e:  # any other exception is the finding
            raise CaseFailure(
                f"{reader.__module__}.{reader.__name__} raised {type(e).__name__}, not {expected_error.__name__}: {e}"
            ) from e

    # -- files
    def _checkpoint(self, rng, version):
        from native.binding import LlmcError
        from reference.formats import FormatError, read_checkpoint

        self._mutated(f"checkpoint-v{version}", rng, elem=4 if version == 3 else 2)
        py, py_result = self._read(read_checkpoint, FormatError)
        try:
            model = self.library.model_from_checkpoint(self.case_path, 1, 1)
        except LlmcError as e:
            if e.code not in (self._code("FORMAT"), self._code("FILE")):
                raise CaseFailure(f"the C loader returned {e}: a bad file is LLMC_ERR_FORMAT") from e
            c, c_result = REJECTED, e
        else:
            c, c_result = ACCEPTED, model.params()
            model.close()
        if py != c:
            raise CaseFailure(
                f"the C loader {c} what read_checkpoint {py}: C: {_describe(c_result)}; Python: {_describe(py_result)}"
            )
        if py == ACCEPTED and c_result.view(np.uint32).tolist() != py_result[1].view(np.uint32).tolist():
            raise CaseFailure("the C loader and read_checkpoint read different parameter values")
        return py

    def case_checkpoint_v3(self, rng):
        return self._checkpoint(rng, 3)

    def case_checkpoint_v5(self, rng):
        return self._checkpoint(rng, 5)

    def case_debug_state(self, rng):
        from reference.formats import FormatError, read_debug_state

        self._mutated("debug-state", rng)
        return self._read(read_debug_state, FormatError, self.config)[0]

    def case_tokens(self, rng):
        from reference.formats import FormatError, read_tokens

        self._mutated("tokens", rng, elem=0)
        return self._read(read_tokens, FormatError)[0]

    def case_tokenizer(self, rng):
        from reference.formats import FormatError, read_tokenizer

        self._mutated("tokenizer", rng, elem=0)
        return self._read(read_tokenizer, FormatError)[0]

    def case_arrays(self, rng):
        from backends.protocol import PortError, read_arrays

        self._mutated("arrays", rng, header_ints=3, payload_start=12, elem=4)
        return self._read(read_arrays, PortError)[0]

    # -- the model API through cffi
    def _code(self, name):
        from native.binding import ERROR_CODES

        return ERROR_CODES[f"LLMC_ERR_{name}" if name != "OK" else "LLMC_OK"]

    def _expect(self, call, rc, allowed):
        """rc must be one of the codes named in allowed."""
        codes = {self._code(name): name for name in allowed}
        if rc not in codes:
            from native.binding import ERROR_NAMES

            message = self.library.last_error() if rc else ""
            raise CaseFailure(f"{call} returned {ERROR_NAMES.get(rc, rc)} ({message}), expected {' or '.join(allowed)}")
        return ACCEPTED if rc == self._code("OK") else REJECTED

    def _new_model(self, max_B=2, max_T=8):
        ffi, lib = self.library.ffi, self.library.lib
        c = self.config
        cfg = ffi.new("llmc_config*", asdict(c))  # GPT2Config's fields are llmc_config's, by name
        out = ffi.new("llmc_model**")
        self._expect(
            "llmc_model_from_params(TINY)",
            lib.llmc_model_from_params(cfg, ffi.from_buffer("float[]", self.params), max_B, max_T, out),
            ["OK"],
        )
        return ffi.gc(out[0], lib.llmc_model_free)

    def _train_call(self, model, what):
        """forward with targets and backward on model: both must succeed."""
        ffi, lib = self.library.ffi, self.library.lib
        tokens = ffi.new("int[]", [i % self.config.vocab_size for i in range(16)])
        loss = ffi.new("float*")
        self._expect(f"llmc_forward after {what}", lib.llmc_forward(model, tokens, tokens, 2, 8, loss), ["OK"])
        if not math.isfinite(loss[0]):
            raise CaseFailure(f"llmc_forward after {what}: loss {loss[0]}")
        self._expect(f"llmc_zero_grad after {what}", lib.llmc_zero_grad(model), ["OK"])
        self._expect(f"llmc_backward after {what}", lib.llmc_backward(model), ["OK"])

    def case_abi_config(self, rng):
        ffi, lib = self.library.ffi, self.library.lib
        names = ("max_seq_len", "vocab_size", "padded_vocab_size", "num_layers", "num_heads", "channels")
        small = dict(zip(names, (8, 10, 16, 1, 2, 8), strict=True))
        fields = {name: small[name] if rng.random() < 0.6 else extreme_int(rng, small[name]) for name in names}
        max_B = rng.choice([1, 2, extreme_int(rng)])
        max_T = rng.choice([1, fields["max_seq_len"], extreme_int(rng)])
        self.mutations = f"config {fields} max_B={max_B} max_T={max_T}"
        valid = (
            all(v > 0 for v in fields.values())
            and fields["channels"] % fields["num_heads"] == 0
            and fields["padded_vocab_size"] >= fields["vocab_size"]
        )
        if valid:
            from reference.model import GPT2Config

            n = GPT2Config(**fields).num_parameters
            if n > 1 << 22:
                return self._config_without_params(fields)
            params = np.zeros(n, np.float32)
        else:
            params = np.zeros(1, np.float32)  # refused before C reads any parameter
        out = ffi.new("llmc_model**")
        rc = lib.llmc_model_from_params(
            ffi.new("llmc_config*", fields), ffi.from_buffer("float[]", params), max_B, max_T, out
        )
        if not valid or max_B < 1 or max_T < 1 or max_T > fields["max_seq_len"]:
            allowed = ["ARGUMENT"]
        elif max(fields.values()) <= 1024 and max_B * max_T * 4 * fields["channels"] < 2**31:
            allowed = ["OK", "ALLOC"]  # well within every bound of llmc.h
        else:
            allowed = ["OK", "ARGUMENT", "ALLOC"]
        verdict = self._expect("llmc_model_from_params", rc, allowed)
        if rc == self._code("OK"):
            lib.llmc_model_free(out[0])
        return verdict

    def _config_without_params(self, fields):
        """A valid config too large to hand C its parameters: only NULL params (refused) is tried."""
        ffi, lib = self.library.ffi, self.library.lib
        rc = lib.llmc_model_from_params(ffi.new("llmc_config*", fields), ffi.NULL, 1, 1, ffi.new("llmc_model**"))
        return self._expect("llmc_model_from_params(NULL params)", rc, ["ARGUMENT"])

    def case_abi_forward(self, rng):
        ffi, lib = self.library.ffi, self.library.lib
        V, max_B, max_T = self.config.vocab_size, 2, 8
        model = self._new_model(max_B, max_T)
        logits = ffi.new("float[]", max_B * max_T * self.config.padded_vocab_size)
        self._expect("llmc_get_logits before a forward", lib.llmc_get_logits(model, logits), ["STATE"])
        self._expect("llmc_backward before a forward", lib.llmc_backward(model), ["STATE"])
        steps, trained, verdict = [], False, REJECTED
        for _ in range(rng.randint(1, 4)):
            B = rng.choice([1, 2, rng.choice([0, -1, 3, INT32_MAX, INT32_MIN])])
            T = rng.choice([1, 8, rng.choice([0, -1, 9, INT32_MAX, INT32_MIN])])
            inputs = [rng.randrange(V) for _ in range(max_B * max_T)]
            targets = [rng.randrange(V) for _ in range(max_B * max_T)]
            for tokens in (inputs, targets):
                if rng.random() < 0.3:
                    tokens[rng.randrange(len(tokens))] = rng.choice(
                        [-1, V, self.config.padded_vocab_size, INT32_MAX, INT32_MIN]
                    )
            null_inputs, use_targets = rng.random() < 0.1, rng.random() < 0.7
            steps.append(
                f"forward(B={B}, T={T}{', NULL inputs' if null_inputs else ''}{', targets' if use_targets else ''})"
            )
            self.mutations = " ".join(steps)
            loss = ffi.new("float*")
            rc = lib.llmc_forward(
                model,
                ffi.NULL if null_inputs else ffi.new("int[]", inputs),
                ffi.new("int[]", targets) if use_targets else ffi.NULL,
                B,
                T,
                loss,
            )
            if null_inputs or not (1 <= B <= max_B and 1 <= T <= max_T):
                allowed = ["ARGUMENT"]
            elif any(not 0 <= t < V for t in inputs[: B * T]) or (
                use_targets and any(not 0 <= t < V for t in targets[: B * T])
            ):
                allowed = ["TOKEN"]
            else:
                allowed = ["OK"]
            if self._expect(self.mutations, rc, allowed) == ACCEPTED:
                verdict = ACCEPTED
                if use_targets and not math.isfinite(loss[0]):
                    raise CaseFailure(f"{self.mutations}: loss {loss[0]}")
                trained = trained or use_targets
                self._expect("llmc_get_logits after a forward", lib.llmc_get_logits(model, logits), ["OK"])
        if not trained:
            self._expect(f"{self.mutations}; llmc_backward", lib.llmc_backward(model), ["STATE"])
        return verdict

    def case_abi_update(self, rng):
        ffi, lib = self.library.ffi, self.library.lib
        model = self._new_model()
        self._train_call(model, "a new model")
        names = ("learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip")
        sane = dict(zip(names, (1e-3, 0.9, 0.999, 1e-8, 0.1, 1.0), strict=True))
        settings = {
            name: sane[name]
            if rng.random() < 0.7
            else rng.choice(EXTREME_FLOATS + (0.5, 0.99999994, 1.0000001, rng.uniform(-2, 2)))
            for name in names
        }
        t = rng.choice([1, 2, 1000, rng.choice([0, -1, INT32_MAX, INT32_MIN])])
        null_opt = rng.random() < 0.05
        self.mutations = f"update({settings}, t={t}{', NULL opt' if null_opt else ''})"
        as_float = {name: float(np.float32(value)) for name, value in settings.items()}  # what C sees
        bad = (
            null_opt
            or t < 1
            or not all(math.isfinite(v) for v in as_float.values())
            or not (0 <= as_float["beta1"] < 1 and 0 <= as_float["beta2"] < 1)
            or not as_float["eps"] > 0
        )
        opt = ffi.NULL if null_opt else ffi.new("llmc_adamw*", dict(settings, decay_all=rng.randint(0, 1)))
        before = ffi.new("float[]", len(self.params))
        lib.llmc_get_params(model, before)
        rc = lib.llmc_update(model, opt, t, ffi.new("float*"))
        verdict = self._expect(self.mutations, rc, ["ARGUMENT"] if bad else ["OK"])
        if verdict == REJECTED:
            after = ffi.new("float[]", len(self.params))
            lib.llmc_get_params(model, after)
            if ffi.buffer(after)[:] != ffi.buffer(before)[:]:
                raise CaseFailure(f"{self.mutations}: refused, yet the parameters changed")
        return verdict

    def case_abi_threads(self, rng):
        from native.binding import MAX_THREADS

        lib = self.library.lib
        n = rng.choice(
            [
                -1,
                0,
                1,
                2,
                3,
                8,
                64,
                MAX_THREADS,
                MAX_THREADS + 1,
                100_000,
                2**30,
                INT32_MAX,
                INT32_MIN,
                rng.randint(INT32_MIN, INT32_MAX),
            ]
        )
        self.mutations = f"llmc_set_num_threads({n})"
        try:
            verdict = self._expect(self.mutations, lib.llmc_set_num_threads(n), ["OK"] if n >= 1 else ["ARGUMENT"])
            model = self._new_model()
            self._train_call(model, self.mutations)
            self._expect(
                f"llmc_update after {self.mutations}",
                lib.llmc_update(
                    model,
                    self.library.ffi.new(
                        "llmc_adamw*", dict(learning_rate=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, grad_clip=1.0)
                    ),
                    1,
                    self.library.ffi.new("float*"),
                ),
                ["OK"],
            )
            try:
                self.library.set_num_threads(n)
                binding_refused = False
            except ValueError:
                binding_refused = True
            if binding_refused != (not 1 <= n <= MAX_THREADS):
                raise CaseFailure(f"the binding's set_num_threads({n}) {'refused' if binding_refused else 'took'} it")
            return verdict
        finally:
            lib.llmc_set_num_threads(self.threads)

    def case_abi_null(self, rng):
        ffi, lib = self.library.ffi, self.library.lib
        model = self._new_model()
        n = len(self.params)
        buf, tokens = ffi.new("float[]", n), ffi.new("int[]", 16)
        c = self.config
        cfg = ffi.new("llmc_config*", asdict(c))  # GPT2Config's fields are llmc_config's, by name
        opt = ffi.new("llmc_adamw*", dict(learning_rate=1e-3, beta1=0.9, beta2=0.999, eps=1e-8))
        path = os.fsencode(self.dir / "base-checkpoint-v3")
        N, out = ffi.NULL, ffi.new("llmc_model**")
        calls = {
            "from_checkpoint(NULL path)": lambda: lib.llmc_model_from_checkpoint(N, 1, 1, out),
            "from_checkpoint(NULL out)": lambda: lib.llmc_model_from_checkpoint(path, 1, 1, N),
            "from_params(NULL config)": lambda: lib.llmc_model_from_params(N, buf, 1, 1, out),
            "from_params(NULL params)": lambda: lib.llmc_model_from_params(cfg, N, 1, 1, out),
            "from_params(NULL out)": lambda: lib.llmc_model_from_params(cfg, buf, 1, 1, N),
            "model_config(NULL model)": lambda: lib.llmc_model_config(N, ffi.new("llmc_config*")),
            "model_config(NULL out)": lambda: lib.llmc_model_config(model, N),
            "forward(NULL model)": lambda: lib.llmc_forward(N, tokens, tokens, 1, 1, N),
            "forward(NULL inputs)": lambda: lib.llmc_forward(model, N, tokens, 1, 1, N),
            "zero_grad(NULL)": lambda: lib.llmc_zero_grad(N),
            "backward(NULL)": lambda: lib.llmc_backward(N),
            "update(NULL model)": lambda: lib.llmc_update(N, opt, 1, N),
            "update(NULL opt)": lambda: lib.llmc_update(model, N, 1, N),
            "get_params(NULL model)": lambda: lib.llmc_get_params(N, buf),
            "get_params(NULL dst)": lambda: lib.llmc_get_params(model, N),
            "set_params(NULL model)": lambda: lib.llmc_set_params(N, buf),
            "set_params(NULL src)": lambda: lib.llmc_set_params(model, N),
            "get_grads(NULL model)": lambda: lib.llmc_get_grads(N, buf),
            "get_grads(NULL dst)": lambda: lib.llmc_get_grads(model, N),
            "get_logits(NULL model)": lambda: lib.llmc_get_logits(N, buf),
            "get_logits(NULL dst)": lambda: lib.llmc_get_logits(model, N),
            "get_optimizer_state(NULL model)": lambda: lib.llmc_get_optimizer_state(N, buf, buf),
            "get_optimizer_state(NULL m)": lambda: lib.llmc_get_optimizer_state(model, N, buf),
            "get_optimizer_state(NULL v)": lambda: lib.llmc_get_optimizer_state(model, buf, N),
            "set_optimizer_state(NULL model)": lambda: lib.llmc_set_optimizer_state(N, buf, buf),
            "set_optimizer_state(NULL m)": lambda: lib.llmc_set_optimizer_state(model, N, buf),
            "set_optimizer_state(NULL v)": lambda: lib.llmc_set_optimizer_state(model, buf, N),
        }
        chosen = rng.sample(sorted(calls), rng.randint(1, 6))
        self.mutations = ", ".join(chosen)
        for name in chosen:
            self._expect(f"llmc_{name}", calls[name](), ["ARGUMENT"])
        if lib.llmc_model_num_parameters(N) != 0:
            raise CaseFailure("llmc_model_num_parameters(NULL) is not 0")
        lib.llmc_model_free(N)
        return REJECTED

    def case_abi_kernels(self, rng):
        from native.binding import NativeKernels
        from reference.layers import KERNEL_NAMES

        kernels = NativeKernels(self.library)
        name = rng.choice(KERNEL_NAMES)
        dims = dict(
            B=rng.randint(1, 3), T=rng.randint(1, 5), NH=rng.randint(1, 3), OC=rng.randint(1, 6), V=rng.randint(1, 9)
        )
        dims.update(C=dims["NH"] * rng.randint(1, 4), Vp=dims["V"] + rng.randint(0, 4), M=dims["T"] + rng.randint(0, 2))
        dims["C3"] = 3 * dims["C"]  # attention's qkv width
        args = {arg: _kernel_argument(spec, dims, rng) for arg, spec in KERNEL_ARGS[name].items()}
        self.mutations = f"{name} {dims}"
        if rng.random() < 0.8:
            arg = rng.choice(sorted(args))
            args[arg], how = _spoil(args[arg], KERNEL_ARGS[name][arg], dims, rng)
            self.mutations += f" {arg}: {how}"
        method = getattr(kernels, name)
        ordered = [args[p] for p in inspect.signature(method).parameters]
        try:
            method(*ordered)
        except (TypeError, ValueError):
            return REJECTED
        except Exception as e:  # any other exception is the finding
            raise CaseFailure(f"{name} raised {type(e).__name__}: {e}") from e
        return ACCEPTED

    # -- the harness's own checks
    def case_selftest_crash(self, rng):
        os.kill(os.getpid(), signal.SIGSEGV)

    def case_selftest_hang(self, rng):
        time.sleep(3600)


# The layer kernels' arguments, in the binding's order: a float32 array of these dims, a token array
# "tok:DIMS:LIMIT" (ids below LIMIT), "?" for an optional one, or "int:NAME" for NH / V.
KERNEL_ARGS = {
    "encoder_forward": {"out": "B,T,C", "inp": "tok:B,T:Vp", "wte": "Vp,C", "wpe": "M,C"},
    "encoder_backward": {"dwte": "Vp,C", "dwpe": "M,C", "dout": "B,T,C", "inp": "tok:B,T:Vp"},
    "layernorm_forward": {"out": "B,T,C", "mean": "B,T", "rstd": "B,T", "inp": "B,T,C", "weight": "C", "bias": "C"},
    "layernorm_backward": {
        "dinp": "B,T,C",
        "dweight": "C",
        "dbias": "C",
        "dout": "B,T,C",
        "inp": "B,T,C",
        "weight": "C",
        "mean": "B,T",
        "rstd": "B,T",
    },
    "matmul_forward": {"out": "B,T,OC", "inp": "B,T,C", "weight": "OC,C", "bias": "?OC"},
    "matmul_backward": {
        "dinp": "B,T,C",
        "dweight": "OC,C",
        "dbias": "?OC",
        "dout": "B,T,OC",
        "inp": "B,T,C",
        "weight": "OC,C",
    },
    "attention_forward": {"out": "B,T,C", "preatt": "B,NH,T,T", "att": "B,NH,T,T", "inp": "B,T,C3", "NH": "int:NH"},
    "attention_backward": {
        "dinp": "B,T,C3",
        "dpreatt": "B,NH,T,T",
        "datt": "B,NH,T,T",
        "dout": "B,T,C",
        "inp": "B,T,C3",
        "att": "B,NH,T,T",
        "NH": "int:NH",
    },
    "gelu_forward": {"out": "B,T,C", "inp": "B,T,C"},
    "gelu_backward": {"dinp": "B,T,C", "inp": "B,T,C", "dout": "B,T,C"},
    "residual_forward": {"out": "B,T,C", "inp1": "B,T,C", "inp2": "B,T,C"},
    "residual_backward": {"dinp1": "B,T,C", "dinp2": "B,T,C", "dout": "B,T,C"},
    "softmax_forward": {"probs": "B,T,Vp", "logits": "B,T,Vp", "V": "int:V"},
    "crossentropy_forward": {"losses": "B,T", "probs": "B,T,Vp", "targets": "tok:B,T:Vp"},
    "crossentropy_softmax_backward": {
        "dlogits": "B,T,Vp",
        "dlosses": "B,T",
        "probs": "B,T,Vp",
        "targets": "tok:B,T:V",
        "V": "int:V",
    },
}


def _kernel_argument(spec, dims, rng):
    gen = np.random.default_rng(rng.getrandbits(32))
    if spec.startswith("int:"):
        return dims[spec[4:]]
    if spec.startswith("tok:"):
        _, shape, limit = spec.split(":")
        return gen.integers(0, dims[limit], [dims[d] for d in shape.split(",")]).astype(np.int32)
    if spec.startswith("?"):
        return None if rng.random() < 0.3 else _kernel_argument(spec[1:], dims, rng)
    probs = gen.random([dims[d] for d in spec.split(",")]).astype(np.float32)
    return probs / probs.sum(axis=-1, keepdims=True) if probs.ndim == 3 else probs


def _spoil(value, spec, dims, rng):
    """value made wrong in one way -> (new value, what was done)."""
    if spec.startswith("int:"):
        bad = rng.choice([0, -1, value + 1, dims["C"] + 1, 2**31 - 1, 2.5, None, "2"])
        return bad, f"{bad!r}"
    if value is None:
        value = _kernel_argument(spec[1:], dims, rng)
    how = rng.choice(
        ["dim", "ndim", "dtype", "layout", "readonly", "type", "tokens" if spec.startswith("tok:") else "dim", "empty"]
    )
    if how == "dim":
        axis = rng.randrange(value.ndim)
        shape = list(value.shape)
        shape[axis] = max(0, shape[axis] + rng.choice([-1, 1, 2, 7]))
        return np.resize(value, shape), f"shape {tuple(shape)}"
    if how == "ndim":
        value = value[0] if value.ndim > 1 and rng.random() < 0.5 else value[None]
        return value, f"shape {value.shape}"
    if how == "dtype":
        dtype = rng.choice([np.float64, np.int64, np.int32, np.float16, np.uint16])
        return value.astype(dtype), f"dtype {np.dtype(dtype)}"
    if how == "layout":
        return np.repeat(value, 2, axis=-1)[..., ::2], "a strided view"
    if how == "readonly":
        value = value.copy()
        value.flags.writeable = False
        return value, "read-only"
    if how == "type":
        return value.tolist(), "a list"
    if how == "tokens":
        value = value.copy()
        value.flat[rng.randrange(value.size)] = rng.choice([-1, dims["Vp"], dims["V"], 2**31 - 1, -(2**31)])
        return value, "a token id out of range"
    return np.zeros((0,) + value.shape[1:], value.dtype), "empty"


def _describe(result):
    if isinstance(result, Exception):
        return f"{type(result).__name__}: {result}"
    return "accepted"


def worker_main(workdir):
    """The worker's loop: a case per line "TARGET SEED INDEX" on stdin, a JSON line per case on stdout."""
    worker = Worker(workdir)
    if "asan" not in os.environ.get("LD_PRELOAD", ""):  # the sanitizers reserve terabytes of address space
        import resource

        # 4 GiB above what the worker has mapped now: a huge allocation a case asks for fails
        # (LLMC_ERR_ALLOC) instead of taking the machine's memory
        mapped = next(
            int(line.split()[1]) * 1024
            for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith("VmSize:")
        )
        limit = mapped + (4 << 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        target, seed, index = line.split()
        print(json.dumps(worker.run(target, int(seed), int(index))), flush=True)


# ----------------------------------------------------------------------------- the parent
class WorkerStartError(RuntimeError):
    """The worker process could not even set up (import, write its base files, load the library)."""


class WorkerProcess:
    """A worker subprocess; ask() sends a case and waits for its answer, or reports a crash or hang."""

    def __init__(self, workdir, timeout, stderr_path):
        self.timeout = timeout
        self.stderr_path = stderr_path
        self.stderr = open(stderr_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.fuzz", "--worker", str(workdir)],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            start_new_session=True,
        )
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)
        ready = self._answer(max(timeout, 120))  # imports and the first load of the library
        if not (isinstance(ready, dict) and ready.get("ready")):
            self.close()
            raise WorkerStartError(f"the worker did not start ({self.how_it_ended(ready)}):\n{self.stderr_tail()}")

    def _answer(self, timeout):
        if not self.selector.select(timeout):
            return "hang"
        line = self.proc.stdout.readline()
        if not line:
            return "crash"
        return json.loads(line)

    def ask(self, target, seed, index):
        """-> the worker's answer (a dict), or "crash" / "hang" (the worker is then gone)."""
        try:
            self.proc.stdin.write(f"{target} {seed} {index}\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return self._gone("crash")
        answer = self._answer(self.timeout)
        return self._gone(answer) if isinstance(answer, str) else answer

    def _gone(self, what):
        self.close()
        return what

    def how_it_ended(self, answer):
        rc = self.proc.returncode
        if answer == "hang":
            return f"no answer within {self.timeout:g} s"
        if rc < 0:
            return f"killed by {signal.Signals(-rc).name}"
        return f"exit status {rc}"

    def stderr_tail(self, lines=8):
        if not self.stderr.closed:
            self.stderr.flush()
        text = Path(self.stderr_path).read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def close(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # with anything it started
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.selector.close()
        self.stderr.close()


def reproduce_command(seed, target, index):
    return f"python -m tools.fuzz --seed {seed} --case {target}:{index}"


def run(targets, seconds, seed, timeout, cases=None, out=print):
    """Runs cases until `seconds` pass (or the given (target, index) cases); -> (summary rows, failures)."""
    counts = {t: {"cases": 0, ACCEPTED: 0, REJECTED: 0, "failed": 0} for t in targets}
    failures = []
    with tempfile.TemporaryDirectory(prefix="llmc-fuzz-") as tmp:
        tmp = Path(tmp)
        workdir, solo_dir = tmp / "worker", tmp / "solo"
        workdir.mkdir()
        solo_dir.mkdir()
        worker = None
        deadline = time.monotonic() + seconds
        queue = iter(cases) if cases is not None else _round_robin(targets)
        for target, index in queue:
            if cases is None and time.monotonic() >= deadline:
                break
            if worker is None:
                worker = WorkerProcess(workdir, timeout, tmp / "worker.stderr")
            answer = worker.ask(target, seed, index)
            counts[target]["cases"] += 1
            if isinstance(answer, str):  # crash or hang: the worker is gone; try the case alone
                ended, tail = worker.how_it_ended(answer), worker.stderr_tail()
                worker = None
                solo = WorkerProcess(solo_dir, timeout, tmp / "solo.stderr")
                again = solo.ask(target, seed, index)
                alone = (
                    f"it does again alone ({solo.how_it_ended(again)})"
                    if isinstance(again, str)
                    else "alone it does not (state left by an earlier case in the same worker?)"
                )
                if not isinstance(again, str):
                    solo.close()
                message = f"the worker {'crashed' if answer == 'crash' else 'hung'} ({ended}); {alone}"
                if tail:
                    message += "\n    " + tail.replace("\n", "\n    ")
                answer = {"verdict": "failed", "failure": message, "mutations": ""}
            counts[target][answer["verdict"]] += 1
            if answer["verdict"] == "failed":
                failures.append((target, index, answer))
                out(f"FAILED {target} case {index} (seed {seed}): {answer['failure']}")
                if answer["mutations"]:
                    out(f"    case: {answer['mutations']}")
                out(f"    reproduce: {reproduce_command(seed, target, index)}")
        if worker is not None:
            worker.close()
    return counts, failures


def _round_robin(targets):
    index = 0
    while True:
        for target in targets:
            yield target, index
        index += 1


def format_summary(counts, failures, seed, seconds, library):
    total = sum(c["cases"] for c in counts.values())
    lines = [
        f"tools.fuzz: seed {seed}, {seconds:.1f} s, {total} cases, {len(failures)} failed; C library {library}",
        f"{'target':<16}{'cases':>7}{'accepted':>10}{'rejected':>10}{'failed':>8}",
    ]
    for target, c in counts.items():
        lines.append(f"{target:<16}{c['cases']:>7}{c[ACCEPTED]:>10}{c[REJECTED]:>10}{c['failed']:>8}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.fuzz", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="how long to fuzz (default 60)")
    p.add_argument("--seed", type=int, default=0, help="the seed every case derives from (default 0)")
    p.add_argument(
        "--target",
        action="append",
        choices=TARGETS + SELFTEST_TARGETS,
        metavar="NAME",
        help=f"a target (repeatable; default all of: {', '.join(TARGETS)})",
    )
    p.add_argument("--case", action="append", metavar="TARGET:INDEX", help="run just this case (repeatable)")
    p.add_argument(
        "--timeout", type=float, default=20.0, help="seconds a case may take before it counts as a hang (default 20)"
    )
    p.add_argument("--worker", metavar="DIR", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return 0
    if args.seconds <= 0 or args.timeout <= 0:
        p.error("--seconds and --timeout must be positive")
    cases = None
    targets = args.target or list(TARGETS)
    if args.case:
        cases = []
        for case in args.case:
            target, _, index = case.partition(":")
            if target not in TARGETS + SELFTEST_TARGETS or not index.isdigit():
                p.error(f"--case {case}: expected TARGET:INDEX with TARGET one of {', '.join(TARGETS)}")
            cases.append((target, int(index)))
        targets = list(dict.fromkeys(t for t, _ in cases))
    from native.binding import library_path

    library = library_path("cpu")
    if not library.is_file():
        print(f"tools.fuzz: {library} not found: run make", file=sys.stderr)
        return 2
    start = time.monotonic()
    try:
        counts, failures = run(targets, args.seconds, args.seed, args.timeout, cases)
    except WorkerStartError as e:
        print(f"tools.fuzz: {e}", file=sys.stderr)
        return 1
    print(format_summary(counts, failures, args.seed, time.monotonic() - start, library))
    if failures:
        print(
            "reproduce each failure alone with: "
            + shlex.join(["python", "-m", "tools.fuzz", "--seed", str(args.seed), "--case", "TARGET:INDEX"])
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
