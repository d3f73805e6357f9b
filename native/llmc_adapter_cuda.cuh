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
 *   3. declares llmc.h's API inside namespace llmc_abi. train_gpt2_fp32.cu defines host launchers that
 *      take device pointers with exactly the signatures of llmc.h's CPU kernels (residual_forward,
 *      matmul_forward, layernorm_forward, attention_forward); with llmc.h's extern "C" declarations in
 *      the same scope they would take C linkage and be exported under the kernel names, where the
 *      harness would call them with host pointers. In a namespace they stay distinct C++ functions,
 *      and the library (built with -fvisibility=hidden) exports exactly the llmc_* functions marked
 *      LLMC_API: no kernel, since none of llm.c's CUDA kernels has llmc.h's host-pointer signature;
 *   4. the error state and the argument checks, written as native/llmc_adapter.c has them. They are
 *      the part a shared host core (error state, config / size / checkpoint-header checks) replaces.
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
    int status;   // what llm.c passed to exit(); its own message is already on stdout / stderr
};
#define exit(status) throw LlmcExit{(status)}
#ifndef TESTING
#define TESTING   // leaves out llm.c's main()
#endif
#include LLMC_TRAIN_SOURCE
#undef exit

/* ----------------------------------------------------------------------------- 3. llmc.h */
namespace llmc_abi {
#include "llmc.h"
}
using namespace llmc_abi;
#define LLMC_API extern "C" __attribute__((visibility("default")))
#define LLMC_STR_(x) #x
#define LLMC_STRINGIFY(x) LLMC_STR_(x)
#ifndef LLMC_SOURCE_ID
#define LLMC_SOURCE_ID "unidentified"   // tools/validate_llmc.py passes the sha256 of LLMC_TRAIN_SOURCE
#endif

/* ----------------------------------------------------------------------------- 4. errors */
static thread_local char adapter_error[512] = "";
static thread_local int adapter_error_code = LLMC_OK;

static int adapter_fail(int code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static int adapter_fail(int code, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(adapter_error, sizeof(adapter_error), fmt, ap);
    va_end(ap);
    adapter_error_code = code;
    return code;
}

static int adapter_ok(void) {
    adapter_error[0] = '\0';
    adapter_error_code = LLMC_OK;
    return LLMC_OK;
}

LLMC_API const char* llmc_last_error(void) { return adapter_error; }
LLMC_API int llmc_last_error_code(void) { return adapter_error_code; }

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
            return adapter_fail(LLMC_ERR_ALLOC, "%s: out of device memory (llm.c stopped with exit(%d))", what,
                                e.status);
        if (cause != cudaSuccess)
            return adapter_fail(LLMC_ERR_DEVICE, "%s: CUDA error '%s' (llm.c stopped with exit(%d))", what,
                                cudaGetErrorString(cause), e.status);
        return adapter_fail(LLMC_ERR_DEVICE, "%s: llm.c stopped with exit(%d); its message is on stdout / stderr",
                            what, e.status);
    } catch (const std::bad_alloc&) {
        return adapter_fail(LLMC_ERR_ALLOC, "%s: out of host memory", what);
    } catch (const std::exception& e) {
        return adapter_fail(LLMC_ERR_DEVICE, "%s: %s", what, e.what());
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
        return adapter_fail(LLMC_ERR_DEVICE, "%s: no usable CUDA device (%s)", what,
                            status != cudaSuccess ? cudaGetErrorString(status) : "none found");
    return LLMC_OK;
}

/* ----------------------------------------------------------------------------- 4. checks */
static int check_config(const llmc_config* c, int code, const char* where) {
    const int fields[6] = {c->max_seq_len, c->vocab_size, c->padded_vocab_size, c->num_layers, c->num_heads,
                           c->channels};
    const char* names[6] = {"max_seq_len", "vocab_size", "padded_vocab_size", "num_layers", "num_heads", "channels"};
    const int maxima[6] = {1 << 16, 1 << 24, 1 << 24, 1 << 12, 1 << 12, 1 << 16};   // libllmc's bounds
    for (int i = 0; i < 6; i++) {
        if (fields[i] <= 0 || fields[i] > maxima[i])
            return adapter_fail(code, "%s: %s = %d, must lie in [1, %d]", where, names[i], fields[i], maxima[i]);
    }
    if (c->channels % c->num_heads)
        return adapter_fail(code, "%s: channels (%d) not divisible by num_heads (%d)", where, c->channels,
                            c->num_heads);
    if (c->padded_vocab_size < c->vocab_size)
        return adapter_fail(code, "%s: padded_vocab_size (%d) < vocab_size (%d)", where, c->padded_vocab_size,
                            c->vocab_size);
    return LLMC_OK;
}

static size_t num_parameters_of(const llmc_config* c) {
    const size_t Vp = c->padded_vocab_size, C = c->channels, maxT = c->max_seq_len, L = c->num_layers;
    return Vp * C + maxT * C + L * (12 * C * C + 13 * C) + 2 * C;   // the 16 tensors of llm.c's order
}

/* max_B, max_T against the model, and against llm.c's int element counts: B*T*Vp (logits), B*NH*T*T
 * (attention), B*T*4C (the MLP), each times the layer count where llm.c offsets a layer with int
 * arithmetic (layers = L: train_gpt2_fp32.cu; 1: train_gpt2.cu, whose model code uses size_t). */
static int check_sizes(const llmc_config* c, int max_B, int max_T, int layers, const char* where) {
    if (max_B <= 0 || max_T <= 0)
        return adapter_fail(LLMC_ERR_ARGUMENT, "%s: max_B = %d, max_T = %d must be positive", where, max_B, max_T);
    if (max_T > c->max_seq_len)
        return adapter_fail(LLMC_ERR_ARGUMENT, "%s: max_T = %d exceeds the model's max_seq_len %d", where, max_T,
                            c->max_seq_len);
    const double tokens = (double)max_B * max_T;
    if (tokens * c->padded_vocab_size > INT_MAX || layers * tokens * max_T * c->num_heads > INT_MAX ||
        layers * tokens * 4.0 * c->channels > INT_MAX)
        return adapter_fail(LLMC_ERR_ARGUMENT, "%s: max_B = %d x max_T = %d is too large for llm.c's int offsets "
                            "(B*T*Vp, %sB*NH*T*T and %sB*T*4C must stay below 2^31)", where, max_B, max_T,
                            layers > 1 ? "L*" : "", layers > 1 ? "L*" : "");
    return LLMC_OK;
}

static int check_tokens(const int* tokens, int n, int V, const char* name) {
    for (int i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= V)
            return adapter_fail(LLMC_ERR_TOKEN, "forward: %s[%d] = %d is outside [0, %d)", name, i, tokens[i], V);
    }
    return LLMC_OK;
}

static int check_forward(const int* inputs, const int* targets, int B, int T, int max_B, int max_T, int V) {
    if (inputs == NULL) return adapter_fail(LLMC_ERR_ARGUMENT, "forward: NULL inputs");
    if (B <= 0 || T <= 0 || B > max_B || T > max_T)
        return adapter_fail(LLMC_ERR_ARGUMENT, "forward: B = %d, T = %d outside the model's max_B = %d, max_T = %d",
                            B, T, max_B, max_T);
    int rc = check_tokens(inputs, B * T, V, "inputs");
    if (rc == LLMC_OK && targets != NULL) rc = check_tokens(targets, B * T, V, "targets");
    return rc;
}

static int check_update(const llmc_adamw* opt, int t) {
    if (opt == NULL) return adapter_fail(LLMC_ERR_ARGUMENT, "update: NULL settings");
    if (t < 1) return adapter_fail(LLMC_ERR_ARGUMENT, "update: step t = %d, must be >= 1", t);
    const float values[6] = {opt->learning_rate, opt->beta1, opt->beta2, opt->eps, opt->weight_decay, opt->grad_clip};
    const char* names[6] = {"learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip"};
    for (int i = 0; i < 6; i++) {
        if (!isfinite(values[i])) return adapter_fail(LLMC_ERR_ARGUMENT, "update: %s is not finite", names[i]);
    }
    return LLMC_OK;
}

/* The header of llm.c's model checkpoint at path: magic, a version this build reads (versions[0..n)),
 * the config, and the file size the config implies (bytes_per_param by version: 4 for v3, 2 for v5).
 * *version and *config are filled on success. */
static int read_checkpoint_header(const char* path, const int* versions, int n, int* version, llmc_config* config) {
    FILE* f = fopen(path, "rb");
    if (f == NULL) return adapter_fail(LLMC_ERR_FILE, "checkpoint '%s': cannot open", path);
    int32_t header[256];
    size_t got = fread(header, sizeof(int32_t), 256, f);
    fclose(f);
    if (got != 256) return adapter_fail(LLMC_ERR_FORMAT, "checkpoint '%s': shorter than its 1024-byte header", path);
    if (header[0] != 20240326)
        return adapter_fail(LLMC_ERR_FORMAT, "checkpoint '%s': header[0] magic is %d, expected 20240326", path,
                            header[0]);
    if (header[1] != 3 && header[1] != 5)
        return adapter_fail(LLMC_ERR_FORMAT, "checkpoint '%s': header[1] version is %d, expected 3 (fp32) or 5 (bf16)",
                            path, header[1]);
    int readable = 0;
    for (int i = 0; i < n; i++) readable |= header[1] == versions[i];
    if (!readable)
        return adapter_fail(LLMC_ERR_UNSUPPORTED, "checkpoint '%s': version %d, which llm.c's %s does not read", path,
                            header[1], LLMC_TRAIN_SOURCE);
    *config = {header[2], header[3], header[7], header[4], header[5], header[6]};
    char where[300];
    snprintf(where, sizeof(where), "checkpoint '%s': header", path);
    int rc = check_config(config, LLMC_ERR_FORMAT, where);
    if (rc) return rc;
    struct stat st;
    size_t expected = 1024 + num_parameters_of(config) * (header[1] == 3 ? 4 : 2);
    if (stat(path, &st) != 0 || (size_t)st.st_size != expected)
        return adapter_fail(LLMC_ERR_FORMAT, "checkpoint '%s': file size is %lld bytes, the header's model needs %zu",
                            path, (long long)st.st_size, expected);
    *version = header[1];
    return LLMC_OK;
}

/* Refuses, before anything is allocated, a model whose parameters, gradients and activations (bytes)
 * do not fit in the device's free memory; cudaMalloc failing later is still caught by guarded(). */
static int check_device_memory(size_t bytes, int max_B, int max_T, const char* where) {
    size_t free_bytes = 0, total_bytes = 0;
    cudaError_t status = cudaMemGetInfo(&free_bytes, &total_bytes);
    if (status != cudaSuccess)
        return adapter_fail(LLMC_ERR_DEVICE, "%s: cudaMemGetInfo: %s", where, cudaGetErrorString(status));
    if (bytes > free_bytes)
        return adapter_fail(LLMC_ERR_ALLOC, "%s: needs %zu MiB of device memory at max_B = %d, max_T = %d; %zu MiB "
                            "free", where, bytes >> 20, max_B, max_T, free_bytes >> 20);
    return LLMC_OK;
}

/* ----------------------------------------------------------------------------- library */
LLMC_API int llmc_set_num_threads(int n) {
    if (n < 1) return adapter_fail(LLMC_ERR_ARGUMENT, "set_num_threads: n = %d, must be >= 1", n);
    return adapter_ok();   // llm.c's CUDA code has no host threads to set
}

#endif
