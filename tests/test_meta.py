"""The checks can fail: a backend wrong in exactly one output fails exactly that check, and NaN never passes.

A wrapper around the reference backend perturbs one output (logits, the loss, one gradient tensor, one
of the 10 training losses, one kernel output) beyond its tolerance; every model / kernel check is then
run as usual and the set of failed checks must be exactly the one perturbed.
"""
import math

import numpy as np
import pytest

from backends.reference import ReferenceBackend
from conformance.checks import compare
from conformance.fixture import FIXTURES_DIR, load_fixture
from conformance.kernel_checks import KERNEL_OUTPUTS, KernelShape, kernel_quantity, run_kernel_check
from conformance.model_checks import GRAD_NAMES, TRAIN_STEPS, run_model_checks
from conformance.tolerances import tolerance
from reference.layers import KERNEL_NAMES
from reference.model import PARAM_NAMES, split_params

FIXTURE = "tiny-bytes"


@pytest.fixture(scope="module")
def fixture():
    return load_fixture(FIXTURES_DIR / FIXTURE)


def beyond(quantity, values):
    """A change of one element that breaks the fp32 tolerance of `quantity` for an array like `values`."""
    tol = tolerance(quantity, "fp32")
    norm = float(np.linalg.norm(np.asarray(values, np.float64)))
    return 100 * (tol.max_abs + (tol.rel_norm * norm if math.isfinite(tol.rel_norm) else 0.0))


class PerturbedModel:
    """A reference model handle whose outputs pass through `perturb(what, value, call)`."""

    def __init__(self, model, perturb):
        self.model, self.perturb, self.forward_calls = model, perturb, 0

    def forward(self, inputs, targets=None):
        loss = self.perturb("loss", self.model.forward(inputs, targets), self.forward_calls)
        self.forward_calls += 1
        return loss

    def logits(self):
        return self.perturb("logits", self.model.logits(), None)

    def grads(self):
        return self.perturb("grads", self.model.grads(), None)

    def params(self):
        return self.perturb("params", self.model.params(), None)

    def __getattr__(self, name):      # zero_grad, backward, update, close: unchanged
        return getattr(self.model, name)


class PerturbedBackend(ReferenceBackend):
    name = "perturbed"

    def __init__(self, perturb=None, kernel=None, output=None, before=None, after=None):
        """perturb: for model outputs (see PerturbedModel). kernel, output: the kernel argument named
        `output` goes through before(array) ahead of the call and after(array) after it (in place)."""
        super().__init__()
        self.perturb = perturb or (lambda what, value, call: value)
        if kernel is not None:
            self.kernels = PerturbedKernels(self.kernels, kernel, output, before, after)

    def model(self, config, params, max_B, max_T):
        return PerturbedModel(super().model(config, params, max_B, max_T), self.perturb)


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


# ----------------------------------------------------------------------------- the model checks
def test_unperturbed_passes(fixture):
    assert failed_checks(run_model_checks(PerturbedBackend(), fixture)) == set()


@pytest.mark.parametrize("nan", [False, True], ids=["beyond_tolerance", "nan"])
def test_logits(fixture, nan):
    amount = np.nan if nan else beyond("logits", fixture.logits)
    backend = PerturbedBackend(lambda what, v, call: bump((0, 1, 2), amount)(v) if what == "logits" else v)
    assert failed_checks(run_model_checks(backend, fixture)) == {f"{FIXTURE}/logits"}


def test_loss(fixture):
    amount = beyond("loss", fixture.loss)
    backend = PerturbedBackend(lambda what, v, call: v + amount if what == "loss" and call == 0 else v)
    assert failed_checks(run_model_checks(backend, fixture)) == {f"{FIXTURE}/loss"}


@pytest.mark.parametrize("nan", [False, True], ids=["beyond_tolerance", "nan"])
@pytest.mark.parametrize("grad", GRAD_NAMES)
def test_gradient(fixture, grad, nan):
    pname = PARAM_NAMES[GRAD_NAMES.index(grad)]
    tensor = split_params(fixture.grads, fixture.config)[pname]
    amount = np.nan if nan else beyond(f"grad:{grad}", tensor)

    def perturb(what, value, call):
        if what == "grads":
            # element 0 of the tensor: a query bias for dqkvb, a real (unpadded) row for dwte
            split_params(value, fixture.config)[pname].reshape(-1)[0] += amount
        return value
    assert failed_checks(run_model_checks(PerturbedBackend(perturb), fixture)) == {f"{FIXTURE}/grad/{grad}"}


def test_key_bias_gradient_catches_what_the_whole_tensor_misses(fixture):
    """A key-bias gradient off by far less than dqkvb's own tolerance still fails the key-slice check."""
    dqkvb = split_params(fixture.grads, fixture.config)["qkvb"]
    key_tol, whole_tol = tolerance("grad_key_bias", "fp32"), tolerance("grad:dqkvb", "fp32")
    norm = float(np.linalg.norm(dqkvb.astype(np.float64)))
    amount = max(10 * key_tol.rel_norm * norm, 10 * key_tol.max_abs)
    assert amount < whole_tol.max_abs / 2 and amount / norm < whole_tol.rel_norm / 2, "tolerances changed"
    C = fixture.config.channels

    def perturb(what, value, call):
        if what == "grads":
            split_params(value, fixture.config)["qkvb"][0, C] += amount      # layer 0, first key bias
        return value
    assert failed_checks(run_model_checks(PerturbedBackend(perturb), fixture)) == {f"{FIXTURE}/grad/dqkvb[key]"}


@pytest.mark.parametrize("what", ["params", "grads"])
def test_wte_padding(fixture, what):
    V = fixture.config.vocab_size

    def perturb(kind, value, call):
        if kind == what:
            split_params(value, fixture.config)["wte"][V, 0] = 1e-30     # tiny, but not zero
        return value
    assert failed_checks(run_model_checks(PerturbedBackend(perturb), fixture)) == {f"{FIXTURE}/wte_padding/{what}"}


def test_logits_padding(fixture):
    V = fixture.config.vocab_size
    backend = PerturbedBackend(lambda what, v, call: bump((0, 0, V), 1e-30)(v) if what == "logits" else v)
    assert failed_checks(run_model_checks(backend, fixture)) == {f"{FIXTURE}/logits_padding"}


@pytest.mark.parametrize("step", range(TRAIN_STEPS))
def test_train_loss(fixture, step):
    amount = beyond("losses10", fixture.expected_losses[step])
    # forward call 0 is step 0's checks; the training loop's step k is call k + 1
    backend = PerturbedBackend(lambda what, v, call: v + amount if what == "loss" and call == step + 1 else v)
    assert failed_checks(run_model_checks(backend, fixture)) == {f"{FIXTURE}/train_loss/{step}"}


# ----------------------------------------------------------------------------- the kernel checks
SHAPE = KernelShape(B=2, T=5, C=12, NH=3, OC=7, V=10, Vp=16, bias=True)
KERNEL_CASES = [(k, o) for k in KERNEL_NAMES for o in KERNEL_OUTPUTS[k]]


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
    def overwrite(array):        # what `=` instead of `+=` amounts to: the pre-filled gradient is lost
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
    assert not compare("meta", "none", np.ones(4), got, ("logits", "fp32")).passed     # a broken oracle either


def test_not_a_number_fails():
    result = compare("meta", "none", None, 5.0, ("loss", "fp32"))
    assert not result.passed and "not an array of numbers" in result.detail


def test_shape_mismatch_fails():
    result = compare("meta", "none", np.ones((2, 3)), np.ones((3, 2)), ("logits", "fp32"))
    assert not result.passed and "shape" in result.detail


def test_zero_slice_is_judged_against_its_scale():
    noise = np.full(4, 1e-12)
    assert not compare("meta", "none", noise, np.zeros(4), ("grad_key_bias", "fp32")).passed     # relative to 0: inf
    assert compare("meta", "none", noise, np.zeros(4), ("grad_key_bias", "fp32"), scale=1.0).passed
