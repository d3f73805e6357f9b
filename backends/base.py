"""The one interface every implementation is judged through (the design sketch: two levels).

- model level: ``backend.model(config, params, max_B, max_T)`` or ``backend.model_from_checkpoint(path,
  max_B, max_T)`` returns a model handle (ModelHandle below).
- kernel level: ``backend.kernels`` has llm.c's layer functions on numpy arrays, llm.c's argument order,
  sizes read off the arrays, outputs written in place, gradients accumulated with += (the list:
  reference.layers.KERNEL_NAMES). A backend without some kernel leaves it out; its tests skip, saying so.

Names (backends/registry.py): reference (numpy fp32), cpu, cuda (strict fp32), cuda-tf32, and the port
plug-ins ``lib:PATH`` and ``cmd:COMMAND`` (PORTING.md).
"""

from __future__ import annotations

from os import PathLike
from typing import Protocol

import numpy as np

from reference.adamw import AdamWSettings
from reference.model import GPT2Config


class BackendUnavailable(Exception):
    """The backend cannot run here; the message says why (shown as the skip reason)."""


class ModelHandle(Protocol):
    """One model of a backend. Flat arrays hold num_parameters float32 values in llm.c's order."""

    config: GPT2Config

    def forward(self, inputs: np.ndarray, targets: np.ndarray | None = None) -> float | None:
        """(B,T) token ids -> the mean loss (None without targets)."""

    def logits(self) -> np.ndarray:
        """(B,T,Vp) float32 logits of the last forward."""

    def zero_grad(self) -> None: ...

    def backward(self) -> None:
        """Accumulates the last forward's gradients (it needs targets) into the parameter gradients."""

    def grads(self) -> np.ndarray: ...

    def params(self) -> np.ndarray: ...

    def set_params(self, flat: np.ndarray) -> None: ...

    def update(self, settings: AdamWSettings, t: int) -> float:
        """One AdamW step t (1-based) -> the global gradient norm before clipping."""

    def optimizer_state(self) -> tuple[np.ndarray, np.ndarray]:
        """AdamW's (m, v); zeros before the first update."""

    def set_optimizer_state(self, m: np.ndarray, v: np.ndarray) -> None: ...

    def save_checkpoint(self, path: str | PathLike, dtype: str = "fp32") -> None:
        """The parameters as an llm.c checkpoint (fp32: version 3; bf16: version 5), written atomically.
        Optional: a backend without it lacks the attribute."""

    def close(self) -> None: ...


class Backend:
    name = "?"
    precision = "fp32"  # the tolerance class its results are judged by (conformance/tolerances.py)
    deterministic = False  # declared bit-reproducible: the rerun checks fail on a difference (else report it)
    kernels: object | None = None  # an object with the KERNEL_NAMES methods it has
    description = ""  # library / device / build, for reports

    def model(self, config: GPT2Config, params: np.ndarray | None, max_B: int, max_T: int) -> ModelHandle:
        raise NotImplementedError

    def model_from_checkpoint(self, path: str | PathLike, max_B: int, max_T: int) -> ModelHandle:
        raise NotImplementedError

    data_parallel = False  # whether its models can join a data-parallel group (dist_join); see native.py

    def dist_unique_id(self) -> bytes:
        """The id a data-parallel group's ranks join with, made on rank 0."""
        raise NotImplementedError

    def has_kernel(self, name: str) -> bool:
        return self.kernels is not None and hasattr(self.kernels, name)

    def missing_kernel_reason(self, name: str) -> str | None:
        """Why kernel `name` cannot be checked (the skip reason), or None when the backend has it."""
        return None if self.has_kernel(name) else f"backend {self.name} has no kernel {name}"

    def unsupported(self, feature: str) -> str | None:
        """Why a model-level feature the checks exercise is not the backend's own to judge (the skip reason),
        or None. Features: "accumulate" (gradients summed over two backwards), "model_config" (the model
        reports its own configuration and parameter count, as llmc_model_config does), "from_checkpoint"
        and "set_params" (the backend's own loading and setting of parameters), "save_checkpoint" (it writes
        llm.c's checkpoint files itself, as llmc_save_checkpoint does)."""
        return None
