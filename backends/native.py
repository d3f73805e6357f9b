"""libllmc (native/) behind the backend interface: the backends cpu, cuda and cuda-tf32. (lib:PATH ports
run in a child process of their own: backends/ports.py.)"""

from __future__ import annotations

from os import PathLike

import numpy as np

from backends.base import Backend, BackendUnavailable
from native.binding import (
    ROOT,
    Library,
    LibraryUnavailable,
    LlmcError,
    NativeKernels,
    NativeModel,
    default_threads,
    library_path,
    load_library,
)
from reference.model import GPT2Config, init_params

# name -> (library kind, tolerance class, precision mode of llmc_set_precision)
BUILTIN = {
    "cpu": ("cpu", "fp32", 0),
    "cuda": ("cuda", "fp32", 0),
    "cuda-tf32": ("cuda", "tf32", 1),
    "cuda-bf16": ("cuda", "bf16", 2),
}


class NativeBackend(Backend):
    """A Library behind the Backend interface. mode is its precision mode (llmc_set_precision),
    precision the tolerance class its results are judged by."""

    deterministic = True  # libllmc: fixed reduction orders (CPU: for a given thread count)

    def __init__(self, library: Library, name: str, precision: str = "fp32", mode: int = 0, device: int | None = None):
        self.library = library
        self.name = name
        self.precision = precision
        self.mode = mode
        try:
            if device is not None:  # a data-parallel rank's GPU, before anything touches one
                if not library.has("llmc_set_device"):
                    raise BackendUnavailable(f"{name}: {library.path} has no llmc_set_device (one device only)")
                library.set_device(device)
            library.init()
            library.activate(mode)  # fails here, not later, when the library refuses the mode
        except (LibraryUnavailable, LlmcError) as e:  # LlmcError: the library refuses the mode
            raise BackendUnavailable(f"{name}: {e}") from e
        if library.has("llmc_set_num_threads"):
            library.set_num_threads(default_threads())
        self.kernels = NativeKernels(library, mode)
        self.description = f"{library.path}: {library.build_info()}"

    def set_num_threads(self, n: int) -> None:
        self.library.set_num_threads(n)

    @property
    def data_parallel(self) -> bool:
        """Whether its models can join a data-parallel group (llmc_dist_join: the CUDA library with NCCL)."""
        return self.library.has("llmc_dist_join")

    def dist_unique_id(self) -> bytes:
        return self.library.dist_unique_id()

    def model(self, config: GPT2Config, params: np.ndarray | None, max_B: int, max_T: int) -> NativeModel:
        if params is None:
            params = init_params(config)
        return self.library.model_from_params(config, params, max_B, max_T, self.mode)

    def model_from_checkpoint(self, path: str | PathLike, max_B: int, max_T: int) -> NativeModel:
        return self.library.model_from_checkpoint(path, max_B, max_T, self.mode)


def open_library(path) -> Library:
    """load_library, its failure as BackendUnavailable."""
    try:
        return load_library(path)
    except LibraryUnavailable as e:
        raise BackendUnavailable(str(e)) from e


def native_backend(name: str, device: int | None = None) -> NativeBackend:
    if name not in BUILTIN:
        raise ValueError(f"unknown native backend {name!r}: use one of {', '.join(BUILTIN)}")
    kind, precision, mode = BUILTIN[name]
    path = library_path(kind)
    if not path.is_file():
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        raise BackendUnavailable(f"{shown} not found: run make")
    return NativeBackend(open_library(path), name, precision, mode, device)
