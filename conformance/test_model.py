"""Model-level conformance, per backend x fixture: test_gpt2.c's checks, one test per quantity.

The numbers come from conformance/model_checks.py (run once per backend and fixture, shared with
tools/conform.py); each test records and asserts its own check, so a failure names exactly what is wrong.
"""
import pytest

from conformance.model_checks import GRAD_NAMES, TRAIN_STEPS


def _check(recorder, model_results, llmc_fixture, check):
    recorder.check(model_results[f"{llmc_fixture.name}/{check}"])


def test_logits(recorder, model_results, llmc_fixture):
    _check(recorder, model_results, llmc_fixture, "logits")


def test_logits_padding_zero(recorder, model_results, llmc_fixture):
    _check(recorder, model_results, llmc_fixture, "logits_padding")


def test_loss(recorder, model_results, llmc_fixture):
    _check(recorder, model_results, llmc_fixture, "loss")


@pytest.mark.parametrize("grad", GRAD_NAMES)
def test_gradient(recorder, model_results, llmc_fixture, grad):
    _check(recorder, model_results, llmc_fixture, f"grad/{grad}")


def test_gradient_key_bias_is_noise(recorder, model_results, llmc_fixture):
    _check(recorder, model_results, llmc_fixture, "grad/dqkvb[key]")


@pytest.mark.parametrize("what", ["params", "grads"])
def test_wte_padding_zero(recorder, model_results, llmc_fixture, what):
    _check(recorder, model_results, llmc_fixture, f"wte_padding/{what}")


@pytest.mark.parametrize("step", range(TRAIN_STEPS))
def test_train_loss(recorder, model_results, llmc_fixture, step):
    _check(recorder, model_results, llmc_fixture, f"train_loss/{step}")
