"""The expected outputs of llm.c's test_gpt2.c for any model and batch, computed in float64.

test_gpt2.c checks step 0's logits, loss and gradients, then trains 10 steps on the same batch
(forward, zero_grad, backward, AdamW update with t = step+1) and checks each step's loss, the loss
before that step's update. Fixtures store these as float32; float64 keeps the oracle's own rounding
far below every tolerance the suite applies.

expected_trajectory records the same loop in full, for the suite's checks after every update: the
parameters, AdamW's m and v, the gradient norm, the loss after the last update too, in either AdamW
convention; for a large model at a fixed sample of positions per tensor (trajectory_index).
"""

from dataclasses import dataclass
import math

import numpy as np

from reference.adamw import TEST_GPT2_SETTINGS, AdamW, AdamWSettings
from reference.model import GPT2


@dataclass
class ExpectedOutputs:
    logits: np.ndarray  # (B,T,V) float64 of step 0, unpadded V
    loss: float  # step 0's mean loss
    grads: np.ndarray  # (num_parameters,) float64, step 0's gradients, llm.c's order
    losses: list  # `steps` floats: the loss of each training step, before its update


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
            logits = model.logits[:, :, : config.vocab_size].copy()
            first_loss, grads = float(loss), model.grads_memory.copy()
        losses.append(float(loss))
        optimizer.step(model.params_memory, model.grads_memory, step + 1)
    return ExpectedOutputs(logits, first_loss, grads, losses)


# ----------------------------------------------------------------------------- the training trajectory
FULL_TRAJECTORY_LIMIT = 1 << 19  # models up to this many parameters are recorded whole, larger ones sampled
SAMPLE_PER_TENSOR = 4096  # flat positions recorded per parameter tensor of a larger model


@dataclass
class Trajectory:
    """test_gpt2.c's loop in float64, with everything an update produces recorded. Rows are steps:
    losses[k] is the loss before update k+1 (losses[steps]: after the last), grad_norms[k] the gradient
    norm update k+1 saw (before clipping), params[k], m[k], v[k] the state after it, at the flat
    positions `index` (None: every parameter), stored as float32 like every expected array of a fixture
    (the rounding, 6e-8 relative, is far below what the checks tolerate)."""

    settings: AdamWSettings
    index: np.ndarray | None
    losses: np.ndarray  # (steps + 1,)
    grad_norms: np.ndarray  # (steps,)
    params: np.ndarray  # (steps, n)
    m: np.ndarray  # (steps, n)
    v: np.ndarray  # (steps, n)


def trajectory_index(config, seed=0):
    """The flat parameter positions a trajectory records: None (all) for a model of at most
    FULL_TRAJECTORY_LIMIT parameters; else, from every tensor, SAMPLE_PER_TENSOR positions drawn
    uniformly without replacement (all of a smaller tensor), so each tensor and each layer is judged."""
    if config.num_parameters <= FULL_TRAJECTORY_LIMIT:
        return None
    rng = np.random.default_rng(seed)
    picks, offset = [], 0
    for shape in config.param_shapes().values():
        size = math.prod(shape)
        chosen = np.arange(size) if size <= SAMPLE_PER_TENSOR else rng.choice(size, SAMPLE_PER_TENSOR, replace=False)
        picks.append(np.sort(chosen).astype(np.int64) + offset)
        offset += size
    return np.concatenate(picks)


def expected_trajectory(config, params, x, y, settings, steps=10, index=None, first_step=None):
    """test_gpt2.c's loop from the fp32 params (widened exactly), in float64, `steps` updates with
    AdamWSettings `settings`, then one more forward -> Trajectory recorded at `index` (None: all).
    first_step: a dict that receives step 0's logits (B,T,V), loss and gradients (the debug state's), so a
    fixture's expected outputs and its trajectory come from one run."""
    model = GPT2(config, params, dtype=np.float64)
    optimizer = AdamW(settings, config, np.float64)
    pick = (lambda a: a.astype(np.float32)) if index is None else (lambda a: a[index].astype(np.float32))
    losses, norms, states = [], [], {"params": [], "m": [], "v": []}
    for step in range(steps):
        losses.append(float(model.forward(x, y)))
        model.zero_grad()
        model.backward()
        if step == 0 and first_step is not None:
            first_step.update(
                logits=model.logits[:, :, : config.vocab_size].copy(), loss=losses[0], grads=model.grads_memory.copy()
            )
        norms.append(optimizer.step(model.params_memory, model.grads_memory, step + 1))
        for name, values in (("params", model.params_memory), ("m", optimizer.m), ("v", optimizer.v)):
            states[name].append(pick(values))
    losses.append(float(model.forward(x, y)))
    return Trajectory(
        settings, index, np.array(losses), np.array(norms), *(np.array(states[name]) for name in ("params", "m", "v"))
    )
