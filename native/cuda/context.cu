// The library's process-wide state: the device and cuBLAS handle made once, the precision mode, and the
// growable scratch buffer. Also the identity / settings entry points of llmc.h. The error state and
// llmc_set_num_threads are the host C core's (native/core), shared with the other libraries.
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>

#include "common.cuh"
#include "../core/core.h"

// The CUDA sources' names for the core's error state. Every entry point starts with clear_error(), which
// sets the code to LLMC_OK and keeps the message of the last failed call (llmc.h's promise).
int set_error(int code, const char* fmt, ...) {
    va_list args;
    va_start(args, fmt);
    llmc_vfail(code, fmt, args);
    va_end(args);
    return code;
}

void clear_error() { llmc_ok(); }

// ----------------------------------------------------------------------------- device and cuBLAS
static std::once_flag g_init_once;
static int g_init_code = LLMC_OK;
static char g_init_message[1024] = "";
static cublasHandle_t g_cublas = nullptr;
static cublasLtHandle_t g_cublaslt = nullptr;
static void* g_lt_workspace = nullptr;
constexpr size_t LT_WORKSPACE_BYTES = 32u << 20; // cuBLASLt's recommendation for Hopper
static int g_precision = PRECISION_FP32;         // llmc_set_precision's mode
static void* g_scratch = nullptr;
static size_t g_scratch_bytes = 0;
static int g_device = 0; // llmc_set_device's choice: a data-parallel rank's GPU

static void init_device() {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
        g_init_code = LLMC_ERR_DEVICE;
        snprintf(g_init_message, sizeof(g_init_message), "no usable CUDA device: %s",
                 err != cudaSuccess ? cudaGetErrorString(err) : "cudaGetDeviceCount found 0 devices");
        return;
    }
    if (g_device >= count) {
        g_init_code = LLMC_ERR_DEVICE;
        snprintf(g_init_message, sizeof(g_init_message), "CUDA device %d asked for (llmc_set_device), %d visible",
                 g_device, count);
        return;
    }
    err = cudaSetDevice(g_device);
    if (err == cudaSuccess) err = cudaFree(nullptr); // creates the context now, so failures surface here
    if (err != cudaSuccess) {
        g_init_code = LLMC_ERR_DEVICE;
        snprintf(g_init_message, sizeof(g_init_message), "cannot use CUDA device %d: %s", g_device,
                 cudaGetErrorString(err));
        return;
    }
    cublasStatus_t st = cublasCreate(&g_cublas);
    if (st != CUBLAS_STATUS_SUCCESS) {
        g_init_code = LLMC_ERR_DEVICE;
        snprintf(g_init_message, sizeof(g_init_message), "cublasCreate failed: %s", cublasGetStatusString(st));
        return;
    }
    // The default math mode lets each GEMM's compute type decide: 32F is strict fp32, 32F_FAST_TF32 is TF32.
    st = cublasLtCreate(&g_cublaslt);
    if (st != CUBLAS_STATUS_SUCCESS) {
        g_init_code = LLMC_ERR_DEVICE;
        snprintf(g_init_message, sizeof(g_init_message), "cublasLtCreate failed: %s", cublasGetStatusString(st));
        return;
    }
    err = cudaMalloc(&g_lt_workspace, LT_WORKSPACE_BYTES);
    if (err != cudaSuccess) {
        g_init_code = LLMC_ERR_ALLOC;
        snprintf(g_init_message, sizeof(g_init_message), "cannot allocate the cuBLASLt workspace: %s",
                 cudaGetErrorString(err));
    }
}

int ensure_device() {
    std::call_once(g_init_once, init_device);
    if (g_init_code != LLMC_OK) return set_error(g_init_code, "%s", g_init_message);
    if (g_device != 0) CUDA_TRY(cudaSetDevice(g_device)); // the current device is per host thread
    return LLMC_OK;
}

cublasHandle_t cublas_handle() { return g_cublas; }
cublasLtHandle_t cublaslt_handle() { return g_cublaslt; }

void* cublaslt_workspace(size_t* bytes) {
    *bytes = LT_WORKSPACE_BYTES;
    return g_lt_workspace;
}

cublasComputeType_t cublas_compute_type() {
    return g_precision == PRECISION_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

int precision_mode() { return g_precision; }

int scratch_get(size_t bytes, void** out) {
    if (bytes > g_scratch_bytes) {
        CUDA_TRY(cudaFree(g_scratch));
        g_scratch = nullptr;
        g_scratch_bytes = 0;
        CUDA_TRY(cudaMalloc(&g_scratch, bytes));
        g_scratch_bytes = bytes;
    }
    *out = g_scratch;
    return LLMC_OK;
}

// ----------------------------------------------------------------------------- llmc.h: identity, settings
extern "C" {

const char* llmc_backend_name(void) { return "cuda"; }

const char* llmc_build_info(void) {
    static char info[320];
    int cublas_version = 0;
    if (g_cublas) cublasGetVersion(g_cublas, &cublas_version);
    snprintf(info, sizeof(info), "nvcc %d.%d, cudart %d (static), cuBLAS %s, %s, machine code sm_{%s} + PTX",
             __CUDACC_VER_MAJOR__, __CUDACC_VER_MINOR__, CUDART_VERSION,
             cublas_version ? std::to_string(cublas_version).c_str() : "(not yet initialized)", dist_nccl_version(),
             LLMC_CUDA_ARCHS);
    return info;
}

int llmc_set_precision(int mode) {
    clear_error();
    if (mode != PRECISION_FP32 && mode != PRECISION_TF32 && mode != PRECISION_BF16)
        return set_error(LLMC_ERR_ARGUMENT, "llmc_set_precision: mode must be 0 (fp32), 1 (tf32) or 2 (bf16), got %d",
                         mode);
    g_precision = mode;
    return LLMC_OK;
}

int llmc_device_count(int* count) {
    clear_error();
    if (!count) return set_error(LLMC_ERR_ARGUMENT, "llmc_device_count: count is NULL");
    *count = 0;
    cudaError_t err = cudaGetDeviceCount(count);
    if (err != cudaSuccess) {
        *count = 0;
        return set_error(LLMC_ERR_DEVICE, "llmc_device_count: %s", cudaGetErrorString(err));
    }
    return LLMC_OK;
}

int llmc_set_device(int device) {
    clear_error();
    if (device < 0) return set_error(LLMC_ERR_ARGUMENT, "llmc_set_device: device %d: must be >= 0", device);
    if (g_cublas && device != g_device)
        return set_error(LLMC_ERR_STATE,
                         "llmc_set_device: the library already runs on device %d; choose the "
                         "device before llmc_init and the first model",
                         g_device);
    g_device = device;
    return LLMC_OK;
}

int llmc_init(void) {
    clear_error();
    return ensure_device();
}

} // extern "C"
