"""GPT-2 in numpy, in llm.c's parameter layout: the oracle every backend is measured against.

The 16 parameter tensors live in one flat array (llm.c's params_memory) in llm.c's order; each name
is a view into it, so a checkpoint's payload, the AdamW state and the gradients are all flat arrays
of num_parameters floats. The dtype (float32 for use, float64 for fixtures) is fixed when the model
is made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import math
import re

import numpy as np
from numpy.typing import DTypeLike

from reference import layers

# llm.c's order (train_gpt2.c ParameterTensors); every per-layer tensor stacks all L layers.
PARAM_NAMES = (
    "wte",
    "wpe",
    "ln1w",
    "ln1b",
    "qkvw",
    "qkvb",
    "attprojw",
    "attprojb",
    "ln2w",
    "ln2b",
    "fcw",
    "fcb",
    "fcprojw",
    "fcprojb",
    "lnfw",
    "lnfb",
)

# llm.c's GPT-2 descriptors (train_gpt2.py / train_gpt2.cu): dN -> (L, NH, C)
DESCRIPTORS = {
    "d6": (6, 6, 384),
    "d12": (12, 12, 768),
    "d24": (24, 16, 1024),
    "d36": (36, 20, 1280),
    "d48": (48, 25, 1600),
}
GPT2_VOCAB = 50257
GPT2_MAX_T = 1024


def pad_vocab(V: int, multiple: int = 128) -> int:
    return (V + multiple - 1) // multiple * multiple


@dataclass(frozen=True)
class GPT2Config:
    max_seq_len: int  # maxT
    vocab_size: int  # V
    padded_vocab_size: int  # Vp
    num_layers: int  # L
    num_heads: int  # NH
    channels: int  # C

    def __post_init__(self):
        for field, value in asdict(self).items():
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"GPT2Config.{field} must be a positive integer, got {value!r}")
        if self.channels % self.num_heads:
            raise ValueError(f"GPT2Config.channels ({self.channels}) must be divisible by num_heads ({self.num_heads})")
        if self.padded_vocab_size < self.vocab_size:
            raise ValueError(
                f"GPT2Config.padded_vocab_size ({self.padded_vocab_size}) is smaller than "
                f"vocab_size ({self.vocab_size})"
            )

    @classmethod
    def from_descriptor(cls, descriptor: str) -> GPT2Config:
        """'d12' (llm.c's GPT-2 shapes) or a custom 'L2-NH4-C64[-V256][-T128]' (V and maxT default to GPT-2's)."""
        if descriptor in DESCRIPTORS:
            L, NH, C = DESCRIPTORS[descriptor]
            return cls(GPT2_MAX_T, GPT2_VOCAB, pad_vocab(GPT2_VOCAB), L, NH, C)
        m = re.fullmatch(r"L(\d+)-NH(\d+)-C(\d+)(?:-V(\d+))?(?:-T(\d+))?", descriptor)
        if not m:
            raise ValueError(
                f"unknown model descriptor {descriptor!r}: use one of {sorted(DESCRIPTORS)} "
                "or L<layers>-NH<heads>-C<channels>[-V<vocab>][-T<max_seq_len>]"
            )
        L, NH, C = int(m[1]), int(m[2]), int(m[3])
        V = int(m[4]) if m[4] else GPT2_VOCAB
        maxT = int(m[5]) if m[5] else GPT2_MAX_T
        return cls(maxT, V, pad_vocab(V), L, NH, C)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """name -> shape, in llm.c's order."""
        Vp, maxT, L, C = self.padded_vocab_size, self.max_seq_len, self.num_layers, self.channels
        return {
            "wte": (Vp, C),
            "wpe": (maxT, C),
            "ln1w": (L, C),
            "ln1b": (L, C),
            "qkvw": (L, 3 * C, C),
            "qkvb": (L, 3 * C),
            "attprojw": (L, C, C),
            "attprojb": (L, C),
            "ln2w": (L, C),
            "ln2b": (L, C),
            "fcw": (L, 4 * C, C),
            "fcb": (L, 4 * C),
            "fcprojw": (L, C, 4 * C),
            "fcprojb": (L, C),
            "lnfw": (C,),
            "lnfb": (C,),
        }

    @property
    def num_parameters(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes().values())

    def flops_per_token(self, T: int) -> int:
        """Training FLOPs per token (forward + backward = 3x forward): 6 per weight of every matmul,
        the lm head over Vp included, plus attention's 6*L*C*T (llm.c's MFU estimate, its T/2 causal saving not
        taken)."""
        L, C = self.num_layers, self.channels
        matmul_weights = L * 12 * C * C + self.padded_vocab_size * C
        return 6 * matmul_weights + 6 * L * C * T


def split_params(flat: np.ndarray, config: GPT2Config) -> dict[str, np.ndarray]:
    """One flat array -> {name: view}, in llm.c's order."""
    views, offset = {}, 0
    for name, shape in config.param_shapes().items():
        size = math.prod(shape)
        views[name] = flat[offset : offset + size].reshape(shape)
        offset += size
    return views


def init_params(config: GPT2Config, seed: int = 42, dtype: DTypeLike = np.float32) -> np.ndarray:
    """llm.c's random init (train_gpt2.py _init_weights): N(0, 0.02) for embeddings and linear weights,
    N(0, 0.02/sqrt(2L)) for the two residual projections, zero biases, layernorm 1 and 0, padded wte rows zero.
    Drawn in float64 from one seeded generator, in PyTorch's module order, then cast."""
    rng = np.random.default_rng(seed)
    flat = np.zeros(config.num_parameters, dtype)
    p = split_params(flat, config)
    std, proj_std = 0.02, 0.02 / math.sqrt(2 * config.num_layers)
    V = config.vocab_size
    p["wte"][:V] = rng.normal(0.0, std, (V, config.channels))
    p["wpe"][:] = rng.normal(0.0, std, p["wpe"].shape)
    for l in range(config.num_layers):
        p["qkvw"][l] = rng.normal(0.0, std, p["qkvw"].shape[1:])
        p["attprojw"][l] = rng.normal(0.0, proj_std, p["attprojw"].shape[1:])
        p["fcw"][l] = rng.normal(0.0, std, p["fcw"].shape[1:])
        p["fcprojw"][l] = rng.normal(0.0, proj_std, p["fcprojw"].shape[1:])
    for name in ("ln1w", "ln2w", "lnfw"):
        p[name][:] = 1.0
    return flat


class GPT2:
    """forward(inputs, targets) -> loss; backward() fills self.grads (llm.c's grads_memory)."""

    def __init__(
        self, config: GPT2Config, params: np.ndarray | None = None, dtype: DTypeLike = np.float32, seed: int = 42
    ) -> None:
        self.config = config
        self.dtype = np.dtype(dtype)
        if params is None:
            params = init_params(config, seed, self.dtype)
        params = np.asarray(params)
        if params.shape != (config.num_parameters,):
            raise ValueError(f"params: expected {config.num_parameters} values for {config}, got shape {params.shape}")
        self.params_memory = params.astype(self.dtype, copy=True)
        self.params = split_params(self.params_memory, config)
        self.grads_memory = np.zeros_like(self.params_memory)
        self.grads = split_params(self.grads_memory, config)
        self.acts = None

    def forward(self, inputs: np.ndarray, targets: np.ndarray | None = None) -> float | None:
        """inputs, targets (B,T) int -> mean loss (None without targets); self.logits is (B,T,Vp)."""
        cfg, p = self.config, self.params
        inputs = np.asarray(inputs)
        B, T = inputs.shape
        if T > cfg.max_seq_len:
            raise ValueError(f"T={T} exceeds the model's max_seq_len={cfg.max_seq_len}")
        if inputs.min() < 0 or inputs.max() >= cfg.vocab_size:
            raise ValueError(
                f"inputs: token ids must lie in [0, {cfg.vocab_size}), got [{inputs.min()}, {inputs.max()}]"
            )
        acts = {"inputs": inputs, "layers": []}
        residual = layers.encoder_forward(inputs, p["wte"], p["wpe"])  # (B,T,C)
        for l in range(cfg.num_layers):
            a = {"residual": residual}
            a["ln1"], a["ln1_mean"], a["ln1_rstd"] = layers.layernorm_forward(residual, p["ln1w"][l], p["ln1b"][l])
            a["qkv"] = layers.matmul_forward(a["ln1"], p["qkvw"][l], p["qkvb"][l])  # (B,T,3C)
            a["atty"], a["att"] = layers.attention_forward(a["qkv"], cfg.num_heads)  # (B,T,C), (B,NH,T,T)
            attproj = layers.matmul_forward(a["atty"], p["attprojw"][l], p["attprojb"][l])
            a["residual2"] = layers.residual_forward(residual, attproj)
            a["ln2"], a["ln2_mean"], a["ln2_rstd"] = layers.layernorm_forward(
                a["residual2"], p["ln2w"][l], p["ln2b"][l]
            )
            a["fch"] = layers.matmul_forward(a["ln2"], p["fcw"][l], p["fcb"][l])  # (B,T,4C)
            a["fch_gelu"] = layers.gelu_forward(a["fch"])
            fcproj = layers.matmul_forward(a["fch_gelu"], p["fcprojw"][l], p["fcprojb"][l])
            residual = layers.residual_forward(a["residual2"], fcproj)  # residual3
            acts["layers"].append(a)
        acts["residual_final"] = residual
        acts["lnf"], acts["lnf_mean"], acts["lnf_rstd"] = layers.layernorm_forward(residual, p["lnfw"], p["lnfb"])
        self.logits = layers.matmul_forward(acts["lnf"], p["wte"])  # (B,T,Vp), lm head tied to wte
        self.acts = acts
        if targets is None:
            acts["targets"] = None
            return None
        targets = np.asarray(targets)
        if targets.shape != inputs.shape:
            raise ValueError(f"targets: shape {targets.shape} differs from inputs {inputs.shape}")
        if targets.min() < 0 or targets.max() >= cfg.vocab_size:
            raise ValueError(
                f"targets: token ids must lie in [0, {cfg.vocab_size}), got [{targets.min()}, {targets.max()}]"
            )
        acts["targets"] = targets
        acts["probs"] = layers.softmax_forward(self.logits, cfg.vocab_size)
        self.losses = layers.crossentropy_forward(acts["probs"], targets)
        self.loss = self.losses.mean(dtype=np.float64)
        return self.loss

    def zero_grad(self) -> None:
        self.grads_memory[:] = 0

    def backward(self) -> None:
        """Accumulates d(mean loss)/d(params) into self.grads, as llm.c's gpt2_backward does."""
        acts = self.acts
        if acts is None or acts["targets"] is None:
            raise RuntimeError("backward needs a forward with targets first")
        cfg, p, g = self.config, self.params, self.grads
        B, T = acts["inputs"].shape
        dlosses = np.full((B, T), 1.0 / (B * T), self.dtype)
        dlogits = layers.crossentropy_softmax_backward(dlosses, acts["probs"], acts["targets"], cfg.vocab_size)
        dlnf, dwte, _ = layers.matmul_backward(dlogits, acts["lnf"], p["wte"], has_bias=False)
        g["wte"] += dwte
        dresidual, dlnfw, dlnfb = layers.layernorm_backward(
            dlnf, acts["residual_final"], p["lnfw"], acts["lnf_mean"], acts["lnf_rstd"]
        )
        g["lnfw"] += dlnfw
        g["lnfb"] += dlnfb
        for l in reversed(range(cfg.num_layers)):
            a = acts["layers"][l]
            # residual3 = residual2 + fcproj: the gradient reaches both unchanged
            dfch_gelu, dw, db = layers.matmul_backward(dresidual, a["fch_gelu"], p["fcprojw"][l])
            g["fcprojw"][l] += dw
            g["fcprojb"][l] += db
            dfch = layers.gelu_backward(dfch_gelu, a["fch"])
            dln2, dw, db = layers.matmul_backward(dfch, a["ln2"], p["fcw"][l])
            g["fcw"][l] += dw
            g["fcb"][l] += db
            dres2, dw, db = layers.layernorm_backward(dln2, a["residual2"], p["ln2w"][l], a["ln2_mean"], a["ln2_rstd"])
            g["ln2w"][l] += dw
            g["ln2b"][l] += db
            dresidual = dresidual + dres2  # d residual2
            # residual2 = residual + attproj
            datty, dw, db = layers.matmul_backward(dresidual, a["atty"], p["attprojw"][l])
            g["attprojw"][l] += dw
            g["attprojb"][l] += db
            dqkv = layers.attention_backward(datty, a["qkv"], a["att"], cfg.num_heads)
            dln1, dw, db = layers.matmul_backward(dqkv, a["ln1"], p["qkvw"][l])
            g["qkvw"][l] += dw
            g["qkvb"][l] += db
            dres1, dw, db = layers.layernorm_backward(dln1, a["residual"], p["ln1w"][l], a["ln1_mean"], a["ln1_rstd"])
            g["ln1w"][l] += dw
            g["ln1b"][l] += db
            dresidual = dresidual + dres1  # d residual (this layer's input)
        dwte, dwpe = layers.encoder_backward(dresidual, acts["inputs"], p["wte"].shape, p["wpe"].shape)
        g["wte"] += dwte
        g["wpe"] += dwpe
