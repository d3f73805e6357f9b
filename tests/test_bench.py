"""pytest-benchmark: one GPT-2 training step (forward, zero_grad, backward, AdamW update) per backend.

    make bench                              # every available backend, a small model, JSON in out/bench/
    LLMC_BENCH_MODEL=d12 make bench         # GPT-2 124M shapes
    python -m tools.bench_report out/bench/bench.json --out docs/bench

LLMC_BENCH_MODEL (default L4-NH4-C128), LLMC_BENCH_B / LLMC_BENCH_T (4 / 64) and LLMC_BENCH_THREADS
(2; the cpu backend's and torch's setting, numpy's BLAS takes OPENBLAS_NUM_THREADS from the environment)
pick the step; `torch` (PyTorch eager, the baseline) runs where it is installed. Each benchmark's
extra_info carries what tools.bench_report needs (model, B, T, FLOPs per step). Benchmarks only: nothing
here asserts a time.
"""
import json
import os

import numpy as np
import pytest

from reference.model import GPT2Config, init_params
from tools.bench import PHASES, backend_phases, torch_phases

MODEL = os.environ.get("LLMC_BENCH_MODEL", "L4-NH4-C128")
B = int(os.environ.get("LLMC_BENCH_B", "4"))
T = int(os.environ.get("LLMC_BENCH_T", "64"))
THREADS = int(os.environ.get("LLMC_BENCH_THREADS", "2"))
ROUNDS = 5


@pytest.fixture(scope="module")
def setup():
    config = GPT2Config.from_descriptor(MODEL)
    return config, init_params(config, seed=42, dtype=np.float32)


def _bench_step(benchmark, phases, name, config):
    benchmark.group = f"train step {MODEL} B={B} T={T}"
    benchmark.extra_info.update(backend=name, model=MODEL, B=B, T=T, threads=THREADS,
                                num_parameters=config.num_parameters,
                                flops_per_step=config.flops_per_token(T) * B * T)

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
    _bench_step(benchmark, torch_phases(config, params, B, T), "torch", config)


def test_train_step(benchmark, backend, setup):
    """`backend` is conftest's: every --backend (default all builtin), skipped where unavailable."""
    config, params = setup
    library = getattr(backend, "library", None)   # native and lib: backends; a lib: port may lack the symbol
    if library is not None and library.has("llmc_set_num_threads"):
        backend.set_num_threads(THREADS)
    try:
        model = backend.model(config, params, B, T)
    except NotImplementedError:
        pytest.skip(f"backend {backend.name} has no model API")
    try:
        _bench_step(benchmark, backend_phases(model, config, B, T), backend.name, config)
    finally:
        model.close()


def test_bench_tools_run(tmp_path):
    """tools.bench (a worker subprocess, its JSON) and tools.bench_report (markdown, charts) end to end on a
    tiny model; what they measure is not checked."""
    from tools import bench, bench_report
    out = tmp_path / "bench.json"
    assert bench.main(["--backend", "reference", "--model", "L1-NH2-C32-V256-T16", "-B", "2", "-T", "8",
                       "--steps", "1", "--warmup", "0", "--kernel-repeats", "1", "--layers", "reference",
                       "--report-json", str(out)]) == 0
    report = json.loads(out.read_text())
    (result,) = report["results"]
    assert result["backend"] == "reference" and result["step_ms"] > 0 and result["layers"]
    assert bench_report.main([str(out), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| reference |" in md and "matmul_backward lm_head" in md
