"""Model-level checks of one backend on one fixture: test_gpt2.c's checks, judged by the tolerance table.

The same function feeds pytest (conformance/test_model.py) and the main job (tools/conform.py):

    results = run_model_checks(backend, fixture)     # -> list[CheckResult], in the order below

Step 0 (one forward with targets, zero_grad, backward, on the fixture's batch):
    <fixture>/logits            the first V of Vp columns, every element, vs the oracle's (B,T,V)
    <fixture>/logits_padding    columns V..Vp exactly zero (the padded wte rows are zero)
    <fixture>/loss
    <fixture>/grad/<dname>      each of the 16 gradients (dwte over its first V rows)
    <fixture>/grad/dqkvb[key]   the key third of dqkvb: zero in exact arithmetic (a shift of every key
                                leaves the softmax unchanged), so its rounding noise is judged against
                                the scale of the whole dqkvb, never relative to itself
    <fixture>/wte_padding/params, <fixture>/wte_padding/grads   rows V..Vp of wte and dwte exactly zero
Then test_gpt2.c's loop, 10 times: forward, zero_grad, backward, AdamW update with t = step+1 and
fixture.optimizer (test_gpt2.c's TEST_GPT2_SETTINGS in every fixture), on the same model handle (no
update has run yet, so it starts from the fixture's parameters):
    <fixture>/train_loss/<step> each step's loss (before its update) vs fixture.expected_losses

A backend that raises part way (a port that does not support training, a crash) does not lose the
checks already made: run_model_checks raises ModelChecksStopped carrying them and the cause.
"""
import numpy as np

from conformance.checks import compare
from reference.model import PARAM_NAMES, split_params

GRAD_NAMES = tuple("d" + name for name in PARAM_NAMES)
TRAIN_STEPS = 10


class ModelChecksStopped(Exception):
    """The backend raised part way: .results are the checks made before, .cause is what it raised."""

    def __init__(self, backend, fixture, results, cause):
        super().__init__(f"{backend} on {fixture}: {type(cause).__name__}: {cause}")
        self.backend, self.fixture, self.results, self.cause = backend, fixture, results, cause


def run_model_checks(backend, fixture):
    """Every model-level check of `backend` on `fixture` (conformance.fixture.Fixture) -> list[CheckResult]."""
    config, name, prec = fixture.config, fixture.name, backend.precision
    results = []

    def judge(check, got, want, quantity, scale=None):
        results.append(compare(f"{name}/{check}", backend.name, got, want, (quantity, prec), scale))

    try:
        _checks(backend.model(config, fixture.params, fixture.B, fixture.T), fixture, judge)
    except Exception as e:
        raise ModelChecksStopped(backend.name, name, results, e) from e
    return results


def _checks(model, fixture, judge):
    config = fixture.config
    V, C = config.vocab_size, config.channels
    try:
        loss = model.forward(fixture.x, fixture.y)
        logits = model.logits()                                   # (B,T,Vp)
        model.zero_grad()
        model.backward()
        params = split_params(model.params(), config)
        grads = split_params(model.grads(), config)
        want = split_params(np.asarray(fixture.grads), config)

        judge("logits", logits[..., :V], fixture.logits, "logits")
        judge("logits_padding", logits[..., V:], np.zeros(logits[..., V:].shape), "padding")
        judge("loss", loss, fixture.loss, "loss")
        for pname, dname in zip(PARAM_NAMES, GRAD_NAMES):
            got, expected = grads[pname], want[pname]
            if pname == "wte":
                got, expected = got[:V], expected[:V]
            judge(f"grad/{dname}", got, expected, f"grad:{dname}")
        key = slice(C, 2 * C)                                     # qkvb rows [C, 2C) are the keys' biases
        judge("grad/dqkvb[key]", grads["qkvb"][:, key], want["qkvb"][:, key], "grad_key_bias",
              scale=np.linalg.norm(want["qkvb"].astype(np.float64)))
        for what, values in (("params", params["wte"][V:]), ("grads", grads["wte"][V:])):
            judge(f"wte_padding/{what}", values, np.zeros(values.shape), "padding")

        for step in range(TRAIN_STEPS):
            loss = model.forward(fixture.x, fixture.y)
            model.zero_grad()
            model.backward()
            model.update(fixture.optimizer, step + 1)
            judge(f"train_loss/{step}", loss, fixture.expected_losses[step], "losses10")
    finally:
        model.close()
