"""Sampling text from a model as llm.c's train_gpt2.c does: its xorshift* generator (random_u32 /
random_f32, seeded 1337) and sample_mult over the softmax of the last position's logits."""

from __future__ import annotations

import numpy as np

from reference import tokenizer

SAMPLER_SEED = 1337  # llm.c's rng_state for generation
MASK64 = (1 << 64) - 1


class Sampler:
    """llm.c's generation RNG (xorshift*, random_u32 / random_f32) and sample_mult; .state is the uint64
    a checkpoint stores."""

    def __init__(self, state: int = SAMPLER_SEED):
        self.state = state

    def random_u32(self) -> int:
        s = self.state
        s ^= s >> 12
        s ^= (s << 25) & MASK64
        s ^= s >> 27
        self.state = s
        return ((s * 0x2545F4914F6CDD1D) & MASK64) >> 32

    def random_f32(self) -> np.float32:
        return np.float32(self.random_u32() >> 8) / np.float32(16777216.0)

    @staticmethod
    def sample_mult(probs: np.ndarray, coin: float) -> int:
        """The first index whose running float32 sum exceeds coin (the last one if rounding leaves none)."""
        cdf = np.cumsum(probs, dtype=np.float32)  # sequential, like llm.c's loop
        return min(int(np.searchsorted(cdf, coin, side="right")), probs.size - 1)


def generate(model, config, T: int, gen_tokens: int, sampler: Sampler) -> list[int]:
    """gen_tokens ids after EOT (token V-1 for a model whose vocabulary is smaller than GPT-2's), each from
    a full forward of the last <= T tokens (no KV cache). model: any backend's model handle (forward(ids),
    logits())."""
    ids = [min(tokenizer.EOT, config.vocab_size - 1)]
    for _ in range(gen_tokens):
        context = np.array([ids[-T:]], dtype=np.int32)
        model.forward(context)
        logits = model.logits()[0, -1, : config.vocab_size].astype(np.float32)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum(dtype=np.float32)
        ids.append(Sampler.sample_mult(probs, sampler.random_f32()))
    return ids[1:]
