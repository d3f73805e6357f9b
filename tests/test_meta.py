"""The checks can fail: a backend wrong in exactly one output fails exactly that check, NaN never passes,
and every output a port returns is judged by some check.

- A wrapper around the reference backend perturbs one output of one model (logits, the loss, one gradient
  tensor, one training loss, a gradient norm, the parameters or AdamW state after an update, one kernel
  output) beyond its tolerance; the checks of that model's segment are run as usual and the set of
  failed checks must be exactly the one perturbed (and its rerun comparison, where the first run's value
  is the perturbed one).
- Coverage, mechanically: every array of every reply of the command-line protocol (backends.protocol.
  REPLIES) and every value a lib: port's llmc.h functions hand back (their non-const float and struct
  pointers and counts, read off the header; the kernels' outputs) is perturbed in a wrapper port, an
  in-process cmd: port or a C shim library generated from llmc.h; the whole suite must then fail, naming
  the check conformance.model_checks.JUDGED_BY gives for it. An output added later without a check that
  judges it fails test_every_output_is_judged.
"""

import copy
import dataclasses
import math
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from backends.ports import CmdBackend, port_backend
from backends.protocol import REPLIES, read_arrays, write_arrays
from backends.reference import ReferenceBackend
from conformance.checks import compare
from conformance.fixture import FIXTURES_DIR, load_fixture
from conformance.kernel_checks import KERNEL_OUTPUTS, KernelShape, kernel_quantity, run_kernel_check
from conformance.model_checks import CHECK_NAMES, GRAD_NAMES, JUDGED_BY, TRAIN_STEPS, run_model
from conformance.tolerances import TOLERANCES, tolerance
from native.binding import HEADER, library_path, read_cdef
from reference.formats import write_checkpoint
from reference.layers import KERNEL_NAMES
from reference.model import PARAM_NAMES, split_params
from tools.port_example import run_in_process

FIXTURE = "tiny-bytes"
CC = os.environ.get("CC", "cc")


@pytest.fixture(scope="module")
def fixture():
    return load_fixture(FIXTURES_DIR / FIXTURE)


def beyond(quantity, values):
    """A change of one element that breaks the fp32 tolerance of `quantity` for an array like `values`."""
    tol = tolerance(quantity, "fp32")
    norm = float(np.linalg.norm(np.asarray(values, np.float64)))
    return 100 * (tol.max_abs + (tol.rel_norm * norm if math.isfinite(tol.rel_norm) else 0.0))


class PerturbedModel:
    """A reference model handle whose outputs pass through `perturb(what, value, call)`; call counts the
    calls of that method on this model."""

    def __init__(self, model, perturb):
        self.model, self.perturb, self.calls = model, perturb, {}

    def _out(self, what, value):
        call = self.calls.get(what, 0)
        self.calls[what] = call + 1
        return self.perturb(what, value, call)

    def forward(self, inputs, targets=None):
        return self._out("loss", self.model.forward(inputs, targets))

    def logits(self):
        return self._out("logits", self.model.logits())

    def grads(self):
        return self._out("grads", self.model.grads())

    def params(self):
        return self._out("params", self.model.params())

    def update(self, settings, t):
        return self._out("grad_norm", self.model.update(settings, t))

    def optimizer_state(self):
        m, v = self.model.optimizer_state()
        return self._out("m", m), self._out("v", v)

    def __getattr__(self, name):  # zero_grad, backward, set_params, ..., close: unchanged
        return getattr(self.model, name)


OUTPUT_METHODS = ("forward", "logits", "grads", "params", "update", "optimizer_state")


class RecordingModel:
    """A model handle that records what each output method returned, in call order."""

    def __init__(self, model, log):
        self.model, self.log = model, log

    def __getattr__(self, name):
        function = getattr(self.model, name)
        if name not in OUTPUT_METHODS:
            return function

        def recorded(*args):
            value = function(*args)
            self.log.setdefault(name, []).append(copy.deepcopy(value))
            return value

        return recorded


class ReplayedModel:
    """A model handle answering from a RecordingModel's log: the checks make the same calls whatever a
    perturbation does to the values they see, so the reference need not compute them again."""

    def __init__(self, log):
        self.log, self.calls = log, {}

    def __getattr__(self, name):
        if name not in OUTPUT_METHODS:
            return lambda *args: None

        def replayed(*args):
            call = self.calls.get(name, 0)
            self.calls[name] = call + 1
            return copy.deepcopy(self.log[name][call])

        return replayed


class PerturbedBackend(ReferenceBackend):
    name = "perturbed"

    def __init__(self, perturb=None, kernel=None, output=None, before=None, after=None, replay=None):
        """perturb: for the outputs of the first model made (see PerturbedModel). kernel, output: the
        kernel argument named `output` goes through before(array) ahead of the call and after(array)
        after it (in place). replay: the logs of each model of an earlier run (recorded_reference), to
        answer from instead of computing."""
        super().__init__()
        self.perturb = perturb or (lambda what, value, call: value)
        self.models, self.replay = 0, replay
        if kernel is not None:
            self.kernels = PerturbedKernels(self.kernels, kernel, output, before, after)

    def model(self, config, params, max_B, max_T):
        self.models += 1
        if self.replay is not None:
            model = ReplayedModel(self.replay[self.models - 1])
        else:
            model = super().model(config, params, max_B, max_T)
        return PerturbedModel(model, self.perturb) if self.models == 1 else model


class RecordingBackend(ReferenceBackend):
    def __init__(self):
        super().__init__()
        self.logs = []

    def model(self, config, params, max_B, max_T):
        self.logs.append({})
        return RecordingModel(super().model(config, params, max_B, max_T), self.logs[-1])


def _argument_position(kernel, output):
    """Outputs come first in llm.c's signatures, in KERNEL_OUTPUTS' order, except attention_forward's att,
    which follows the preatt scratch buffer: (out, preatt, att, inp, ...)."""
    return 2 if (kernel, output) == ("attention_forward", "att") else KERNEL_OUTPUTS[kernel].index(output)


class PerturbedKernels:
    def __init__(self, kernels, kernel, output, before, after):
        self.kernels, self.kernel, self.position = kernels, kernel, _argument_position(kernel, output)
        self.before, self.after = before or (lambda a: None), after or (lambda a: None)

    def __getattr__(self, name):
        function = getattr(self.kernels, name)
        if name != self.kernel:
            return function

        def perturbed(*args):
            self.before(args[self.position])
            function(*args)
            self.after(args[self.position])

        return perturbed


def failed_checks(results):
    return {r.check for r in results if not r.passed}


def bump(index, amount):
    def change(array):
        array[index] += amount
        return array

    return change


SEGMENTS_JUDGED = ("train", "rerun")  # step 0 and test_gpt2.c's loop on the first model; a second repeating them


@pytest.fixture(scope="module")
def replay(fixture):
    """What the reference answers to the checks of SEGMENTS_JUDGED, per model, recorded once."""
    backend = RecordingBackend()
    run = run_model(backend, fixture, segments=SEGMENTS_JUDGED)
    assert failed_checks(run.results) == set() and run.not_run == []
    return backend.logs


def failures(perturb, fixture, replay):
    """The failed checks of SEGMENTS_JUDGED when the first model's outputs pass through perturb."""
    run = run_model(PerturbedBackend(perturb, replay=replay), fixture, segments=SEGMENTS_JUDGED)
    assert run.not_run == []
    return failed_checks(run.results)


# ----------------------------------------------------------------------------- the model checks
def test_unperturbed_passes(fixture):
    run = run_model(PerturbedBackend(), fixture)
    assert failed_checks(run.results) == set()
    assert [n.check for n in run.not_run] == [f"{FIXTURE}/abi/model_config"]  # the reference reports none


@pytest.mark.parametrize("nan", [False, True], ids=["beyond_tolerance", "nan"])
def test_logits(fixture, replay, nan):
    amount = np.nan if nan else beyond("logits", fixture.logits)

    def perturb(what, v, call):
        return bump((0, 1, 2), amount)(v) if what == "logits" else v

    assert failures(perturb, fixture, replay) == {f"{FIXTURE}/logits", f"{FIXTURE}/rerun/logits"}


def test_loss(fixture, replay):
    amount = beyond("loss", fixture.loss)

    def perturb(what, v, call):
        return v + amount if what == "loss" and call == 0 else v

    assert failures(perturb, fixture, replay) == {f"{FIXTURE}/loss", f"{FIXTURE}/rerun/loss"}


@pytest.mark.parametrize("nan", [False, True], ids=["beyond_tolerance", "nan"])
@pytest.mark.parametrize("grad", GRAD_NAMES)
def test_gradient(fixture, replay, grad, nan):
    pname = PARAM_NAMES[GRAD_NAMES.index(grad)]
    tensor = split_params(fixture.grads, fixture.config)[pname]
    amount = np.nan if nan else beyond(f"grad:{grad}", tensor)

    def perturb(what, value, call):
        if what == "grads":
            # element 0 of the tensor: a query bias for dqkvb, a real (unpadded) row for dwte
            split_params(value, fixture.config)[pname].reshape(-1)[0] += amount
        return value

    assert failures(perturb, fixture, replay) == {f"{FIXTURE}/grad/{grad}", f"{FIXTURE}/rerun/grads"}


def test_key_bias_gradient_catches_what_the_whole_tensor_misses(fixture, replay):
    """A key-bias gradient off by far less than dqkvb's own tolerance still fails the key-slice check."""
    dqkvb = split_params(fixture.grads, fixture.config)["qkvb"]
    key_tol, whole_tol = tolerance("grad_key_bias", "fp32"), tolerance("grad:dqkvb", "fp32")
    norm = float(np.linalg.norm(dqkvb.astype(np.float64)))
    amount = max(10 * key_tol.rel_norm * norm, 10 * key_tol.max_abs)
    assert amount < whole_tol.max_abs / 2 and amount / norm < whole_tol.rel_norm / 2, "tolerances changed"
    C = fixture.config.channels

    def perturb(what, value, call):
        if what == "grads":
            split_params(value, fixture.config)["qkvb"][0, C] += amount  # layer 0, first key bias
        return value

    assert failures(perturb, fixture, replay) == {f"{FIXTURE}/grad/dqkvb[key]", f"{FIXTURE}/rerun/grads"}


@pytest.mark.parametrize("what", ["params", "grads"])
def test_wte_padding(fixture, replay, what):
    V = fixture.config.vocab_size

    def perturb(kind, value, call):
        if kind == what and call == 0:
            split_params(value, fixture.config)["wte"][V, 0] = 1e-30  # tiny, but not zero
        return value

    want = {f"{FIXTURE}/wte_padding/{what}"} | ({f"{FIXTURE}/rerun/grads"} if what == "grads" else set())
    assert failures(perturb, fixture, replay) == want


def test_logits_padding(fixture, replay):
    V = fixture.config.vocab_size

    def perturb(what, v, call):
        return bump((0, 0, V), 1e-30)(v) if what == "logits" else v

    assert failures(perturb, fixture, replay) == {f"{FIXTURE}/logits_padding", f"{FIXTURE}/rerun/logits"}


@pytest.mark.parametrize("step", range(TRAIN_STEPS + 1))
def test_train_loss(fixture, replay, step):
    want = fixture.trajectory("train", fixture.optimizer).losses[step]
    amount = beyond("losses10", want)
    # forward call 0 is step 0's checks; the training loop's step k is call k + 1

    def perturb(what, v, call):
        return v + amount if what == "loss" and call == step + 1 else v

    assert failures(perturb, fixture, replay) == {f"{FIXTURE}/train_loss/{step}"}


@pytest.mark.parametrize("step", range(TRAIN_STEPS))
@pytest.mark.parametrize("what", ["grad_norm", "params", "m", "v"])
def test_after_update(fixture, replay, what, step):
    """What an update returns or leaves, after one update: wrong there, that check fails (and the rerun's,
    which compares the first update)."""
    trajectory = fixture.trajectory("train", fixture.optimizer)
    want = trajectory.grad_norms[step] if what == "grad_norm" else getattr(trajectory, what)[step]
    amount = beyond(what, want)
    call = step + 1 if what == "params" else step  # params are read at step 0 too

    def perturb(kind, value, n):
        if kind == what and n == call:
            if np.ndim(value):
                value.reshape(-1)[0] += amount
            else:
                value += amount
        return value

    want = {f"{FIXTURE}/{what}/{step}"} | ({f"{FIXTURE}/rerun/{what}"} if step == 0 else set())
    assert failures(perturb, fixture, replay) == want


# ----------------------------------------------------------------------------- every output a port returns
DECLARATION = re.compile(r"([\w\s*]+?)\b(\w+)\s*\(([^()]*)\)\s*;")


def declarations():
    """llmc.h's functions -> {name: (return type, [(argument type, argument name)])}."""
    functions = {}
    for result, name, arguments in DECLARATION.findall(re.sub(r"^\s*#.*$", "", read_cdef(), flags=re.M)):
        params = [
            re.fullmatch(r"(.*?)\s*(\w+)", a.strip()).groups()
            for a in arguments.split(",")
            if a.strip() not in ("", "void")
        ]
        functions[name] = (" ".join(result.split()), params)
    return functions


def lib_outputs():
    """Every value a lib: port's model API hands back: the float arrays and the configuration struct its
    functions fill (non-const pointers), and a count one returns. Not status codes, not strings (reports
    only), not the kernels (their outputs: KERNEL_OUTPUTS)."""
    outputs = []
    for name, (result, params) in declarations().items():
        if name in KERNEL_NAMES:
            continue
        outputs += [(name, arg) for kind, arg in params if re.fullmatch(r"(float|llmc_config)\s*\*", kind)]
        if result == "size_t":
            outputs.append((name, "return"))
    return outputs


PROTOCOL_OUTPUTS = [(op, name) for op, arrays in REPLIES.items() for name in arrays]
LIB_OUTPUTS = lib_outputs()
# the collectives' outputs exist only among ranks: tests/test_data_parallel.py perturbs those
ONE_PROCESS_LIB_OUTPUTS = [(f, a) for f, a in LIB_OUTPUTS if not f.startswith("llmc_dist_")]


def test_every_output_is_judged():
    """Each reply array and each lib: value has a check that judges it; each kernel output is an argument
    of its llmc.h declaration."""
    assert len(PROTOCOL_OUTPUTS) == 9 and len(LIB_OUTPUTS) == 10, (PROTOCOL_OUTPUTS, LIB_OUTPUTS)
    assert set(JUDGED_BY) == set(PROTOCOL_OUTPUTS) | set(LIB_OUTPUTS), "add the check that judges it to JUDGED_BY"
    assert set(JUDGED_BY.values()) <= set(CHECK_NAMES)
    functions = declarations()
    for kernel, outputs in KERNEL_OUTPUTS.items():
        assert set(outputs) <= {arg for _, arg in functions[kernel][1]}, kernel


@pytest.fixture(scope="module")
def small():
    return load_fixture(FIXTURES_DIR / "tiny-gpt2")


def expected_value(fixture, check):
    """What the oracle says `check` should see (to size a perturbation beyond its tolerance)."""
    trajectory = fixture.trajectory("train", fixture.optimizer)
    return {
        "loss": fixture.loss,
        "logits": fixture.logits,
        "abi/reshape/logits_short": fixture.logits,
        "grad/dwte": split_params(fixture.grads, fixture.config)["wte"],
        "train_loss/1": fixture.expected_losses[1],
        "grad_norm/0": trajectory.grad_norms[0],
        "params/0": trajectory.params[0],
        "m/0": trajectory.m[0],
        "v/0": trajectory.v[0],
    }.get(check, 1.0)


QUANTITY = {
    "loss": "loss",
    "logits": "logits",
    "abi/reshape/logits_short": "logits",
    "grad/dwte": "grad:dwte",
    "train_loss/1": "losses10",
    "grad_norm/0": "grad_norm",
    "params/0": "params",
    "m/0": "m",
    "v/0": "v",
    "abi/model_config": "exact",
}


def amount_for(fixture, check):
    return max(beyond(QUANTITY[check], expected_value(fixture, check)), 1.0 if QUANTITY[check] == "exact" else 0.0)


@pytest.mark.parametrize("op,name", PROTOCOL_OUTPUTS, ids=[f"{op}.{name}" for op, name in PROTOCOL_OUTPUTS])
def test_perturbed_reply_fails_its_check(small, op, name):
    """The example port (in-process, on our cpu library where built, else the reference) with element 0 of
    one reply array perturbed in every reply of that call: the whole suite fails, naming the check that
    judges it."""
    check = JUDGED_BY[(op, name)]
    amount = amount_for(small, check)

    def runner(argv):
        code, out, err = run_in_process(argv[1:])
        if code == 0 and argv[3] == op:  # port_example --backend NAME OP ...
            path = argv[argv.index("--out") + 1]
            arrays = read_arrays(path)
            arrays[name].reshape(-1)[0] += np.float32(amount)
            write_arrays(path, arrays)
        return code, out, err

    backend = "cpu" if library_path("cpu").is_file() else "reference"
    port = CmdBackend(f"cmd:perturbed {op}.{name}", f"port_example --backend {backend}", runner=runner)
    run = run_model(port, small)
    assert f"{small.name}/{check}" in failed_checks(run.results), sorted(failed_checks(run.results))


def shim_source():
    """C for a library that forwards every llmc.h function to LLMC_PERTURB_TARGET and then adds the amount
    named in LLMC_PERTURB_FILE ("function argument amount") to element 0 of that output."""
    lines = [
        "#include <dlfcn.h>",
        "#include <stdio.h>",
        "#include <stdlib.h>",
        "#include <string.h>",
        '#include "llmc.h"',
        "",
        "static void* target(void) {",
        "    static void* handle = NULL;",
        '    if (handle == NULL) handle = dlopen(getenv("LLMC_PERTURB_TARGET"), RTLD_NOW | RTLD_LOCAL);',
        '    if (handle == NULL) { fprintf(stderr, "perturbation shim: %s\\n", dlerror()); abort(); }',
        "    return handle;",
        "}",
        "",
        "static double amount(const char* function, const char* argument) {",
        '    const char* path = getenv("LLMC_PERTURB_FILE");',
        '    FILE* f = path ? fopen(path, "r") : NULL;',
        "    char fn[128], arg[128];",
        "    double a = 0.0;",
        '    int hit = f && fscanf(f, "%127s %127s %lf", fn, arg, &a) == 3 && !strcmp(fn, function) &&',
        "              !strcmp(arg, argument);",
        "    if (f) fclose(f);",
        "    return hit ? a : 0.0;",
        "}",
        "",
    ]
    for name, (result, params) in declarations().items():
        signature = ", ".join(f"{kind} {arg}" for kind, arg in params) or "void"
        types = ", ".join(kind for kind, _ in params) or "void"
        call = f"real({', '.join(arg for _, arg in params)})"
        lines += [
            f"{result} {name}({signature}) {{",
            f"    static {result} (*real)({types}) = NULL;",
            f'    if (real == NULL) real = ({result} (*)({types}))dlsym(target(), "{name}");',
            f"    {'' if result == 'void' else f'{result} r = '}{call};",
            "    double a;",
        ]
        for kind, arg in params:
            if re.fullmatch(r"float\s*\*", kind):
                lines.append(f'    if ((a = amount("{name}", "{arg}")) != 0.0 && {arg} != NULL) {arg}[0] += (float)a;')
            if re.fullmatch(r"llmc_config\s*\*", kind):
                lines.append(
                    f'    if ((a = amount("{name}", "{arg}")) != 0.0 && {arg} != NULL) {arg}->max_seq_len += (int)a;'
                )
        if result == "size_t":
            lines.append(f'    if ((a = amount("{name}", "return")) != 0.0) r += (size_t)a;')
        lines += ["    (void)a;", "" if result == "void" else "    return r;", "}", ""]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def perturbing_lib(tmp_path_factory):
    """lib: the shim around our cpu library, in its child process -> (backend, the perturbation file)."""
    target = library_path("cpu")
    if shutil.which(CC) is None or not target.is_file():
        pytest.skip(f"needs a C compiler ({CC}) and {target} (make)")
    out = tmp_path_factory.mktemp("shim")
    source, lib, spec = out / "shim.c", out / "libperturb.so", out / "perturbation.txt"
    source.write_text(shim_source())
    subprocess.run(
        [CC, "-O1", "-fPIC", "-shared", "-I", str(HEADER.parent), str(source), "-o", str(lib), "-ldl"], check=True
    )
    spec.write_text("")
    saved = {k: os.environ.get(k) for k in ("LLMC_PERTURB_TARGET", "LLMC_PERTURB_FILE")}
    os.environ.update(LLMC_PERTURB_TARGET=str(target), LLMC_PERTURB_FILE=str(spec))
    try:
        yield port_backend(f"lib:{lib}"), spec
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_perturbing_lib_unperturbed_passes(perturbing_lib, small):
    backend, spec = perturbing_lib
    spec.write_text("")
    run = run_model(backend, small)
    assert failed_checks(run.results) == set() and run.not_run == []


@pytest.mark.parametrize(
    "function,argument", ONE_PROCESS_LIB_OUTPUTS, ids=[f"{f}.{a}" for f, a in ONE_PROCESS_LIB_OUTPUTS]
)
def test_perturbed_lib_value_fails_its_check(perturbing_lib, small, function, argument):
    """A lib: port (our cpu library behind the shim) with one value it hands back perturbed: the whole suite
    fails, naming the check that judges it."""
    backend, spec = perturbing_lib
    check = JUDGED_BY[(function, argument)]
    spec.write_text(f"{function} {argument} {amount_for(small, check)!r}\n")
    try:
        run = run_model(backend, small)
    finally:
        spec.write_text("")
    assert f"{small.name}/{check}" in failed_checks(run.results), sorted(failed_checks(run.results))


KERNEL_CASES = [(k, o) for k in KERNEL_NAMES for o in KERNEL_OUTPUTS[k]]
SHAPE = KernelShape(B=2, T=5, C=12, NH=3, OC=7, V=10, Vp=16, bias=True)


@pytest.mark.parametrize("name,output", KERNEL_CASES, ids=[f"{k}.{o}" for k, o in KERNEL_CASES])
def test_perturbed_lib_kernel_output_fails_its_check(perturbing_lib, name, output):
    """A kernel output of a lib: port, copied back from its child process, off by 1.0 in element 0 (beyond
    every fp32 kernel tolerance): exactly its check fails."""
    assert all(t.max_abs < 0.01 for (q, p), t in TOLERANCES.items() if q.startswith("kernel:") and p == "fp32")
    backend, spec = perturbing_lib
    spec.write_text(f"{name} {output} 1.0\n")
    try:
        failed = failed_checks(run_kernel_check(backend, name, SHAPE, seed=0))
    finally:
        spec.write_text("")
    assert failed == {f"kernel/{name}/{output}"}


# ----------------------------------------------------------------------------- the kernel checks


def _kernel_failures(backend, name):
    return failed_checks(run_kernel_check(backend, name, SHAPE, seed=0))


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_kernel_unperturbed_passes(name):
    assert _kernel_failures(ReferenceBackend(), name) == set()


@pytest.mark.parametrize("nan", [False, True], ids=["beyond_tolerance", "nan"])
@pytest.mark.parametrize("name,output", KERNEL_CASES, ids=[f"{k}.{o}" for k, o in KERNEL_CASES])
def test_kernel_output(name, output, nan):
    def change(array):
        array.reshape(-1)[0] += np.nan if nan else beyond(kernel_quantity(name, output), array)

    backend = PerturbedBackend(kernel=name, output=output, after=change)
    assert _kernel_failures(backend, name) == {f"kernel/{name}/{output}"}


BACKWARD_CASES = [(k, o) for k, o in KERNEL_CASES if k.endswith("backward")]


@pytest.mark.parametrize("name,output", BACKWARD_CASES, ids=[f"{k}.{o}" for k, o in BACKWARD_CASES])
def test_kernel_that_overwrites_instead_of_accumulating(name, output):
    def overwrite(array):  # what `=` instead of `+=` amounts to: the pre-filled gradient is lost
        array[...] = 0

    backend = PerturbedBackend(kernel=name, output=output, before=overwrite)
    assert _kernel_failures(backend, name) == {f"kernel/{name}/{output}"}


# ----------------------------------------------------------------------------- compare itself
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_never_passes(bad):
    got = np.ones(4, np.float32)
    got[2] = bad
    result = compare("meta", "none", got, np.ones(4), ("logits", "fp32"))
    assert not result.passed and "non-finite" in result.detail
    assert not compare("meta", "none", np.ones(4), got, ("logits", "fp32")).passed  # a broken oracle either


def test_not_a_number_fails():
    result = compare("meta", "none", None, 5.0, ("loss", "fp32"))
    assert not result.passed and "not an array of numbers" in result.detail


def test_shape_mismatch_fails():
    result = compare("meta", "none", np.ones((2, 3)), np.ones((3, 2)), ("logits", "fp32"))
    assert not result.passed and "shape" in result.detail


def test_zero_slice_is_judged_against_its_scale():
    noise = np.full(4, 1e-12)
    assert not compare("meta", "none", noise, np.zeros(4), ("grad_key_bias", "fp32")).passed  # relative to 0: inf
    assert compare("meta", "none", noise, np.zeros(4), ("grad_key_bias", "fp32"), scale=1.0).passed


# ----------------------------------------------------------------------------- the checkpoint a backend writes
def _truncating_bf16(params):
    """bf16 by dropping the low 16 bits (a port's common mistake) instead of rounding to nearest even."""
    return (np.ascontiguousarray(params, np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32)


WRONG_WRITERS = {  # mistake -> (what the model writes instead of its parameters and configuration, the checks failed)
    "a parameter off": (lambda p, c, dtype: (bump(0, np.float32(1e-3))(p), c), {"v3", "v5"}),
    "bf16 truncated": (lambda p, c, dtype: (_truncating_bf16(p) if dtype == "bf16" else p, c), {"v5"}),
    "vocab padded in the header": (
        lambda p, c, dtype: (p, dataclasses.replace(c, vocab_size=c.padded_vocab_size)),
        {"v3", "v5"},
    ),
}


@pytest.mark.parametrize("mistake", WRONG_WRITERS)
def test_a_wrong_checkpoint_writer_fails_its_check(fixture, mistake):
    """A backend whose model writes its checkpoint wrong fails the check of each version it gets wrong."""
    change, failing = WRONG_WRITERS[mistake]

    class WrongWriter(ReferenceBackend):
        def model(self, config, params, max_B, max_T):
            model = super().model(config, params, max_B, max_T)

            def save_checkpoint(path, dtype="fp32"):
                params, config = change(model.gpt.params_memory.astype(np.float32), model.config, dtype)
                write_checkpoint(path, config, params, dtype)

            model.save_checkpoint = save_checkpoint
            return model

    run = run_model(WrongWriter(), fixture, segments=("abi/save_checkpoint",))
    assert failed_checks(run.results) == {f"{fixture.name}/abi/save_checkpoint/{v}" for v in failing}
    passed = run_model(ReferenceBackend(), fixture, segments=("abi/save_checkpoint",))
    assert failed_checks(passed.results) == set() and len(passed.results) == 2
