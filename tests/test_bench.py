"""pytest-benchmark: one GPT-2 training step (forward, zero_grad, backward, AdamW update) per backend.

    make bench                              # every available backend, a small model, JSON in out/bench/
    LLMC_BENCH_MODEL=d12 make bench         # GPT-2 124M shapes
    python -m tools.bench_report out/bench/bench.json --out docs/bench

LLMC_BENCH_MODEL (default L4-NH4-C128), LLMC_BENCH_B / LLMC_BENCH_T (4 / 64) and LLMC_BENCH_THREADS
(2; the cpu backend's and torch's setting, numpy's BLAS takes OPENBLAS_NUM_THREADS from the environment)
pick the step; `torch` (PyTorch eager, the baseline) runs where it is installed. Each benchmark's
extra_info carries what tools.bench_report needs (model, B, T, FLOPs per step) and the BLAS kernel the
backend ran (tools.blas_info), with a warning where OPENBLAS_CORETYPE forces it. Benchmarks only: nothing
here asserts a time.
"""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from backends.base import BackendUnavailable
from backends.registry import get_backend
from reference.model import GPT2Config, init_params
from tools import blas_info
from tools.bench import PHASES, REPO_ROOT, backend_phases, torch_phases

MODEL = os.environ.get("LLMC_BENCH_MODEL", "L4-NH4-C128")
B = int(os.environ.get("LLMC_BENCH_B", "4"))
T = int(os.environ.get("LLMC_BENCH_T", "64"))
THREADS = int(os.environ.get("LLMC_BENCH_THREADS", "2"))
ROUNDS = 5


@pytest.fixture(scope="module")
def setup():
    config = GPT2Config.from_descriptor(MODEL)
    return config, init_params(config, seed=42, dtype=np.float32)


def _bench_step(benchmark, phases, name, config, blas):
    benchmark.group = f"train step {MODEL} B={B} T={T}"
    warning = blas_info.forced_core_warning()
    if warning:
        warnings.warn(warning, stacklevel=2)
    benchmark.extra_info.update(
        backend=name,
        model=MODEL,
        B=B,
        T=T,
        threads=THREADS,
        num_parameters=config.num_parameters,
        flops_per_step=config.flops_per_token(T) * B * T,
        blas=blas,
        blas_warning=warning,
    )

    def step():
        for phase in PHASES:
            phases[phase]()

    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=1)


def test_train_step_torch(benchmark, setup):
    """First in the file: in one process, threads that numpy's BLAS or OpenMP left spinning after another
    backend's benchmark slow PyTorch's thread pool (tools.bench avoids this with a process per backend)."""
    torch = pytest.importorskip("torch", reason="the PyTorch baseline needs pip install torch==2.13.0")
    torch.set_num_threads(THREADS)
    config, params = setup
    _bench_step(benchmark, torch_phases(config, params, B, T), "torch", config, blas_info.torch_blas(torch))


def test_train_step(benchmark, backend, setup):
    """`backend` is conftest's: every --backend (default all builtin), skipped where unavailable."""
    config, params = setup
    library = getattr(backend, "library", None)  # native and lib: backends; a lib: port may lack the symbol
    if library is not None and library.has("llmc_set_num_threads"):
        backend.set_num_threads(THREADS)
    try:
        model = backend.model(config, params, B, T)
    except NotImplementedError:
        pytest.skip(f"backend {backend.name} has no model API")
    blas = blas_info.openblas_info(library.path) if library is not None else blas_info.numpy_blas()
    try:
        _bench_step(benchmark, backend_phases(model, config, B, T), backend.name, config, blas)
    finally:
        model.close()


def test_bench_tools_run(tmp_path):
    """tools.bench (a worker subprocess, its JSON) and tools.bench_report (markdown, charts) end to end on a
    tiny model; what they measure is not checked."""
    from tools import bench, bench_report

    out = tmp_path / "bench.json"
    assert (
        bench.main(
            [
                "--backend",
                "reference",
                "--model",
                "L1-NH2-C32-V256-T16",
                "-B",
                "2",
                "-T",
                "8",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--kernel-repeats",
                "1",
                "--layers",
                "reference",
                "--report-json",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    (result,) = report["results"]
    assert result["backend"] == "reference" and result["step_ms"] > 0 and result["layers"]
    assert result["blas"]["blas"] == "OpenBLAS" and result["blas"]["corename"]  # numpy's, asked at run time
    assert 0 < result["share_of_peak"] == pytest.approx(result["gflops"] / report["matmul_peak_gflops"])
    assert (report["meta"]["warnings"] != []) == bool(os.environ.get("OPENBLAS_CORETYPE"))
    assert bench_report.main([str(out), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| reference |" in md and "matmul_backward lm_head" in md
    assert f"| OpenBLAS {result['blas']['corename']} |" in md


def test_forced_core_warning():
    assert blas_info.forced_core_warning({}) is None
    assert blas_info.forced_core_warning({"OPENBLAS_L2_SIZE": "2097152"}) is None
    warning = blas_info.forced_core_warning({"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "2097152"})
    assert warning.startswith("OPENBLAS_CORETYPE=Haswell OPENBLAS_L2_SIZE=2097152 forces OpenBLAS's Haswell kernels")
    assert "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE" in warning


@pytest.mark.parametrize("core", ["Haswell", "Sandybridge"])
def test_corename_is_the_kernel_that_runs(core):
    """The core name comes from the running OpenBLAS, not its build: a child process whose environment forces
    a core (this process's environment is left as it is) reports that core for libllmc's OpenBLAS and numpy's."""
    try:
        get_backend("cpu")
    except BackendUnavailable as e:
        pytest.skip(str(e))
    code = (
        "import json; from backends.registry import get_backend; from tools import blas_info; "
        "print(json.dumps([blas_info.openblas_info(get_backend('cpu').library.path), blas_info.numpy_blas()]))"
    )
    env = dict(os.environ, OPENBLAS_CORETYPE=core)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    cpu, numpy_ = json.loads(proc.stdout)
    assert cpu["corename"] == numpy_["corename"] == core, (cpu, numpy_)
    assert "scipy_openblas32" in cpu["library"] and "numpy" in numpy_["library"]
