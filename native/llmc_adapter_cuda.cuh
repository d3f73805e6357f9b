/* What llm.c's two CUDA adapters share: native/llmc_adapter_cuda.cu (train_gpt2.cu, bf16 mixed precision)
 * and native/llmc_adapter_cuda_fp32.cu (train_gpt2_fp32.cu). Each defines LLMC_TRAIN_SOURCE, the llm.c
 * file to adapt, and includes this header, which
 *   1. includes every system and CUDA header llm.c's files include, before anything else;
 *   2. includes LLMC_TRAIN_SOURCE with TESTING defined (no main) and every exit() in it, llm.c's headers
 *      included, turned into a C++ exception: llm.c ends the process on any CUDA, cuBLAS or file error,
 *      and the adapter must return an error code instead. Bad input never gets that far (the adapters
 *      validate every argument first, as native/llmc_adapter.c does); the exception is the net for what
 *      no validation can foresee: out of device memory, a failed kernel launch. assert() is not caught,
 *      hence the validation;
 *   3. declares llmc.h's API and libllmc's host C core (native/core/core.h: the error state, the config /
 *      size / forward / AdamW checks, the checkpoint reader, linked into both libraries and used as the CPU
 *      adapter uses them) inside namespace llmc_abi. train_gpt2_fp32.cu defines host launchers that
 *      take device pointers with exactly the signatures of llmc.h's CPU kernels (residual_forward,
 *      matmul_forward, layernorm_forward, attention_forward); with llmc.h's extern "C" declarations in
 *      the same scope they would take C linkage and be exported under the kernel names, where the
 *      harness would call them with host pointers. In a namespace they stay distinct C++ functions,
 *      and the library (built with -fvisibility=hidden) exports exactly the llmc_* functions marked
 *      LLMC_API: no kernel, since none of llm.c's CUDA kernels has llmc.h's host-pointer signature;
 *   4. llm.c's exits and C++ exceptions turned into error codes;
 *   5. what llm.c counts in int beyond the core's checks, and the device memory check;
 *   6. what both adapters' handles do alike, as templates on the adapter's own llmc_model (defined after
 *      this header, holding llm.c's GPT2 as `gpt` and the sizes it was made for as max_B, max_T).
 */
#ifndef LLMC_ADAPTER_CUDA_CUH
#define LLMC_ADAPTER_CUDA_CUH
#ifndef LLMC_TRAIN_SOURCE
#error "define LLMC_TRAIN_SOURCE, the llm.c file to adapt (\"train_gpt2.cu\" or \"train_gpt2_fp32.cu\")"
#endif

/* ----------------------------------------------------------------------------- 1. headers first
 * Included again from llm.c, each is then a no-op, so the exit() macro below never reaches a declaration. */
#include <assert.h>
#include <ctype.h>
#include <dirent.h>
#include <float.h>
#include <glob.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <algorithm>
#include <cstdlib>
#include <exception>
#include <new>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>
#include <cuda_runtime.h>
#include <cuda_runtime_api.h>
#include <cuda_profiler_api.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cublas_v2.h>
#include <cublasLt.h>
#include <cooperative_groups.h>
#include <cooperative_groups/reduce.h>
#include <nvtx3/nvToolsExt.h>
#include <nvtx3/nvToolsExtCudaRt.h>
#if __has_include(<nvml.h>)
#include <nvml.h>
#endif

/* ----------------------------------------------------------------------------- 2. llm.c */
#if CUDART_VERSION >= 13000
/* CUDA 13 changed cudaMemAdvise's last parameter from a device ordinal to a cudaMemLocation; llm.c (its
 * master of May 2025; the fix is its open pull request #825) still passes the ordinal, cudaCpuDeviceId, and
 * does not compile. This overload takes the ordinal as CUDA 12 did. llm.c calls it only where a device
 * allocation failed and it falls back to managed memory. */
static inline cudaError_t cudaMemAdvise(const void* ptr, size_t bytes, cudaMemoryAdvise advice, int device) {
    cudaMemLocation location;
    location.type = device == cudaCpuDeviceId ? cudaMemLocationTypeHost : cudaMemLocationTypeDevice;
    location.id = device == cudaCpuDeviceId ? 0 : device;
    return cudaMemAdvise(ptr, bytes, advice, location);
}
#endif

struct LlmcExit {
    int status; // what llm.c passed to exit(); its own message is already on stdout / stderr
};
#define exit(status) \
    throw LlmcExit { (status) }
#ifndef TESTING
#define TESTING // leaves out llm.c's main()
#endif
#include LLMC_TRAIN_SOURCE
#undef exit

/* ----------------------------------------------------------------------------- 3. llmc.h */
namespace llmc_abi {
#include "llmc.h"
#include "core/core.h"
} // namespace llmc_abi
using namespace llmc_abi;
#define LLMC_API extern "C" __attribute__((visibility("default")))
#define LLMC_STR_(x) #x
#define LLMC_STRINGIFY(x) LLMC_STR_(x)
#ifndef LLMC_SOURCE_ID
#define LLMC_SOURCE_ID "unidentified" // tools/validate_llmc.py passes the sha256 of LLMC_TRAIN_SOURCE
#endif

/* ----------------------------------------------------------------------------- 4. errors */
/* Runs body (which returns an llmc error code) and turns llm.c's exit() and C++ exceptions into codes.
 * After a CUDA error the cause is the runtime's last error: out of memory is LLMC_ERR_ALLOC, the rest
 * LLMC_ERR_DEVICE; an exit() with no CUDA error behind it (cuBLAS, a file) is LLMC_ERR_DEVICE too. */
template <class Body>
static int guarded(const char* what, Body body) {
    try {
        return body();
    } catch (const LlmcExit& e) {
        cudaError_t cause = cudaGetLastError();
        if (cause == cudaErrorMemoryAllocation)
            return llmc_fail(LLMC_ERR_ALLOC, "%s: out of device memory (llm.c stopped with exit(%d))", what, e.status);
        if (cause != cudaSuccess)
            return llmc_fail(LLMC_ERR_DEVICE, "%s: CUDA error '%s' (llm.c stopped with exit(%d))", what,
                             cudaGetErrorString(cause), e.status);
        return llmc_fail(LLMC_ERR_DEVICE, "%s: llm.c stopped with exit(%d); its message is on stdout / stderr", what,
                         e.status);
    } catch (const std::bad_alloc&) {
        return llmc_fail(LLMC_ERR_ALLOC, "%s: out of host memory", what);
    } catch (const std::exception& e) {
        return llmc_fail(LLMC_ERR_DEVICE, "%s: %s", what, e.what());
    }
}

/* A CUDA call of the adapter's own, inside guarded(): fails the way llm.c's cudaCheck does. */
static void adapter_cuda(cudaError_t status) {
    if (status != cudaSuccess) throw LlmcExit{EXIT_FAILURE};
}

/* The one device the adapters use (llm.c's single-GPU default: device 0). */
static int require_device(const char* what) {
    int count = 0;
    cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess || count == 0)
        return llmc_fail(LLMC_ERR_DEVICE, "%s: no usable CUDA device (%s)", what,
                         status != cudaSuccess ? cudaGetErrorString(status) : "none found");
    return LLMC_OK;
}

/* ----------------------------------------------------------------------------- 5. llm.c's limits */
/* What llm.c counts in int beyond llmc_check_model_size's B*T*4C: B*T*Vp (logits) and B*NH*T*T (attention),
 * each times the layer count where llm.c offsets a layer with int arithmetic (layers = L:
 * train_gpt2_fp32.cu; 1: train_gpt2.cu, whose model code uses size_t). */
static int check_llmc_sizes(const llmc_config* c, int max_B, int max_T, int layers, const char* where) {
    const double tokens = (double)max_B * max_T;
    if (tokens * c->padded_vocab_size > INT_MAX || layers * tokens * max_T * c->num_heads > INT_MAX ||
        layers * tokens * 4.0 * c->channels > INT_MAX)
        return llmc_fail(LLMC_ERR_ARGUMENT,
                         "%s: max_B = %d x max_T = %d is too large for llm.c's int offsets "
                         "(B*T*Vp, %sB*NH*T*T and %sB*T*4C must stay below 2^31)",
                         where, max_B, max_T, layers > 1 ? "L*" : "", layers > 1 ? "L*" : "");
    return LLMC_OK;
}

/* Refuses, before anything is allocated, a model whose parameters, gradients and activations (bytes)
 * do not fit in the device's free memory; cudaMalloc failing later is still caught by guarded(). */
static int check_device_memory(size_t bytes, int max_B, int max_T, const char* where) {
    size_t free_bytes = 0, total_bytes = 0;
    cudaError_t status = cudaMemGetInfo(&free_bytes, &total_bytes);
    if (status != cudaSuccess)
        return llmc_fail(LLMC_ERR_DEVICE, "%s: cudaMemGetInfo: %s", where, cudaGetErrorString(status));
    if (bytes > free_bytes)
        return llmc_fail(LLMC_ERR_ALLOC,
                         "%s: needs %zu MiB of device memory at max_B = %d, max_T = %d; %zu MiB "
                         "free",
                         where, bytes >> 20, max_B, max_T, free_bytes >> 20);
    return LLMC_OK;
}

/* ----------------------------------------------------------------------------- 6. the handles alike */
/* A checkpoint the core's reader opened, read whole as fp32 (it widens v5 exactly); ck is closed on every
 * path. */
static int read_checkpoint_params(llmc_checkpoint* ck, const char* path, std::vector<float>* params) {
    try {
        params->resize(ck->num_parameters);
    } catch (const std::bad_alloc&) {
        llmc_checkpoint_close(ck);
        return llmc_fail(LLMC_ERR_ALLOC, "checkpoint '%s': out of host memory for its parameters", path);
    }
    return llmc_checkpoint_read(ck, params->data());
}

template <class Model>
static int model_config(const Model* model, llmc_config* out) {
    if (model == NULL || out == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "model_config: NULL argument");
    const GPT2Config* c = &model->gpt.config;
    *out = {c->max_seq_len, c->vocab_size, c->padded_vocab_size, c->num_layers, c->num_heads, c->channels};
    return llmc_ok();
}

/* The core's forward checks, and what both of llm.c's attention softmaxes need. */
template <class Model>
static int check_forward(const Model* model, const int* inputs, const int* targets, int B, int T) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "forward: NULL model");
    int rc = llmc_check_forward(inputs, targets, B, T, model->max_B, model->max_T, model->gpt.config.vocab_size);
    if (rc) return rc;
    if (T % 4)
        return llmc_fail(LLMC_ERR_UNSUPPORTED,
                         "forward: T = %d; llm.c's attention softmax (softmax_forward_kernel5) "
                         "needs T %% 4 == 0",
                         T);
    return LLMC_OK;
}

#endif
