# make            : the virtual environment (.venv) and libllmc (build/libllmc_cpu.so, and build/libllmc_cuda.so where nvcc is found)
# make test       : everything, then the conformance suite (what .ci/run calls, after make lint and before a short make asan)
# make conform    : everything (the 124M fixture too), then the main job: model-level checks of every available backend
# make fixtures   : the GPT-2 124M-shape fixture (fixtures/gpt2_124M/, ignored by git)
# make bench      : the pytest-benchmark suite for every available backend, JSON under out/bench/
# make lint       : ruff (lint and format check) on the Python, clang-format (native/.clang-format) on the C and CUDA
# make format     : applies both formatters
# make asan       : the CPU library under AddressSanitizer + UBSan (build/asan/), the native, kernel and model tests
#                   of the cpu backend and 20 s of tools.fuzz against it
# CONSTRAINTS     : the pinned versions .venv gets (.ci/constraints.txt); `make test CONSTRAINTS=` takes the newest
PYTHON ?= python3
CONSTRAINTS ?= .ci/constraints.txt
VENV ?= .venv
PY := $(VENV)/bin/python
BUILD := build
NVCC ?= $(shell command -v nvcc 2>/dev/null)
CUDA_EXTRAS := [cuda,nccl]
EXTRAS := $(if $(NVCC),$(CUDA_EXTRAS),)

.PHONY: all venv native fixtures test conform bench lint format asan clean
all: venv native

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.$(EXTRAS)'
	touch $@

$(BUILD):
	mkdir -p $(BUILD)

include native/cpu.mk
include native/cuda.mk

FIXTURE_124M := fixtures/gpt2_124M
fixtures: $(FIXTURE_124M)/manifest.json $(FIXTURE_124M)/trajectories.npz
$(FIXTURE_124M)/manifest.json: | venv
	$(PY) -m tools.make_fixtures --model d12 -B 4 -T 64 $(FIXTURE_124M)
# the float64 trajectories the model checks judge every update by (make_fixtures writes them with a new
# fixture; this adds them to one made before)
$(FIXTURE_124M)/trajectories.npz: $(FIXTURE_124M)/manifest.json
	$(PY) -m tools.make_fixtures --trajectories $(FIXTURE_124M)

test: all fixtures
	$(PY) -m pytest conformance/ tests/

conform: all fixtures
	$(PY) -m tools.conform

bench: all fixtures
	mkdir -p out/bench
	$(PY) -m pytest tests/test_bench.py --benchmark-only --benchmark-json=out/bench/bench.json

C_SOURCES = $(shell find native tests/standin_llmc -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')
CLANG_FORMAT = $(VENV)/bin/clang-format --style=file:native/.clang-format
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(CLANG_FORMAT) --dry-run --Werror $(C_SOURCES)

format: venv
	$(VENV)/bin/ruff format .
	$(CLANG_FORMAT) -i $(C_SOURCES)

# The sanitizer build replaces build/libllmc_cpu.so through LLMC_CPU_LIB (child processes inherit it). Python is
# not instrumented, so libasan goes first into the process by LD_PRELOAD. ASAN_OPTIONS: detect_leaks=0, since
# the interpreter's own allocations at exit would bury the report (the library's are freed by llmc_model_free,
# which the tests call); a refused huge allocation returns NULL (the library's LLMC_ERR_ALLOC) instead of
# ending the run. Every finding ends the process (-fno-sanitize-recover=all), which fails the test.
ASAN_TESTS := tests/test_native.py conformance/test_kernels.py conformance/test_model.py
# CI's short run (.ci/run): the tiny fixtures only and 10 s of fuzzing, about 1.5 min instead of 8.5
ASAN_ARGS ?=
FUZZ_SECONDS ?= 20
ASAN_ENV = LLMC_CPU_LIB=$(BUILD)/asan/libllmc_cpu.so LD_PRELOAD="$$($(CC) -print-file-name=libasan.so)" \
	ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:max_allocation_size_mb=4096 \
	UBSAN_OPTIONS=print_stacktrace=1
asan: venv fixtures $(BUILD)/asan/libllmc_cpu.so
	$(ASAN_ENV) $(PY) -m pytest $(ASAN_TESTS) --backend cpu -p no:cacheprovider -q $(ASAN_ARGS)
	$(ASAN_ENV) $(PY) -m tools.fuzz --seconds $(FUZZ_SECONDS)

clean:
	rm -rf $(BUILD)
