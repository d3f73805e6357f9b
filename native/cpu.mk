# libllmc CPU library: build/libllmc_cpu.so (C11 + OpenMP, every matmul through a BLAS sgemm).
# Included by the root Makefile, which defines PY (the venv's python), BUILD and the venv target.
#
# BLAS, first found wins (the recipe prints which one it linked; llmc_build_info() reports it too):
#   1. the scipy-openblas32 wheel in the venv (symbols prefixed scipy_; RPATH set to its lib dir)
#   2. pkg-config openblas    3. pkg-config blis
# Flags: -O3 for the x86-64 baseline, no -march=native (the library runs on other machines than the one
# that built it); the hot loops (GELU, softmax, attention rows, AdamW) also get an AVX2+FMA clone that
# the loader picks at run time where the CPU has it (target_clones, LLMC_HOT in internal.h), and BLAS
# picks its own kernels at run time (DYNAMIC_ARCH). -fno-math-errno and -fno-trapping-math let sqrtf
# and the branch-free exp vectorize; they change no result. No -ffast-math: NaNs must propagate and
# the math must stay IEEE (no reassociation except the explicit fixed-order simd reductions).
CORE_SRCS := native/core/errors.c native/core/checks.c native/core/checkpoint.c   # shared with cuda.mk
CORE_HDRS := native/llmc.h native/core/core.h
CPU_SRCS := $(CORE_SRCS) native/blas.c native/kernels.c native/model.c
CPU_HDRS := $(CORE_HDRS) native/internal.h
CPU_CFLAGS := -std=gnu11 -O3 -fPIC -fopenmp -fno-math-errno -fno-trapping-math -fvisibility=default -Wall -Wextra -Wno-unused-parameter
CPU_ARCH_INFO := x86-64 baseline + x86-64-v3 clones of the hot loops, -O3 -fno-math-errno -fno-trapping-math
CC ?= cc

# The recipe of a CPU library at $@, compiled with the extra flags $(1) (none; the sanitizers for make asan).
define cpu_library
	@set -e; mkdir -p $(@D); \
	if libdir=$$($(PY) -c 'import scipy_openblas32 as s; print(s.get_lib_dir())' 2>/dev/null); then \
	  inc=$$($(PY) -c 'import scipy_openblas32 as s; print(s.get_include_dir())'); \
	  lib=$$($(PY) -c 'import scipy_openblas32 as s; print(s.get_library())'); \
	  ver=$$($(PY) -c 'import scipy_openblas32 as s; print(s.__version__)'); \
	  blas_cflags="-DLLMC_BLAS_SCIPY -I$$inc"; blas_libs="-L$$libdir -l$$lib -Wl,-rpath,$$libdir"; \
	  info="scipy-openblas32 $$ver ($$libdir)"; \
	elif pkg-config --exists openblas 2>/dev/null; then \
	  blas_cflags="-DLLMC_BLAS_OPENBLAS $$(pkg-config --cflags openblas)"; blas_libs="$$(pkg-config --libs openblas)"; \
	  info="OpenBLAS $$(pkg-config --modversion openblas) (pkg-config)"; \
	elif pkg-config --exists blis 2>/dev/null; then \
	  blas_cflags="-DLLMC_BLAS_BLIS $$(pkg-config --cflags blis)"; blas_libs="$$(pkg-config --libs blis)"; \
	  info="BLIS $$(pkg-config --modversion blis) (pkg-config)"; \
	else \
	  echo "native/cpu.mk: no BLAS found: pip install scipy-openblas32 into $(PY)'s environment (make venv does)," \
	       "or install an openblas / blis development package with a pkg-config file" >&2; exit 1; \
	fi; \
	echo "$@: BLAS = $$info"; \
	$(CC) $(CPU_CFLAGS) $(1) $$blas_cflags -DLLMC_BLAS_INFO="\"$$info\"" -DLLMC_ARCH_INFO="\"$(CPU_ARCH_INFO)$(if $(1), $(1))\"" \
	  -shared -o $@.tmp $(CPU_SRCS) $$blas_libs -lm; \
	mv $@.tmp $@
endef

$(BUILD)/libllmc_cpu.so: $(CPU_SRCS) $(CPU_HDRS) native/cpu.mk | $(BUILD) venv
	$(call cpu_library,)

# make asan: the same sources under AddressSanitizer and UndefinedBehaviorSanitizer, every finding fatal.
# A Python host needs libasan first in the process (LD_PRELOAD; the root Makefile's asan target does it).
ASAN_CFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all -g
$(BUILD)/asan/libllmc_cpu.so: $(CPU_SRCS) $(CPU_HDRS) native/cpu.mk | $(BUILD) venv
	$(call cpu_library,$(ASAN_CFLAGS))

native: $(BUILD)/libllmc_cpu.so
