"""Proof of the oracle: reference/ is checked against mathematics and an independent implementation.

1. Each layer's backward vs central finite differences, float64, random shapes and values (hypothesis).
2. The whole model's gradient vs finite differences on a tiny config, float64.
3. The reference in float32 vs itself in float64 on random models: the measured errors of an honest
   fp32 implementation, recorded (they are what conformance/tolerances.py's fp32 entries rest on).
4. When PyTorch is importable: logits, loss, all 16 gradients and the 10 training losses vs
   reference/torch_gpt2.py (autograd, float64) on the committed fixtures' weights.
Every comparison goes through conformance.checks.compare and is recorded like any other check.
"""

import math

from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
import pytest

from conformance.checks import compare
from conformance.fixture import COMMITTED_FIXTURES, FIXTURES_DIR, load_fixture
from conformance.model_checks import GRAD_NAMES
from reference import layers
from reference.model import GPT2, PARAM_NAMES, GPT2Config, init_params, split_params
from reference.oracle import expected_outputs

ORACLE = "oracle"  # the backend name of checks on reference/ itself, in float64
FD_STEP = 1e-6  # central differences in float64: truncation ~h^2, rounding ~1e-16/h, both ~1e-10


def central_differences(objective, x, indices=None):
    """d objective / d x[i] for every i in indices (default: all), by (f(x+h) - f(x-h)) / 2h; x is restored."""
    indices = list(np.ndindex(x.shape)) if indices is None else indices
    grad = np.zeros(len(indices))
    for n, i in enumerate(indices):
        old = x[i]
        x[i] = old + FD_STEP
        plus = objective()
        x[i] = old - FD_STEP
        minus = objective()
        x[i] = old
        grad[n] = (plus - minus) / (2 * FD_STEP)
    return grad


# ----------------------------------------------------------------------------- 1. layers vs finite differences
# Each case: (inputs to differentiate, objective() -> float, analytic gradients). The objective is
# sum(R * layer output) for a fixed random R, so the analytic gradients are the backward of dout = R.
def _encoder(rng, B, T, C, NH, V, Vp):
    inp = rng.integers(0, min(V, 3), (B, T))  # repeated tokens: their gradients add up
    x = {"wte": rng.standard_normal((Vp, C)), "wpe": rng.standard_normal((T + 1, C))}
    R = rng.standard_normal((B, T, C))
    objective = lambda: np.sum(R * layers.encoder_forward(inp, x["wte"], x["wpe"]))
    dwte, dwpe = layers.encoder_backward(R, inp, x["wte"].shape, x["wpe"].shape)
    return x, objective, {"wte": dwte, "wpe": dwpe}


def _layernorm(rng, B, T, C, NH, V, Vp):
    x = {"inp": rng.standard_normal((B, T, C)) + 0.5, "weight": rng.standard_normal(C), "bias": rng.standard_normal(C)}
    R = rng.standard_normal((B, T, C))
    objective = lambda: np.sum(R * layers.layernorm_forward(x["inp"], x["weight"], x["bias"])[0])
    _, mean, rstd = layers.layernorm_forward(x["inp"], x["weight"], x["bias"])
    dinp, dweight, dbias = layers.layernorm_backward(R, x["inp"], x["weight"], mean, rstd)
    return x, objective, {"inp": dinp, "weight": dweight, "bias": dbias}


def _matmul(rng, B, T, C, NH, V, Vp):
    OC = V
    x = {"inp": rng.standard_normal((B, T, C)), "weight": rng.standard_normal((OC, C)), "bias": rng.standard_normal(OC)}
    R = rng.standard_normal((B, T, OC))
    objective = lambda: np.sum(R * layers.matmul_forward(x["inp"], x["weight"], x["bias"]))
    dinp, dweight, dbias = layers.matmul_backward(R, x["inp"], x["weight"])
    return x, objective, {"inp": dinp, "weight": dweight, "bias": dbias}


def _attention(rng, B, T, C, NH, V, Vp):
    x = {"inp": rng.standard_normal((B, T, 3 * C))}
    R = rng.standard_normal((B, T, C))
    objective = lambda: np.sum(R * layers.attention_forward(x["inp"], NH)[0])
    att = layers.attention_forward(x["inp"], NH)[1]
    return x, objective, {"inp": layers.attention_backward(R, x["inp"], att, NH)}


def _gelu(rng, B, T, C, NH, V, Vp):
    x = {"inp": 3 * rng.standard_normal((B, T, C))}
    R = rng.standard_normal((B, T, C))
    objective = lambda: np.sum(R * layers.gelu_forward(x["inp"]))
    return x, objective, {"inp": layers.gelu_backward(R, x["inp"])}


def _residual(rng, B, T, C, NH, V, Vp):
    x = {"inp1": rng.standard_normal((B, T, C)), "inp2": rng.standard_normal((B, T, C))}
    R = rng.standard_normal((B, T, C))
    objective = lambda: np.sum(R * layers.residual_forward(x["inp1"], x["inp2"]))
    dinp1, dinp2 = layers.residual_backward(R)
    return x, objective, {"inp1": dinp1, "inp2": dinp2}


def _softmax_crossentropy(rng, B, T, C, NH, V, Vp):
    x = {"logits": 2 * rng.standard_normal((B, T, Vp))}
    targets = rng.integers(0, V, (B, T))
    dlosses = rng.standard_normal((B, T))
    objective = lambda: np.sum(dlosses * layers.crossentropy_forward(layers.softmax_forward(x["logits"], V), targets))
    probs = layers.softmax_forward(x["logits"], V)
    return x, objective, {"logits": layers.crossentropy_softmax_backward(dlosses, probs, targets, V)}


LAYER_CASES = {
    "encoder": _encoder,
    "layernorm": _layernorm,
    "matmul": _matmul,
    "attention": _attention,
    "gelu": _gelu,
    "residual": _residual,
    "softmax_crossentropy": _softmax_crossentropy,
}


@pytest.mark.parametrize("layer", LAYER_CASES)
def test_layer_backward_matches_finite_differences(recorder, layer):
    @settings(max_examples=8)
    @given(
        B=st.integers(1, 2),
        T=st.integers(1, 4),
        NH=st.integers(1, 2),
        hs=st.integers(1, 3),
        V=st.integers(1, 6),
        pad=st.integers(0, 3),
        seed=st.integers(0, 2**32 - 1),
    )
    def check(B, T, NH, hs, V, pad, seed):
        rng = np.random.default_rng(seed)
        x, objective, analytic = LAYER_CASES[layer](rng, B, T, NH * hs, NH, V, V + pad)
        for name, values in x.items():
            numeric = central_differences(objective, values).reshape(values.shape)
            recorder.check(
                compare(
                    f"oracle/finite_differences/{layer}.{name}",
                    ORACLE,
                    analytic[name],
                    numeric,
                    ("finite_difference", "fp64"),
                )
            )

    check()


# ----------------------------------------------------------------------------- 2. the whole model
def test_model_gradient_matches_finite_differences(recorder):
    """Each of the 16 gradients of the float64 GPT2 (2 layers) at 12 random elements (all of a smaller tensor)."""
    config = GPT2Config.from_descriptor("L2-NH2-C8-V11-T8")
    rng = np.random.default_rng(0)
    params = init_params(config, seed=0, dtype=np.float64)
    params += 0.1 * rng.standard_normal(params.size)  # off the init's zero biases and unit layernorms
    split_params(params, config)["wte"][config.vocab_size :] = 0
    x, y = rng.integers(0, config.vocab_size, (2, 5)), rng.integers(0, config.vocab_size, (2, 5))
    model = GPT2(config, params, dtype=np.float64)
    model.forward(x, y)
    model.zero_grad()
    model.backward()
    for pname, dname in zip(PARAM_NAMES, GRAD_NAMES, strict=False):
        tensor = model.params[pname]
        rows = config.vocab_size if pname == "wte" else tensor.shape[0]  # the padded rows of wte: their own check
        population = rows * math.prod(tensor.shape[1:])
        flat = rng.choice(population, size=min(12, population), replace=False)
        indices = [np.unravel_index(int(i), tensor.shape) for i in flat]
        numeric = central_differences(lambda: model.forward(x, y), tensor, indices)
        analytic = np.array([model.grads[pname][i] for i in indices])
        recorder.check(
            compare(
                f"oracle/finite_differences/model.{dname}", ORACLE, analytic, numeric, ("finite_difference", "fp64")
            )
        )


# ----------------------------------------------------------------------------- 3. float32 vs float64
@st.composite
def small_configs(draw):
    NH = draw(st.integers(1, 4))
    V = draw(st.integers(2, 300))
    return GPT2Config(
        max_seq_len=16,
        vocab_size=V,
        padded_vocab_size=V + draw(st.integers(0, 64)),
        num_layers=draw(st.integers(1, 3)),
        num_heads=NH,
        channels=NH * draw(st.integers(4, 16)),
    )


@settings(max_examples=10)
@given(config=small_configs(), B=st.integers(1, 3), T=st.integers(1, 16), seed=st.integers(0, 2**32 - 1))
def test_reference_fp32_agrees_with_fp64(recorder, config, B, T, seed):
    """The reference in float32 on a random model, judged by the fp32 tolerances against itself in float64."""
    rng = np.random.default_rng(seed)
    params = init_params(config, seed=seed % 2**31, dtype=np.float32)
    x, y = rng.integers(0, config.vocab_size, (B, T)), rng.integers(0, config.vocab_size, (B, T))
    models = {}
    for dtype in (np.float32, np.float64):
        model = GPT2(config, params, dtype=dtype)
        loss = model.forward(x, y)
        model.zero_grad()
        model.backward()
        models[dtype] = model, loss
    (m32, loss32), (m64, loss64) = models[np.float32], models[np.float64]
    V = config.vocab_size

    def judge(check, got, want, quantity):
        recorder.check(compare(f"oracle/fp32_vs_fp64/{check}", "reference", got, want, (quantity, "fp32")))

    judge("logits", m32.logits[..., :V], m64.logits[..., :V], "logits")
    judge("loss", loss32, loss64, "loss")
    for pname, dname in zip(PARAM_NAMES, GRAD_NAMES, strict=False):
        judge(f"grad/{dname}", m32.grads[pname], m64.grads[pname], f"grad:{dname}")


# ----------------------------------------------------------------------------- 4. PyTorch autograd
@pytest.mark.parametrize("fixture_name", COMMITTED_FIXTURES)
def test_reference_matches_torch(recorder, fixture_name):
    """reference (float64) vs reference/torch_gpt2.py (PyTorch autograd, float64), same weights and batch."""
    try:
        import torch
    except ImportError:
        pytest.skip("torch not installed (optional extra: pip install torch==2.13.0)")
    from reference import torch_gpt2

    fixture = load_fixture(FIXTURES_DIR / fixture_name)
    config, V = fixture.config, fixture.config.vocab_size

    def judge(check, got, want, quantity):
        recorder.check(compare(f"{fixture_name}/torch_float64/{check}", ORACLE, got, want, (quantity, "fp64")))

    ours = GPT2(config, fixture.params, dtype=np.float64)
    loss = ours.forward(fixture.x, fixture.y)
    ours.zero_grad()
    ours.backward()
    theirs = torch_gpt2.from_flat(config, fixture.params, dtype=torch.float64)
    x, y = torch.from_numpy(fixture.x.astype(np.int64)), torch.from_numpy(fixture.y.astype(np.int64))
    torch_loss = theirs(x, y)
    torch_loss.backward()
    judge("logits", ours.logits[..., :V], theirs.logits.detach().numpy()[..., :V], "torch_crosscheck")
    judge("loss", loss, torch_loss.item(), "torch_crosscheck")
    torch_grads = split_params(torch_gpt2.flat_grads(theirs), config)
    for pname, dname in zip(PARAM_NAMES, GRAD_NAMES, strict=False):
        judge(f"grad/{dname}", ours.grads[pname], torch_grads[pname], "torch_crosscheck")

    # test_gpt2.c's 10 steps in both (each loss before its update)
    expected = expected_outputs(config, fixture.params, fixture.x, fixture.y, settings=fixture.optimizer).losses
    theirs = torch_gpt2.from_flat(config, fixture.params, dtype=torch.float64)
    optimizer = torch_gpt2.AdamW(theirs, fixture.optimizer)
    for step in range(len(expected)):
        optimizer.zero_grad()
        torch_loss = theirs(x, y)
        torch_loss.backward()
        optimizer.step()
        judge(f"train_loss/{step}", torch_loss.item(), expected[step], "torch_crosscheck")
