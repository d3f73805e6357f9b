"""Kernel-level checks: one backend kernel call on random float32 inputs vs reference.layers in float64.

Each kernel gets the same inputs twice: as float32 arrays through the backend's llm.c calling
convention, and upcast to float64 through reference.layers. For a backend of the bf16 class the random
inputs are bf16 values (float32 arrays rounded to bf16), so a bf16 kernel's input rounding is exact and
what is judged is its own arithmetic against float64 on those same inputs. Outputs a kernel must write are filled
with NaN first (an element it forgets fails); gradient outputs are pre-filled with random values at
the scale of the expected gradient (a kernel that overwrites instead of accumulating with += fails).

    results = run_kernel_check(backend, "layernorm_backward", KernelShape(B=2, T=3, C=5), seed=0)
"""

from dataclasses import dataclass

import numpy as np

from conformance.checks import compare
from reference import layers
from reference.formats import bf16_bits_to_fp32, fp32_to_bf16_bits

f32, f64 = np.float32, np.float64


@dataclass(frozen=True)
class KernelShape:
    B: int = 2
    T: int = 3
    C: int = 8
    NH: int = 2  # attention: C = NH * hs
    OC: int = 5  # matmul output channels
    V: int = 7  # vocab; Vp >= V is the padded width of logits and probs
    Vp: int = 9
    bias: bool = True  # matmul with or without a bias


# the random shapes of the kernel tests: inclusive ranges (C = NH * hs, Vp = V + pad)
SHAPE_RANGES = dict(B=(1, 4), T=(1, 17), NH=(1, 4), hs=(1, 12), OC=(1, 40), V=(1, 60), pad=(0, 20))
# always tried: a single token and head; GPT-2-like sizes that are not multiples of 8 (B*T) or 16 (C)
# and GPT-2's head size 64 (the CUDA library's tensor-core attention serves only that head size) with T
# not a multiple of its 64-row tiles
EXAMPLE_SHAPES = (
    KernelShape(B=1, T=1, C=3, NH=1, OC=5, V=7, Vp=9, bias=True),
    KernelShape(B=3, T=21, C=72, NH=6, OC=200, V=100, Vp=128, bias=False),
    KernelShape(B=2, T=80, C=256, NH=4, OC=96, V=300, Vp=384, bias=True),
)


def make_shape(B, T, NH, hs, OC, V, pad, bias):
    return KernelShape(B=B, T=T, C=NH * hs, NH=NH, OC=OC, V=V, Vp=V + pad, bias=bias)


def random_shape(rng):
    """A shape drawn uniformly from SHAPE_RANGES (numpy's rng; the tests draw with hypothesis)."""
    return make_shape(
        **{k: int(rng.integers(lo, hi + 1)) for k, (lo, hi) in SHAPE_RANGES.items()}, bias=bool(rng.integers(0, 2))
    )


# every output a kernel is judged on, in llm.c's argument order
KERNEL_OUTPUTS = {
    "encoder_forward": ("out",),
    "encoder_backward": ("dwte", "dwpe"),
    "layernorm_forward": ("out", "mean", "rstd"),
    "layernorm_backward": ("dinp", "dweight", "dbias"),
    "matmul_forward": ("out",),
    "matmul_backward": ("dinp", "dweight", "dbias"),
    "attention_forward": ("out", "att"),
    "attention_backward": ("dinp",),
    "gelu_forward": ("out",),
    "gelu_backward": ("dinp",),
    "residual_forward": ("out",),
    "residual_backward": ("dinp1", "dinp2"),
    "softmax_forward": ("probs",),
    "crossentropy_forward": ("losses",),
    "crossentropy_softmax_backward": ("dlogits",),
}


def kernel_quantity(name, output):
    """The tolerance table's quantity for one kernel output."""
    return f"kernel:{name}.{output}"


class _Case:
    """Random inputs, fresh output buffers and the verdicts of one kernel call."""

    def __init__(self, backend, name, seed):
        self.backend, self.name = backend, name
        self.rng = np.random.default_rng(seed)
        self.results = []
        self.bf16_inputs = backend.precision == "bf16"

    def normal(self, *shape, scale=1.0, offset=0.0):
        values = (self.rng.standard_normal(shape) * scale + offset).astype(f32)
        return bf16_bits_to_fp32(fp32_to_bf16_bits(values)).reshape(shape) if self.bf16_inputs else values

    def tokens(self, B, T, V):
        return self.rng.integers(0, V, (B, T)).astype(np.int32)

    @staticmethod
    def unwritten(*shape):
        return np.full(shape, np.nan, f32)

    def prefilled(self, delta):
        """A gradient buffer holding random values at the scale of the gradient `delta` that gets added."""
        rms = float(np.sqrt(np.mean(np.square(delta)))) if delta.size else 0.0
        return self.normal(*delta.shape, scale=rms or 1.0)

    def judge(self, output, got, want, scale=None):
        self.results.append(
            compare(
                f"kernel/{self.name}/{output}",
                self.backend.name,
                got,
                want,
                (kernel_quantity(self.name, output), self.backend.precision),
                scale,
            )
        )


def _probs(case, B, T, V, Vp):
    """A softmax distribution over the first V of Vp columns, as float32 (the padding is zero)."""
    logits = case.normal(B, T, Vp, scale=2.0)
    return layers.softmax_forward(logits.astype(f64), V).astype(f32)


# ----------------------------------------------------------------------------- encoder
def _encoder_forward(case, k, s):
    inp = case.tokens(s.B, s.T, s.V)
    wte, wpe = case.normal(s.Vp, s.C), case.normal(s.T + 2, s.C)
    out = case.unwritten(s.B, s.T, s.C)
    k.encoder_forward(out, inp, wte, wpe)
    case.judge("out", out, layers.encoder_forward(inp, wte.astype(f64), wpe.astype(f64)))


def _encoder_backward(case, k, s):
    inp = case.tokens(s.B, s.T, min(s.V, 3))  # few distinct tokens: repeated rows must sum
    dout = case.normal(s.B, s.T, s.C)
    maxT = s.T + 2  # rows of wpe past T must stay as they were
    dwte, dwpe = layers.encoder_backward(dout.astype(f64), inp, (s.Vp, s.C), (maxT, s.C))
    dwte0, dwpe0 = case.prefilled(dwte), case.prefilled(dwpe)
    got_dwte, got_dwpe = dwte0.copy(), dwpe0.copy()
    k.encoder_backward(got_dwte, got_dwpe, dout, inp)
    case.judge("dwte", got_dwte, dwte0 + dwte)
    case.judge("dwpe", got_dwpe, dwpe0 + dwpe)


# ----------------------------------------------------------------------------- layernorm
def _layernorm_forward(case, k, s):
    inp = case.normal(s.B, s.T, s.C, scale=2.0, offset=0.5)
    weight, bias = case.normal(s.C, offset=1.0), case.normal(s.C)
    out, mean, rstd = case.unwritten(s.B, s.T, s.C), case.unwritten(s.B, s.T), case.unwritten(s.B, s.T)
    k.layernorm_forward(out, mean, rstd, inp, weight, bias)
    want = layers.layernorm_forward(inp.astype(f64), weight.astype(f64), bias.astype(f64))
    for output, got, w in zip(("out", "mean", "rstd"), (out, mean, rstd), want, strict=False):
        case.judge(output, got, w)


def _layernorm_backward(case, k, s):
    inp = case.normal(s.B, s.T, s.C, scale=2.0, offset=0.5)
    weight, dout = case.normal(s.C, offset=1.0), case.normal(s.B, s.T, s.C)
    _, mean, rstd = layers.layernorm_forward(inp.astype(f64), weight.astype(f64), np.zeros(s.C))
    mean, rstd = mean.astype(f32), rstd.astype(f32)  # the cache the forward kernel would have left
    want = layers.layernorm_backward(
        dout.astype(f64), inp.astype(f64), weight.astype(f64), mean.astype(f64), rstd.astype(f64)
    )
    before = [case.prefilled(w) for w in want]
    got = [b.copy() for b in before]
    k.layernorm_backward(*got, dout, inp, weight, mean, rstd)
    # dinp removes dnorm's components along 1 and along norm: for small C it is a near-total cancellation
    # (C = 2 leaves only eps's trace), so its rounding is judged against the terms cancelled, not the result
    dnorm = dout.astype(f64) * weight * rstd[..., None]
    dinp_scale = np.sqrt(np.sum(np.square(before[0], dtype=f64)) + np.sum(np.square(dnorm)))
    for output, g, b, w in zip(("dinp", "dweight", "dbias"), got, before, want, strict=False):
        case.judge(output, g, b + w, dinp_scale if output == "dinp" else None)


# ----------------------------------------------------------------------------- matmul
def _matmul_forward(case, k, s):
    inp, weight = case.normal(s.B, s.T, s.C), case.normal(s.OC, s.C)
    bias = case.normal(s.OC) if s.bias else None
    out = case.unwritten(s.B, s.T, s.OC)
    k.matmul_forward(out, inp, weight, bias)
    case.judge(
        "out",
        out,
        layers.matmul_forward(inp.astype(f64), weight.astype(f64), None if bias is None else bias.astype(f64)),
    )


def _matmul_backward(case, k, s):
    inp, weight, dout = case.normal(s.B, s.T, s.C), case.normal(s.OC, s.C), case.normal(s.B, s.T, s.OC)
    dinp, dweight, dbias = layers.matmul_backward(
        dout.astype(f64), inp.astype(f64), weight.astype(f64), has_bias=s.bias
    )
    dinp0, dweight0 = case.prefilled(dinp), case.prefilled(dweight)
    dbias0 = case.prefilled(dbias) if s.bias else None
    got_dinp, got_dweight = dinp0.copy(), dweight0.copy()
    got_dbias = dbias0.copy() if s.bias else None
    k.matmul_backward(got_dinp, got_dweight, got_dbias, dout, inp, weight)
    case.judge("dinp", got_dinp, dinp0 + dinp)
    case.judge("dweight", got_dweight, dweight0 + dweight)
    if s.bias:
        case.judge("dbias", got_dbias, dbias0 + dbias)


# ----------------------------------------------------------------------------- attention
def _attention_forward(case, k, s):
    inp = case.normal(s.B, s.T, 3 * s.C)
    out, att = case.unwritten(s.B, s.T, s.C), case.unwritten(s.B, s.NH, s.T, s.T)
    preatt = case.unwritten(s.B, s.NH, s.T, s.T)  # scratch: llm.c leaves its upper triangle unwritten
    k.attention_forward(out, preatt, att, inp, s.NH)
    want_out, want_att = layers.attention_forward(inp.astype(f64), s.NH)
    case.judge("out", out, want_out)
    case.judge("att", att, want_att)


def _attention_backward(case, k, s):
    inp, dout = case.normal(s.B, s.T, 3 * s.C), case.normal(s.B, s.T, s.C)
    att = layers.attention_forward(inp.astype(f64), s.NH)[1].astype(f32)
    want = layers.attention_backward(dout.astype(f64), inp.astype(f64), att.astype(f64), s.NH)
    before = case.prefilled(want)
    dinp = before.copy()
    # dpreatt and datt are llm.c's scratch gradients: zeroed by zero_grad before every backward
    dpreatt, datt = np.zeros((s.B, s.NH, s.T, s.T), f32), np.zeros((s.B, s.NH, s.T, s.T), f32)
    k.attention_backward(dinp, dpreatt, datt, dout, inp, att, s.NH)
    case.judge("dinp", dinp, before + want)


# ----------------------------------------------------------------------------- gelu
def _gelu_forward(case, k, s):
    inp = case.normal(s.B, s.T, 4 * s.C, scale=3.0)
    out = case.unwritten(*inp.shape)
    k.gelu_forward(out, inp)
    case.judge("out", out, layers.gelu_forward(inp.astype(f64)))


def _gelu_backward(case, k, s):
    inp, dout = case.normal(s.B, s.T, 4 * s.C, scale=3.0), case.normal(s.B, s.T, 4 * s.C)
    want = layers.gelu_backward(dout.astype(f64), inp.astype(f64))
    before = case.prefilled(want)
    dinp = before.copy()
    k.gelu_backward(dinp, inp, dout)
    case.judge("dinp", dinp, before + want)


# ----------------------------------------------------------------------------- residual
def _residual_forward(case, k, s):
    inp1, inp2 = case.normal(s.B, s.T, s.C), case.normal(s.B, s.T, s.C)
    out = case.unwritten(*inp1.shape)
    k.residual_forward(out, inp1, inp2)
    case.judge("out", out, layers.residual_forward(inp1.astype(f64), inp2.astype(f64)))


def _residual_backward(case, k, s):
    dout = case.normal(s.B, s.T, s.C)
    want1, want2 = layers.residual_backward(dout.astype(f64))
    before1, before2 = case.prefilled(want1), case.prefilled(want2)
    dinp1, dinp2 = before1.copy(), before2.copy()
    k.residual_backward(dinp1, dinp2, dout)
    case.judge("dinp1", dinp1, before1 + want1)
    case.judge("dinp2", dinp2, before2 + want2)


# ----------------------------------------------------------------------------- softmax + cross-entropy
def _softmax_forward(case, k, s):
    logits = case.normal(s.B, s.T, s.Vp, scale=3.0)
    probs = case.unwritten(*logits.shape)
    k.softmax_forward(probs, logits, s.V)
    case.judge("probs", probs, layers.softmax_forward(logits.astype(f64), s.V))


def _crossentropy_forward(case, k, s):
    probs, targets = _probs(case, s.B, s.T, s.V, s.Vp), case.tokens(s.B, s.T, s.V)
    losses = case.unwritten(s.B, s.T)
    k.crossentropy_forward(losses, probs, targets)
    case.judge("losses", losses, layers.crossentropy_forward(probs.astype(f64), targets))


def _crossentropy_softmax_backward(case, k, s):
    probs, targets = _probs(case, s.B, s.T, s.V, s.Vp), case.tokens(s.B, s.T, s.V)
    dlosses = case.normal(s.B, s.T, scale=1.0 / (s.B * s.T))
    want = layers.crossentropy_softmax_backward(dlosses.astype(f64), probs.astype(f64), targets, s.V)
    before = case.prefilled(want)
    dlogits = before.copy()
    k.crossentropy_softmax_backward(dlogits, dlosses, probs, targets, s.V)
    case.judge("dlogits", dlogits, before + want)


KERNEL_CHECKS = {
    "encoder_forward": _encoder_forward,
    "encoder_backward": _encoder_backward,
    "layernorm_forward": _layernorm_forward,
    "layernorm_backward": _layernorm_backward,
    "matmul_forward": _matmul_forward,
    "matmul_backward": _matmul_backward,
    "attention_forward": _attention_forward,
    "attention_backward": _attention_backward,
    "gelu_forward": _gelu_forward,
    "gelu_backward": _gelu_backward,
    "residual_forward": _residual_forward,
    "residual_backward": _residual_backward,
    "softmax_forward": _softmax_forward,
    "crossentropy_forward": _crossentropy_forward,
    "crossentropy_softmax_backward": _crossentropy_softmax_backward,
}


def run_kernel_check(backend, name, shape, seed):
    """Run backend.kernels.<name> once on random inputs of `shape` -> one CheckResult per output."""
    case = _Case(backend, name, seed)
    KERNEL_CHECKS[name](case, backend.kernels, shape)
    return case.results
