"""The expected outputs of llm.c's test_gpt2.c for any model and batch, computed in float64.

test_gpt2.c checks step 0's logits, loss and gradients, then trains 10 steps on the same batch
(forward, zero_grad, backward, AdamW update with t = step+1) and checks each step's loss, the loss
before that step's update. Fixtures store these as float32; float64 keeps the oracle's own rounding
far below every tolerance the suite applies.
"""
from dataclasses import dataclass

import numpy as np

from reference.adamw import TEST_GPT2_SETTINGS, AdamW, AdamWSettings
from reference.model import GPT2


@dataclass
class ExpectedOutputs:
    logits: np.ndarray   # (B,T,V) float64 of step 0, unpadded V
    loss: float          # step 0's mean loss
    grads: np.ndarray    # (num_parameters,) float64, step 0's gradients, llm.c's order
    losses: list         # `steps` floats: the loss of each training step, before its update


def expected_outputs(config, params, x, y, steps=10, settings=TEST_GPT2_SETTINGS):
    """params: flat (float32 as stored in a checkpoint, widened exactly); x, y: (B,T) ids.
    settings: an AdamWSettings or a dict of its fields (default: test_gpt2.c's optimizer)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not isinstance(settings, AdamWSettings):
        settings = AdamWSettings(**settings)
    model = GPT2(config, params, dtype=np.float64)
    optimizer = AdamW(settings, config, np.float64)
    losses = []
    for step in range(steps):
        loss = model.forward(x, y)
        model.zero_grad()
        model.backward()
        if step == 0:
            logits = model.logits[:, :, :config.vocab_size].copy()
            first_loss, grads = float(loss), model.grads_memory.copy()
        losses.append(float(loss))
        optimizer.step(model.params_memory, model.grads_memory, step + 1)
    return ExpectedOutputs(logits, first_loss, grads, losses)
