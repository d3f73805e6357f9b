# libllmc CUDA library: build/libllmc_cuda.so, built only where nvcc is found (NVCC empty: skipped, and the
# cuda backends' tests skip saying so). Included by the root Makefile, which defines NVCC, PY, BUILD.
#
# cuBLAS: the CUDA toolkit's (next to nvcc) if it has one, else the nvidia-cublas wheel in PY's environment
# (pyproject extra [cuda], installed by `make venv` when nvcc exists); native/cuda/find_libs.py decides and the
# build prints the choice. RPATH points at that lib dir. cudart is linked statically.
# NCCL, for data parallelism (distributed.cu): found the same way (the nvidia-nccl-cu13 wheel, extra [nccl]);
# where it is missing the library builds without it, says so, and its llmc_dist_* calls are unsupported.
# Code: machine code for the GPUs llm.c's users train on, sm_80 (A100), sm_86 (RTX 30xx, A10/A40), sm_89
# (RTX 40xx, L4/L40) and sm_90 (H100/H200), plus compute_90 PTX, which newer GPUs JIT-compile. Every kernel
# is sm_80 code (mma.sync, cp.async, ldmatrix): there is no Hopper-only path to choose at run time. No
# --use_fast_math: expf/tanhf/sqrtf must stay accurate for the fp32 conformance tolerances.
# CUDA_ARCHS overrides the list (e.g. `make CUDA_ARCHS=90` for a quick build).
# The host C core (CORE_SRCS, cpu.mk) is compiled by the C compiler, without OpenMP, and linked in beside the
# .cu objects: the CUDA library carries its own copy, as the CPU library does.
CUDA_SRCS := $(wildcard native/cuda/*.cu)
CUDA_HDRS := $(CORE_HDRS) native/cuda/common.cuh
CUDA_OBJS := $(patsubst native/cuda/%.cu,$(BUILD)/cuda/%.o,$(CUDA_SRCS)) \
	$(patsubst native/core/%.c,$(BUILD)/cuda/core/%.o,$(CORE_SRCS))
CUDA_CORE_CFLAGS := -std=gnu11 -O2 -fPIC -Wall -Wextra -Wno-unused-parameter
CUDA_ARCHS ?= 80 86 89 90
NVCC_FLAGS := -O3 -std=c++17 -Xcompiler -fPIC,-Wall -cudart static \
	$(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
	-gencode arch=compute_$(lastword $(CUDA_ARCHS)),code=compute_$(lastword $(CUDA_ARCHS)) \
	-DLLMC_CUDA_ARCHS='"$(CUDA_ARCHS)"'
# the Python that can see the nvidia-cublas wheel: the venv's when it exists (not on a bare GPU machine)
CUBLAS_PY = $(if $(wildcard $(PY)),$(PY),python3)

ifneq ($(NVCC),)
$(BUILD)/cuda/cublas.txt: native/cuda/find_libs.py native/cuda.mk | $(BUILD)
	@mkdir -p $(BUILD)/cuda
	$(CUBLAS_PY) native/cuda/find_libs.py cublas $(NVCC) > $@.tmp && mv $@.tmp $@
	@echo "libllmc_cuda: cuBLAS from the $$(cut -d' ' -f3 $@), $$(cut -d' ' -f2 $@)"

# empty when there is no NCCL
$(BUILD)/cuda/nccl.txt: native/cuda/find_libs.py native/cuda.mk | $(BUILD)
	@mkdir -p $(BUILD)/cuda
	@$(CUBLAS_PY) native/cuda/find_libs.py nccl $(NVCC) > $@.tmp 2>/dev/null || true; mv $@.tmp $@
	@if [ -s $@ ]; then echo "libllmc_cuda: NCCL from the $$(cut -d' ' -f3 $@), $$(cut -d' ' -f2 $@)"; 	else echo "libllmc_cuda: no NCCL (pip install '.[nccl]' for data parallelism): one GPU only"; fi

$(BUILD)/cuda/%.o: native/cuda/%.cu $(CUDA_HDRS) $(BUILD)/cuda/cublas.txt
	$(NVCC) $(NVCC_FLAGS) -I$$(cut -d' ' -f1 $(BUILD)/cuda/cublas.txt) -c $< -o $@

$(BUILD)/cuda/distributed.o: native/cuda/distributed.cu $(CUDA_HDRS) $(BUILD)/cuda/cublas.txt $(BUILD)/cuda/nccl.txt
	$(NVCC) $(NVCC_FLAGS) -I$$(cut -d' ' -f1 $(BUILD)/cuda/cublas.txt) \
	  $$(if [ -s $(BUILD)/cuda/nccl.txt ]; then echo -DLLMC_WITH_NCCL -I$$(cut -d' ' -f1 $(BUILD)/cuda/nccl.txt); fi) \
	  -c $< -o $@

$(BUILD)/cuda/core/%.o: native/core/%.c $(CORE_HDRS) native/cuda.mk | $(BUILD)
	@mkdir -p $(@D)
	$(CC) $(CUDA_CORE_CFLAGS) -c $< -o $@

$(BUILD)/libllmc_cuda.so: $(CUDA_OBJS) $(BUILD)/cuda/cublas.txt $(BUILD)/cuda/nccl.txt
	@set -e; lib=$$(cut -d' ' -f2 $(BUILD)/cuda/cublas.txt); \
	cublas=$$(ls $$lib/libcublas.so* | head -1); cublaslt=$$(ls $$lib/libcublasLt.so* | head -1); \
	nccl=""; if [ -s $(BUILD)/cuda/nccl.txt ]; then ncclib=$$(cut -d' ' -f2 $(BUILD)/cuda/nccl.txt); \
	  nccl="-L$$ncclib -Xlinker -l:$$(basename $$(ls $$ncclib/libnccl.so* | head -1)),-rpath,$$ncclib"; fi; \
	$(NVCC) $(NVCC_FLAGS) -shared -o $@.tmp $(CUDA_OBJS) -L$$lib \
	  -Xlinker -l:$$(basename $$cublas),-l:$$(basename $$cublaslt),-rpath,$$lib $$nccl; \
	mv $@.tmp $@; echo "libllmc_cuda: built $@ against $$cublas$${nccl:+ and NCCL}"

native: $(BUILD)/libllmc_cuda.so
endif
