// Shared by every CUDA source of libllmc_cuda.so: error reporting that returns codes (the library never
// exits), the library context (cuBLAS handle, precision mode), and the device launchers each file exposes.
//
// Convention for launchers (the *_gpu functions): device pointers, the default stream, sizes as size_t
// where a product of dimensions can pass 2^31 (B=16, T=1024 gives 16*12*1024*1024 attention entries per
// layer), and an int return: LLMC_OK, or LLMC_ERR_DEVICE with llmc_last_error() naming the failed call.
#pragma once
#include <cstddef>
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <cublasLt.h>

#include "../llmc.h"

// ----------------------------------------------------------------------------- errors
// Records code and message for llmc_last_error(); returns code so callers can write `return set_error(...)`.
int set_error(int code, const char* fmt, ...);
void clear_error();

// Evaluate a CUDA runtime call; on failure record where and return LLMC_ERR_DEVICE from the caller.
// A non-sticky error (a failed cudaMalloc) is also taken off cudaGetLastError, so the next launch check
// does not report it again.
#define CUDA_TRY(call)                                                                                 \
    do {                                                                                               \
        cudaError_t err_ = (call);                                                                     \
        if (err_ != cudaSuccess) {                                                                     \
            cudaGetLastError();                                                                        \
            return set_error(err_ == cudaErrorMemoryAllocation ? LLMC_ERR_ALLOC : LLMC_ERR_DEVICE,     \
                             "%s failed at %s:%d: %s", #call, __FILE__, __LINE__,                      \
                             cudaGetErrorString(err_));                                                \
        }                                                                                              \
    } while (0)

#define CUBLAS_TRY(call)                                                                               \
    do {                                                                                               \
        cublasStatus_t st_ = (call);                                                                   \
        if (st_ != CUBLAS_STATUS_SUCCESS) {                                                            \
            return set_error(LLMC_ERR_DEVICE, "%s failed at %s:%d: %s", #call, __FILE__, __LINE__,     \
                             cublasGetStatusString(st_));                                              \
        }                                                                                              \
    } while (0)

// After a kernel launch: a bad configuration shows up here, not at the launch.
#define LAUNCH_CHECK() CUDA_TRY(cudaGetLastError())

// Propagate an error code from a launcher.
#define TRY(call)                                                                                      \
    do {                                                                                               \
        int rc_ = (call);                                                                              \
        if (rc_ != LLMC_OK) return rc_;                                                                \
    } while (0)

template <typename T>
__host__ __device__ inline T ceil_div(T a, T b) { return (a + b - 1) / b; }

// ----------------------------------------------------------------------------- context (context.cu)
// ensure_device(): once per process, find a GPU and make the cuBLAS handle. Every entry point calls it.
int ensure_device();
cublasHandle_t cublas_handle();
cublasLtHandle_t cublaslt_handle();
void* cublaslt_workspace(size_t* bytes);
cublasComputeType_t cublas_compute_type();   // 32F (strict) or 32F_FAST_TF32, from llmc_set_precision
// A device scratch buffer that grows on demand: partial sums of the deterministic reductions, the
// pointer arrays of batched GEMMs. Users are stream-ordered, so one buffer serves them all.
int scratch_get(size_t bytes, void** out);

// ----------------------------------------------------------------------------- launchers
// encoder.cu. Token buckets: the positions of each distinct token, built on the host, so the backward
// sums a token's rows in a fixed order (deterministic, no atomics).
struct TokenBuckets {
    int num_buckets;    // distinct tokens
    int* tokens;        // (num_buckets) device
    int* offsets;       // (num_buckets+1) device: positions[offsets[i]:offsets[i+1]] hold token tokens[i]
    int* positions;     // (B*T) device, ascending within a bucket
    size_t capacity;    // positions allocated
};
int token_buckets_build(TokenBuckets* buckets, const int* host_inp, int N, int V);
void token_buckets_free(TokenBuckets* buckets);
int encoder_forward_gpu(float* out, const int* inp, const float* wte, const float* wpe, int B, int T, int C);
int encoder_backward_gpu(float* dwte, float* dwpe, const float* dout, const TokenBuckets* buckets,
                         int B, int T, int C);

// reduce.cu: out[c] += sum over rows r of in[r, c] (R x cols row-major), in a fixed order.
int column_sum_gpu(float* out, const float* in, size_t R, size_t cols);
int layernorm_param_grads_gpu(float* dweight, float* dbias, const float* dout, const float* inp,
                              const float* mean, const float* rstd, size_t N, int C);
// global_norm.cu: sum of x (or of x^2: the squared global norm) in float64, deterministic; result on the host.
int sum_gpu(double* host_out, const float* x, size_t n, bool squares);

// layernorm.cu (N = B*T rows of C)
int layernorm_forward_gpu(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                          const float* bias, size_t N, int C);
int layernorm_backward_gpu(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                           const float* weight, const float* mean, const float* rstd, size_t N, int C);

// matmul.cu: out (N,OC) = inp (N,C) @ weight(OC,C)^T + bias (+ residual, when not NULL); backward
// accumulates into dweight, dbias and, when accumulate_dinp, into dinp (else overwrites it).
int matmul_forward_gpu(float* out, const float* inp, const float* weight, const float* bias, const float* residual,
                       size_t N, int C, int OC);
int matmul_backward_gpu(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, size_t N, int C, int OC, bool accumulate_dinp);
// Column-major GEMM, C = alpha op(A) op(B) + beta C, in the precision of the context.
int gemm(bool transA, bool transB, int m, int n, int k, float alpha, const float* A, int lda, const float* Bm, int ldb,
         float beta, float* Cm, int ldc);
// Column-major batched GEMM over arrays of device pointers, C = alpha op(A) op(B) + beta C, in the
// precision of the context.
int gemm_batched(bool transA, bool transB, int m, int n, int k, float alpha, const float* const* A, int lda,
                 const float* const* Bm, int ldb, float beta, float* const* Cm, int ldc, int batch);

// attention.cu, fused (no (B,NH,T,T) tensor): inp (B,T,3C) -> out (B,T,C) and lse (B,NH,T), the logsumexp
// of each row of scaled scores, kept for the backward. The backward reads inp, out and lse; delta (B,NH,T)
// is its scratch; dinp (B,T,3C) is added to or overwritten. Head sizes up to ATTENTION_MAX_HEAD_SIZE.
constexpr int ATTENTION_MAX_HEAD_SIZE = 128;
int attention_forward_gpu(float* out, float* lse, const float* inp, int B, int T, int C, int NH);
int attention_backward_gpu(float* dinp, float* delta, const float* dout, const float* inp, const float* out,
                           const float* lse, int B, int T, int C, int NH, bool accumulate_dinp);
// att (B,NH,T,T), the softmax probabilities, from inp and the forward's lse (kernel-level API only)
int attention_probs_gpu(float* att, const float* inp, const float* lse, int B, int T, int C, int NH);

// gelu.cu
int gelu_forward_gpu(float* out, const float* inp, size_t N);
int gelu_backward_gpu(float* dinp, const float* inp, const float* dout, size_t N, bool accumulate);

// residual.cu
int residual_forward_gpu(float* out, const float* inp1, const float* inp2, size_t N);
int add_inplace_gpu(float* dst, const float* src, size_t N);   // dst += src (residual backward)

// classifier.cu (N = B*T rows of Vp logits, of which the first V are real)
// Fused path of the model: the forward stores per-row (max, sum of exp) beside the losses; the backward
// writes dlogits for any chunk of rows from the logits and those stats, never materializing probabilities.
int classifier_forward_gpu(float* losses, float2* stats, const float* logits, const int* targets,
                           size_t N, int V, int Vp);
int classifier_backward_gpu(float* dlogits, const float* logits, const float2* stats, const int* targets,
                            float dloss, size_t N, int V, int Vp);
// The three separate llm.c kernels, for the kernel-level API.
int softmax_forward_gpu(float* probs, const float* logits, size_t N, int V, int Vp);
int crossentropy_forward_gpu(float* losses, const float* probs, const int* targets, size_t N, int Vp);
int crossentropy_softmax_backward_gpu(float* dlogits, const float* dlosses, const float* probs,
                                      const int* targets, size_t N, int V, int Vp);

// adamw.cu: one tensor's update; grad_scale folds in global-norm clipping.
int adamw_gpu(float* params, const float* grads, float* m, float* v, size_t n, float lr, float beta1,
              float beta2, float eps, float weight_decay, float bias_correction1, float bias_correction2,
              float grad_scale);
