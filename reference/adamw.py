"""AdamW in the two conventions GPT-2 trainers use, on llm.c's flat parameter arrays.

- llm.c CPU (train_gpt2.c gpt2_update, test_gpt2.c): weight decay on every parameter, no clipping.
- PyTorch / llm.c CUDA: weight decay on the 2-D tensors only (wte, wpe and the four matmul weights;
  per-layer stacks count as 2-D), optional global-norm clipping of the gradient first.

Both: m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  m^ = m/(1-b1^t);  v^ = v/(1-b2^t)
      p -= lr (m^ / (sqrt(v^) + eps) + wd p)
"""

from dataclasses import dataclass
import math

import numpy as np

from reference.model import split_params

MATRIX_PARAMS = ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw")

# llm.c's test_gpt2.c optimizer, the one the 10 expected losses of every fixture use
TEST_GPT2_SETTINGS = dict(
    learning_rate=1e-4, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, decay_all=True, grad_clip=0.0
)


@dataclass
class AdamWSettings:
    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decay_all: bool = True  # True: llm.c CPU; False: PyTorch / llm.c CUDA (2-D tensors only)
    grad_clip: float = 0.0  # global-norm threshold; <= 0: no clipping


def decay_mask(config, dtype=np.float32):
    """Per-parameter weight-decay factor (1 for 2-D tensors, 0 otherwise) as a flat array."""
    mask = np.zeros(config.num_parameters, dtype)
    views = split_params(mask, config)
    for name in MATRIX_PARAMS:
        views[name][...] = 1
    return mask


def global_norm(grads):
    """sqrt(sum g^2), accumulated in float64. A float32 array is widened a chunk at a time (never whole)
    and summed by einsum, not np.dot: BLAS wakes its threads for every call, which on a busy machine
    costs more than the sums themselves."""
    if grads.dtype == np.float64:
        return math.sqrt(float(np.dot(grads, grads)))
    total = 0.0
    wide = np.empty(AdamW.CHUNK, np.float64)
    for lo in range(0, grads.size, AdamW.CHUNK):
        chunk = grads[lo : lo + AdamW.CHUNK]
        x = wide[: chunk.size]
        x[...] = chunk
        total += float(np.einsum("i,i->", x, x))
    return math.sqrt(total)


class AdamW:
    """State m and v are flat arrays like the parameters. step() updates params in place and returns
    the gradient's global norm (before clipping)."""

    CHUNK = 1 << 16  # elements per pass: keeps each temporary in cache, so fp32 d12 streams memory once

    def __init__(self, settings, config, dtype=np.float32):
        self.settings = settings  # may change between steps (a learning-rate schedule)
        self.config = config
        self.m = np.zeros(config.num_parameters, dtype)
        self.v = np.zeros(config.num_parameters, dtype)
        self._decay_mask = None

    def step(self, params, grads, t):
        s = self.settings
        if not s.decay_all and self._decay_mask is None:
            self._decay_mask = decay_mask(self.config, params.dtype)
        decay_factor = None if s.decay_all else self._decay_mask
        f = params.dtype.type
        norm = global_norm(grads)
        grad_scale = s.grad_clip / norm if (s.grad_clip > 0 and norm > s.grad_clip) else 1.0
        b1, b2 = f(s.beta1), f(s.beta2)
        lr, eps, wd = f(s.learning_rate), f(s.eps), f(s.weight_decay)
        bias1, bias2 = f(1.0 - s.beta1**t), f(1.0 - s.beta2**t)
        # every operation writes into these chunk-sized buffers (out=), so a pass allocates nothing
        scaled_buf, tmp_buf, update_buf = (np.empty(self.CHUNK, params.dtype) for _ in range(3))
        for lo in range(0, params.size, self.CHUNK):
            hi = min(lo + self.CHUNK, params.size)
            p, m, v, g = params[lo:hi], self.m[lo:hi], self.v[lo:hi], grads[lo:hi]
            tmp, update = tmp_buf[: hi - lo], update_buf[: hi - lo]
            if grad_scale != 1.0:
                g = np.multiply(g, f(grad_scale), out=scaled_buf[: hi - lo])
            m *= b1  # m = b1 m + (1-b1) g
            m += np.multiply(g, 1 - b1, out=tmp)
            v *= b2  # v = b2 v + (1-b2) g^2
            np.multiply(g, g, out=tmp)
            tmp *= 1 - b2
            v += tmp
            np.divide(v, bias2, out=tmp)  # update = m^ / (sqrt(v^) + eps)
            np.sqrt(tmp, out=tmp)
            tmp += eps
            np.divide(m, bias1, out=update)
            update /= tmp
            np.multiply(p, wd, out=tmp)  # decay = wd p (masked: 2-D tensors only)
            if decay_factor is not None:
                tmp *= decay_factor[lo:hi]
            update += tmp  # p -= lr (update + decay)
            update *= lr
            p -= update
        return norm


# ----------------------------------------------------------------------------- learning-rate schedule
SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class LearningRateSchedule:
    """llm.c's schedulers.h: linear warmup over `warmup` steps, then cosine or linear decay from
    learning_rate to learning_rate * final_lr_frac at step total_steps, or constant."""

    learning_rate: float
    total_steps: int
    warmup: int = 0
    final_lr_frac: float = 1.0
    kind: str = "cosine"

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"LearningRateSchedule: kind must be one of {', '.join(SCHEDULES)}, got {self.kind!r}")

    def at(self, step: int) -> float:
        lr = self.learning_rate
        if step < self.warmup:
            return lr * (step + 1) / self.warmup
        if self.kind == "constant":
            return lr
        min_lr = lr * self.final_lr_frac
        decay_ratio = (step - self.warmup) / max(1, self.total_steps - self.warmup)
        if self.kind == "cosine":
            return min_lr + 0.5 * (1.0 + math.cos(math.pi * decay_ratio)) * (lr - min_lr)
        return lr - decay_ratio * (lr - min_lr)
