"""GPT-2's layers in numpy, each forward beside its backward, as in llm.c's train_gpt2.c.

Shapes: B batch, T time, C channels, NH heads, hs = C/NH head size, V vocab, Vp padded vocab.
Weights are stored (out, in) as in llm.c, so a linear layer is y = x W^T + b.

Every function computes in the dtype of its inputs (float32 for use, float64 for fixtures) and
returns fresh arrays. Backward functions return gradients; llm.c's accumulate-with-+= convention is
the kernel adapter's business (backends/reference.py), not the math's.
"""

import math

import numpy as np

# llm.c's layer kernels, in train_gpt2.c's order: the kernel level of every backend and of the ABI (llmc.h)
KERNEL_NAMES = (
    "encoder_forward",
    "encoder_backward",
    "layernorm_forward",
    "layernorm_backward",
    "matmul_forward",
    "matmul_backward",
    "attention_forward",
    "attention_backward",
    "gelu_forward",
    "gelu_backward",
    "residual_forward",
    "residual_backward",
    "softmax_forward",
    "crossentropy_forward",
    "crossentropy_softmax_backward",
)
LAYERNORM_EPS = 1e-5
GELU_SCALE = math.sqrt(2.0 / math.pi)


# ----------------------------------------------------------------------------- encoder
def encoder_forward(inp, wte, wpe):
    """inp (B,T) token ids, wte (Vp,C), wpe (maxT,C) -> out (B,T,C) = wte[token] + wpe[position]."""
    T = inp.shape[1]
    return wte[inp] + wpe[:T]


def encoder_backward(dout, inp, wte_shape, wpe_shape):
    """dout (B,T,C) -> dwte (Vp,C), dwpe (maxT,C); a token seen twice gets both contributions."""
    B, T, C = dout.shape
    dwte = np.zeros(wte_shape, dout.dtype)
    for token, row in zip(inp.reshape(-1), dout.reshape(B * T, C), strict=False):  # in order, as np.add.at but faster
        dwte[token] += row
    dwpe = np.zeros(wpe_shape, dout.dtype)
    dwpe[:T] = dout.sum(axis=0)
    return dwte, dwpe


# ----------------------------------------------------------------------------- layernorm
def layernorm_forward(inp, weight, bias, eps=LAYERNORM_EPS):
    """inp (B,T,C) -> out (B,T,C), mean (B,T), rstd (B,T); biased variance, as PyTorch."""
    mean = inp.mean(axis=-1, keepdims=True)
    centered = inp - mean
    var = (centered * centered).mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + inp.dtype.type(eps))
    norm = centered * rstd
    return norm * weight + bias, mean[..., 0], rstd[..., 0]


def layernorm_backward(dout, inp, weight, mean, rstd):
    """-> dinp (B,T,C), dweight (C), dbias (C)."""
    norm = (inp - mean[..., None]) * rstd[..., None]
    dbias = dout.sum(axis=(0, 1))
    dweight = (dout * norm).sum(axis=(0, 1))
    dnorm = dout * weight
    dinp = (dnorm - dnorm.mean(axis=-1, keepdims=True) - norm * (dnorm * norm).mean(axis=-1, keepdims=True)) * rstd[
        ..., None
    ]
    return dinp, dweight, dbias


# ----------------------------------------------------------------------------- matmul
def matmul_forward(inp, weight, bias=None):
    """inp (B,T,C), weight (OC,C), bias (OC) or None -> out (B,T,OC)."""
    # one (B*T,C) x (C,OC) gemm: on a (B,T,C) array numpy's @ runs a separate small gemm per batch row
    out = inp.reshape(-1, inp.shape[-1]) @ weight.T
    if bias is not None:
        out += bias
    return out.reshape(*inp.shape[:-1], weight.shape[0])


def matmul_backward(dout, inp, weight, has_bias=True):
    """dout (B,T,OC) -> dinp (B,T,C), dweight (OC,C), dbias (OC) or None."""
    OC, C = weight.shape
    dout2 = dout.reshape(-1, OC)
    dinp = (dout2 @ weight).reshape(inp.shape)
    dweight = dout2.T @ inp.reshape(-1, C)
    dbias = dout2.sum(axis=0) if has_bias else None
    return dinp, dweight, dbias


# ----------------------------------------------------------------------------- attention
def _split_heads(x, NH):
    """(B,T,C) -> (B,NH,T,hs)"""
    B, T, C = x.shape
    return x.reshape(B, T, NH, C // NH).transpose(0, 2, 1, 3)


def _merge_heads(x):
    """(B,NH,T,hs) -> (B,T,C)"""
    B, NH, T, hs = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, NH * hs)


def attention_forward(inp, NH):
    """inp (B,T,3C) = [q | k | v] -> out (B,T,C), att (B,NH,T,T).

    Causal self-attention with scale 1/sqrt(hs); att holds the softmax probabilities, exactly zero
    above the diagonal (a query never sees a later key)."""
    C = inp.shape[-1] // 3
    q, k, v = (_split_heads(inp[..., i * C : (i + 1) * C], NH) for i in range(3))
    T, hs = q.shape[2], q.shape[3]
    scale = inp.dtype.type(1.0 / math.sqrt(hs))
    preatt = (q @ k.transpose(0, 1, 3, 2)) * scale
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    preatt[..., future] = -np.inf
    preatt -= preatt.max(axis=-1, keepdims=True)
    att = np.exp(preatt)
    att /= att.sum(axis=-1, keepdims=True)
    return _merge_heads(att @ v), att


def attention_backward(dout, inp, att, NH):
    """dout (B,T,C), inp (B,T,3C), att (B,NH,T,T) -> dinp (B,T,3C)."""
    C = inp.shape[-1] // 3
    q, k, v = (_split_heads(inp[..., i * C : (i + 1) * C], NH) for i in range(3))
    scale = inp.dtype.type(1.0 / math.sqrt(q.shape[3]))
    dy = _split_heads(dout, NH)
    datt = dy @ v.transpose(0, 1, 3, 2)
    dv = att.transpose(0, 1, 3, 2) @ dy
    # softmax backward: masked entries have att == 0, so they get no gradient
    dpreatt = att * (datt - (datt * att).sum(axis=-1, keepdims=True)) * scale
    dq = dpreatt @ k
    dk = dpreatt.transpose(0, 1, 3, 2) @ q
    return np.concatenate([_merge_heads(dq), _merge_heads(dk), _merge_heads(dv)], axis=-1)


# ----------------------------------------------------------------------------- gelu (tanh form)
def gelu_forward(inp):
    x = inp
    cube = x.dtype.type(0.044715) * x * x * x
    return x.dtype.type(0.5) * x * (1 + np.tanh(x.dtype.type(GELU_SCALE) * (x + cube)))


def gelu_backward(dout, inp):
    x = inp
    f = x.dtype.type
    tanh_arg = f(GELU_SCALE) * (x + f(0.044715) * x * x * x)
    tanh_out = np.tanh(tanh_arg)
    sech2 = 1 - tanh_out * tanh_out
    local_grad = f(0.5) * (1 + tanh_out) + x * f(0.5) * sech2 * f(GELU_SCALE) * (1 + f(3 * 0.044715) * x * x)
    return local_grad * dout


# ----------------------------------------------------------------------------- residual
def residual_forward(inp1, inp2):
    return inp1 + inp2


def residual_backward(dout):
    """-> dinp1, dinp2: the gradient flows unchanged into both branches."""
    return dout, dout


# ----------------------------------------------------------------------------- softmax + cross-entropy
def softmax_forward(logits, V):
    """logits (B,T,Vp) -> probs (B,T,Vp): softmax over the first V columns, the padding stays zero."""
    real = logits[..., :V]
    probs = np.zeros_like(logits)
    exp = probs[..., :V]  # computed in place: (B,T,Vp) temporaries are the big ones here
    np.subtract(real, real.max(axis=-1, keepdims=True), out=exp)
    np.exp(exp, out=exp)
    exp /= exp.sum(axis=-1, keepdims=True)
    return probs


def crossentropy_forward(probs, targets):
    """probs (B,T,Vp), targets (B,T) -> losses (B,T) = -log p(target)."""
    return -np.log(np.take_along_axis(probs, targets[..., None], axis=-1)[..., 0])


def crossentropy_softmax_backward(dlosses, probs, targets, V):
    """dlosses (B,T) -> dlogits (B,T,Vp) = dloss * (probs - onehot(target)) on the first V columns."""
    dlogits = probs.copy()
    dlogits[..., V:] = 0
    np.put_along_axis(
        dlogits, targets[..., None], np.take_along_axis(dlogits, targets[..., None], axis=-1) - 1, axis=-1
    )
    dlogits *= dlosses[..., None]
    return dlogits
