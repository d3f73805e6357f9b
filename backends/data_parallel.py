"""Data parallelism as a backend: "dpN:BASE" (ZeRO-0) and "dpN-zero1:BASE" run BASE as N ranks, one process
per GPU, joined over NCCL (llmc_dist_join), and behave as one model whose batch is the ranks' batches stacked.

So the whole model-level suite judges data-parallel training unchanged: one step on N GPUs with B/N rows each
must give, within BASE's precision class, the float64 oracle's loss, gradients (read after the all-reduce:
ZeRO-0 every rank's, ZeRO-1 each rank's shard), parameters, m and v after every update, and test_gpt2.c's
10 losses of the whole batch B. BASE: a CUDA backend of ours (cuda, cuda-tf32, cuda-bf16) or lib:PATH, any
port whose library exports llmc.h's llmc_set_device and llmc_dist_* (PORTING.md). Each rank is a lib:
child process (backends/lib_worker.py) on GPU r, so a crash is an ERROR, never the end of the run.
"""

from __future__ import annotations

import re

import numpy as np

from backends.base import Backend, BackendUnavailable
from backends.native import BUILTIN as NATIVE_BUILTIN
from backends.ports import LibBackend, port_deterministic, port_precision
from backends.protocol import PortError, PortUnsupported
from native.binding import library_path

NAME = re.compile(r"dp(\d+)(-zero1)?:(.+)")


def data_parallel_backend(name: str) -> DataParallelBackend:
    match = NAME.fullmatch(name)
    if not match:
        raise ValueError(f"backend {name!r}: data parallelism is dpN:BASE or dpN-zero1:BASE, e.g. dp2:cuda-bf16")
    world_size, zero_stage, base = int(match[1]), 1 if match[2] else 0, match[3]
    if world_size < 1:
        raise ValueError(f"backend {name!r}: at least 1 rank")
    if base in NATIVE_BUILTIN and NATIVE_BUILTIN[base][0] == "cuda":
        kind, precision, _ = NATIVE_BUILTIN[base]
        path, deterministic = library_path(kind), True
        if not path.is_file():
            raise BackendUnavailable(f"{path} not found: run make")
    elif base.startswith("lib:"):
        path, precision, deterministic = base[4:], port_precision(), port_deterministic()
    else:
        raise ValueError(f"backend {name!r}: BASE must be cuda, cuda-tf32, cuda-bf16 or lib:PATH, not {base!r}")
    return DataParallelBackend(name, str(path), precision, deterministic, world_size, zero_stage)


class DataParallelBackend(Backend):
    kernels = None  # the kernels are BASE's, judged on one GPU

    def __init__(self, name, path, precision, deterministic, world_size, zero_stage):
        self.name, self.precision, self.deterministic = name, precision, deterministic
        self.world_size, self.zero_stage = world_size, zero_stage
        self.ranks = [
            LibBackend(f"{name} rank {r}", path, precision, deterministic, device=r) for r in range(world_size)
        ]  # rank r on GPU r: BackendUnavailable where it is missing
        missing = [
            f
            for f in (
                "llmc_set_device",
                "llmc_dist_unique_id",
                "llmc_dist_join",
                "llmc_dist_sync_grads",
                "llmc_dist_shard",
                "llmc_dist_mean",
            )
            if f not in self.ranks[0].exports
        ]
        if missing:
            raise BackendUnavailable(f"{name}: {path} does not export {', '.join(missing)} (data parallelism)")
        self.description = (
            f"{world_size} ranks, one per GPU, ZeRO-{zero_stage}, NCCL; each rank: {self.ranks[0].description}"
        )

    def missing_kernel_reason(self, name):
        return f"{self.name}: data parallelism is judged at the model level; the kernels are the base backend's"

    def unsupported(self, feature):
        return self.ranks[0].unsupported(feature)

    def model(self, config, params, max_B, max_T):
        return self._join([r.model(config, params, self._rows(max_B), max_T) for r in self.ranks])

    def model_from_checkpoint(self, path, max_B, max_T):
        return self._join([r.model_from_checkpoint(path, self._rows(max_B), max_T) for r in self.ranks])

    def _rows(self, B):
        if B % self.world_size:
            raise PortUnsupported(
                f"{self.name}: a batch of B={B} rows does not split evenly over {self.world_size} ranks"
            )
        return B // self.world_size

    def _join(self, models):
        unique_id = self.ranks[0].dist_unique_id()
        _collective(models, "dist_join", lambda r: (unique_id, r, self.world_size, self.zero_stage))
        return DataParallelModel(self, models)


def _collective(models, method, args=lambda rank: ()):
    """method on every rank at once (a collective call waits for all of them) -> what each returned."""
    for rank, model in enumerate(models):
        model.post(method, *args(rank))
    return [model.collect(method) for model in models]


class DataParallelModel:
    """The ranks' models as one: inputs split by rows, losses averaged, logits stacked, everything else
    rank 0's after checking that the ranks agree where they must."""

    def __init__(self, backend, models):
        self.backend, self.models = backend, models
        self.config = models[0].config
        self.num_parameters = models[0].num_parameters

    def _split(self, values):
        if values is None:
            return [None] * len(self.models)
        values = np.asarray(values)
        self.backend._rows(values.shape[0])
        return np.split(values, len(self.models))

    def forward(self, inputs, targets=None):
        parts = list(zip(self._split(inputs), self._split(targets), strict=True))
        losses = _collective(self.models, "forward", lambda r: parts[r])
        if targets is None:
            return None
        # equal rows: the whole batch's loss is the ranks' mean, taken by llmc_dist_mean as training logs it
        means = _collective(self.models, "dist_mean", lambda r: (np.array([losses[r]], np.float32),))
        self._agree(means, "mean losses")
        return float(means[0][0])

    def logits(self):
        return np.concatenate(_collective(self.models, "logits"))

    def zero_grad(self):
        _collective(self.models, "zero_grad")

    def backward(self):
        _collective(self.models, "backward")

    def grads(self):
        """The gradient of the whole batch's mean loss: the ranks' average, as NCCL left it."""
        _collective(self.models, "dist_sync_grads")
        grads = _collective(self.models, "grads")
        if self.backend.zero_stage == 0:
            self._agree(grads, "gradients after the all-reduce")
            return grads[0]
        whole = np.empty_like(grads[0])
        for grad, (offset, count) in zip(grads, _collective(self.models, "dist_shard"), strict=True):
            whole[offset : offset + count] = grad[offset : offset + count]
        return whole

    def params(self):
        params = _collective(self.models, "params")
        self._agree(params, "parameters")
        return params[0]

    def set_params(self, flat):
        _collective(self.models, "set_params", lambda r: (flat,))

    def update(self, settings, t):
        norms = _collective(self.models, "update", lambda r: (settings, t))
        self._agree(norms, "gradient norms")
        return norms[0]

    def optimizer_state(self):
        states = _collective(self.models, "optimizer_state")  # ZeRO-1: gathered from the shards
        self._agree([np.concatenate(s) for s in states], "AdamW states")
        return states[0]

    def set_optimizer_state(self, m, v):
        _collective(self.models, "set_optimizer_state", lambda r: (m, v))

    def save_checkpoint(self, path, dtype="fp32"):
        """Rank 0 writes (every rank holds the same parameters: params() checks that)."""
        self.models[0].post("save_checkpoint", str(path), dtype)
        self.models[0].collect("save_checkpoint")

    def close(self):
        """Every rank at once: freeing a joined model ends its NCCL communicator, which waits for the others."""
        closing = [model for model in self.models if model.begin_close()]
        for model in closing:
            model.end_close()

    def _agree(self, values, what):
        """Every rank must hold the same bits: the same all-reduced gradients, the same updated parameters."""
        for rank, value in enumerate(values[1:], 1):
            if not np.array_equal(value, values[0]):
                differ = int(np.sum(np.asarray(value) != np.asarray(values[0])))
                raise PortError(f"{self.backend.name}: rank {rank}'s {what} differ from rank 0's in {differ} values")
