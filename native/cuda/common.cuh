// Shared by every CUDA source of libllmc_cuda.so: error reporting that returns codes (the library never
// exits), the library context (cuBLAS handle, precision mode), and the device launchers each file exposes.
//
// Convention for launchers (the *_gpu functions): device pointers, the default stream, sizes as size_t
// where a product of dimensions can pass 2^31 (B=16, T=1024 gives 16*12*1024*1024 attention entries per
// layer), and an int return: LLMC_OK, or LLMC_ERR_DEVICE with llmc_last_error() naming the failed call.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cuda_bf16.h>
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
#define CUDA_TRY(call)                                                                                       \
    do {                                                                                                     \
        cudaError_t err_ = (call);                                                                           \
        if (err_ != cudaSuccess) {                                                                           \
            cudaGetLastError();                                                                              \
            return set_error(err_ == cudaErrorMemoryAllocation ? LLMC_ERR_ALLOC : LLMC_ERR_DEVICE,           \
                             "%s failed at %s:%d: %s", #call, __FILE__, __LINE__, cudaGetErrorString(err_)); \
        }                                                                                                    \
    } while (0)

#define CUBLAS_TRY(call)                                                                           \
    do {                                                                                           \
        cublasStatus_t st_ = (call);                                                               \
        if (st_ != CUBLAS_STATUS_SUCCESS) {                                                        \
            return set_error(LLMC_ERR_DEVICE, "%s failed at %s:%d: %s", #call, __FILE__, __LINE__, \
                             cublasGetStatusString(st_));                                          \
        }                                                                                          \
    } while (0)

// After a kernel launch: a bad configuration shows up here, not at the launch.
#define LAUNCH_CHECK() CUDA_TRY(cudaGetLastError())

// Propagate an error code from a launcher.
#define TRY(call)                       \
    do {                                \
        int rc_ = (call);               \
        if (rc_ != LLMC_OK) return rc_; \
    } while (0)

template <typename T>
__host__ __device__ inline T ceil_div(T a, T b) {
    return (a + b - 1) / b;
}

// ----------------------------------------------------------------------------- bf16
typedef __nv_bfloat16 bf16;

// Loads and stores of the kernels templated on the storage type: float, or bf16 computed in fp32.
__device__ inline float to_f32(float x) { return x; }
__device__ inline float to_f32(bf16 x) { return __bfloat162float(x); }
template <typename T>
__device__ inline T from_f32(float x);
template <>
__device__ inline float from_f32<float>(float x) {
    return x;
}
template <>
__device__ inline bf16 from_f32<bf16>(float x) {
    return __float2bfloat16_rn(x);
}

// Stochastic rounding of x to bf16 (llm.c's master-weight write-back), unbiased: x's 16 low bits decide the
// probability of rounding up. The random bits are a hash of (seed, element index, x's own bits), so the
// bf16 copy is a pure function of the fp32 value and its position: every run, and a model given the same
// master weights through llmc_set_params, gets the same bits.
__device__ inline uint32_t hash32(uint32_t x) { // a 32-bit integer finalizer (two multiply-xorshift rounds)
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}
__device__ inline bf16 bf16_stochastic(float x, size_t index, uint32_t seed) {
    uint32_t bits = __float_as_uint(x);
    if ((bits & 0x7f800000u) == 0x7f800000u) return __float2bfloat16_rn(x); // inf, NaN: as they are
    uint32_t noise = hash32(bits ^ hash32((uint32_t)index ^ hash32(seed ^ (uint32_t)(index >> 32))));
    uint32_t up = (bits + (noise & 0xffffu)) & 0xffff0000u;
    if ((up & 0x7f800000u) == 0x7f800000u) up = bits & 0xffff0000u; // never round a finite value to inf
    return __ushort_as_bfloat16((unsigned short)(up >> 16));
}
constexpr uint32_t STOCHASTIC_ROUNDING_SEED = 0x6c6c6d63u; // "llmc"

// 16 bytes of a tensor, for vector loads and stores: 4 floats or 8 bf16
template <typename T>
struct alignas(16) Pack16 {
    static constexpr int N = 16 / sizeof(T);
    T x[N];
};

// ----------------------------------------------------------------------------- context (context.cu)
// ensure_device(): once per process, find a GPU and make the cuBLAS handle. Every entry point calls it.
int ensure_device();
cublasHandle_t cublas_handle();
cublasLtHandle_t cublaslt_handle();
void* cublaslt_workspace(size_t* bytes);
cublasComputeType_t cublas_compute_type(); // 32F (strict) or 32F_FAST_TF32, from llmc_set_precision
// llmc_set_precision's mode: models made in PRECISION_BF16 are bf16 mixed precision (mixed.cu), and the
// kernel-level matmul and attention run their bf16 versions
enum { PRECISION_FP32 = 0, PRECISION_TF32 = 1, PRECISION_BF16 = 2 };
int precision_mode();
// A device scratch buffer that grows on demand: partial sums of the deterministic reductions, the
// pointer arrays of batched GEMMs. Users are stream-ordered, so one buffer serves them all.
int scratch_get(size_t bytes, void** out);

// ----------------------------------------------------------------------------- data parallelism (distributed.cu)
struct DistComm; // one NCCL communicator; every function returns LLMC_ERR_UNSUPPORTED in a build without NCCL
const char* dist_nccl_version();
int dist_unique_id(unsigned char* id);
int dist_create(const unsigned char* id, int rank, int world_size, DistComm** out);
void dist_free(DistComm* d);
int dist_allreduce_mean(DistComm* d, float* data, size_t n);
int dist_reduce_scatter_mean(DistComm* d, float* data, size_t shard);
int dist_allgather(DistComm* d, float* data, size_t shard);
int dist_sum_doubles(DistComm* d, double* values, int n);
int dist_mean_floats(DistComm* d, float* values, int n);

// ----------------------------------------------------------------------------- launchers
// encoder.cu. Token buckets: the positions of each distinct token, built on the host, so the backward
// sums a token's rows in a fixed order (deterministic, no atomics).
struct TokenBuckets {
    int num_buckets; // distinct tokens
    int* tokens;     // (num_buckets) device
    int* offsets;    // (num_buckets+1) device: positions[offsets[i]:offsets[i+1]] hold token tokens[i]
    int* positions;  // (B*T) device, ascending within a bucket
    size_t capacity; // positions allocated
};
int token_buckets_build(TokenBuckets* buckets, const int* host_inp, int N, int V);
void token_buckets_free(TokenBuckets* buckets);
int encoder_forward_gpu(float* out, const int* inp, const float* wte, const float* wpe, int B, int T, int C);
int encoder_backward_gpu(float* dwte, float* dwpe, const float* dout, const TokenBuckets* buckets, int B, int T, int C);

// reduce.cu: out[c] += sum over rows r of in[r, c] (R x cols row-major), in a fixed order; E float or bf16.
template <typename E>
int column_sum_gpu(float* out, const E* in, size_t R, size_t cols);
template <typename E>
int layernorm_param_grads_gpu(float* dweight, float* dbias, const E* dout, const float* inp, const float* mean,
                              const float* rstd, size_t N, int C);
// out0[c] += sum over chunks g of partial[0][g][c], out1 (or NULL) likewise of partial[1]: partial (2?, chunks, cols)
int sum_chunks_gpu(float* out0, float* out1, const float* partial, size_t cols, int chunks);
// global_norm.cu: sum of x (or of x^2: the squared global norm) in float64, deterministic; result on the host.
int sum_gpu(double* host_out, const float* x, size_t n, bool squares);

// layernorm.cu (N = B*T rows of C). out: float, or bf16 in mixed precision (inp, parameters, statistics fp32).
template <typename E>
int layernorm_forward_gpu(E* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias,
                          size_t N, int C);
int layernorm_backward_gpu(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                           const float* weight, const float* mean, const float* rstd, size_t N, int C);
// mixed precision: dout bf16; dinp (fp32) += the gradient, and dinp_bf16 = the updated dinp rounded
int layernorm_backward_bf16_gpu(float* dinp, bf16* dinp_bf16, float* dweight, float* dbias, const bf16* dout,
                                const float* inp, const float* weight, const float* mean, const float* rstd, size_t N,
                                int C);

// matmul.cu: out (N,OC) = inp (N,C) @ weight(OC,C)^T + bias (+ residual, when not NULL); backward
// accumulates into dweight, dbias and, when accumulate_dinp, into dinp (else overwrites it).
int matmul_forward_gpu(float* out, const float* inp, const float* weight, const float* bias, const float* residual,
                       size_t N, int C, int OC);
int matmul_backward_gpu(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, size_t N, int C, int OC, bool accumulate_dinp);
// bf16 operands (mixed precision), fp32 accumulation. Forward: out (N,OC) bf16 = inp weight^T + bias; with
// gelu_pre given, out = gelu(x) and gelu_pre = x (the pre-activation the backward needs).
int matmul_forward_bf16_gpu(bf16* out, bf16* gelu_pre, const bf16* inp, const bf16* weight, const bf16* bias, size_t N,
                            int C, int OC);
// out (N,OC) fp32 = inp weight^T + bias + residual: a projection writing the fp32 residual stream
int matmul_forward_bf16_residual_gpu(float* out, const bf16* inp, const bf16* weight, const float* bias,
                                     const float* residual, size_t N, int C, int OC);
// dinp (N,C) = dout weight, overwritten; times gelu'(gelu_pre) when gelu_pre (N,C) is given
int matmul_backward_dinp_bf16_gpu(bf16* dinp, const bf16* dout, const bf16* weight, const bf16* gelu_pre, size_t N,
                                  int C, int OC);
// dweight (OC,C) fp32 += dout^T inp
int matmul_backward_dweight_bf16_gpu(float* dweight, const bf16* dout, const bf16* inp, size_t N, int C, int OC);
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
int check_attention_head_size(int hs);
int attention_forward_gpu(float* out, float* lse, const float* inp, int B, int T, int C, int NH);
int attention_backward_gpu(float* dinp, float* delta, const float* dout, const float* inp, const float* out,
                           const float* lse, int B, int T, int C, int NH, bool accumulate_dinp);
// attention_bf16.cu, mixed precision (bf16 tensors, fp32 lse / delta); the backward overwrites dinp
int attention_forward_bf16_gpu(bf16* out, float* lse, const bf16* inp, int B, int T, int C, int NH);
int attention_backward_bf16_gpu(bf16* dinp, float* delta, const bf16* dout, const bf16* inp, const bf16* out,
                                const float* lse, int B, int T, int C, int NH);
// attention.cu's fp32-arithmetic kernels for any head size, on float or bf16 storage
template <typename E>
int attention_forward_simt_gpu(E* out, float* lse, const E* inp, int B, int T, int C, int NH);
template <typename E>
int attention_delta_gpu(float* delta, const E* dout, const E* out, int B, int T, int C, int NH);
template <typename E>
int attention_backward_simt_gpu(E* dinp, const E* dout, const E* inp, const float* lse, const float* delta, int B,
                                int T, int C, int NH, bool accumulate_dinp);
// att (B,NH,T,T), the softmax probabilities, from inp and the forward's lse (kernel-level API only)
int attention_probs_gpu(float* att, const float* inp, const float* lse, int B, int T, int C, int NH);

// gelu.cu, E float or bf16
template <typename E>
int gelu_forward_gpu(E* out, const E* inp, size_t N);
template <typename E>
int gelu_backward_gpu(E* dinp, const E* inp, const E* dout, size_t N, bool accumulate);

// residual.cu
int residual_forward_gpu(float* out, const float* inp1, const float* inp2, size_t N);
int add_inplace_gpu(float* dst, const float* src, size_t N); // dst += src (residual backward)
int to_bf16_gpu(bf16* out, const float* in, size_t N);       // round to nearest even
int to_float_gpu(float* out, const bf16* in, size_t N);
int add_bf16_gpu(float* dst, const bf16* src, size_t N); // dst += src

// classifier.cu (N = B*T rows of Vp logits, of which the first V are real)
// Fused path of the model: the forward stores per-row (max, sum of exp) beside the losses; the backward
// writes dlogits for any chunk of rows from the logits and those stats, never materializing probabilities.
// Logits E: float, or bf16 in mixed precision (the statistics and losses fp32 either way).
template <typename E>
int classifier_forward_gpu(float* losses, float2* stats, const E* logits, const int* targets, size_t N, int V, int Vp);
template <typename E>
int classifier_backward_gpu(E* dlogits, const E* logits, const float2* stats, const int* targets, float dloss, size_t N,
                            int V, int Vp);
// The three separate llm.c kernels, for the kernel-level API.
int softmax_forward_gpu(float* probs, const float* logits, size_t N, int V, int Vp);
int crossentropy_forward_gpu(float* losses, const float* probs, const int* targets, size_t N, int Vp);
int crossentropy_softmax_backward_gpu(float* dlogits, const float* dlosses, const float* probs, const int* targets,
                                      size_t N, int V, int Vp);

// adamw.cu: one tensor's update; grad_scale folds in global-norm clipping. params_bf16 (or NULL): the
// mixed-precision copy, written stochastically rounded; index0: the flat index of params[0] in the model.
int adamw_gpu(float* params, bf16* params_bf16, size_t index0, const float* grads, float* m, float* v, size_t n,
              float lr, float beta1, float beta2, float eps, float weight_decay, float bias_correction1,
              float bias_correction2, float grad_scale);
// the bf16 copy of all n master weights, rounded as adamw_gpu rounds it
int round_params_bf16_gpu(bf16* params_bf16, const float* params, size_t n);

// ----------------------------------------------------------------------------- mixed.cu
// bf16 mixed-precision training state of a model made in PRECISION_BF16: the bf16 copy of the weights and
// the activations. model.cu owns the rest (fp32 master weights, fp32 gradients, AdamW state, tokens).
struct MixedModel;
// param_sizes: the 16 tensors' element counts, llm.c's order
int mixed_create(const llmc_config& config, int max_B, int max_T, const size_t* param_sizes, MixedModel** out);
void mixed_free(MixedModel* mixed);
bf16* mixed_params_bf16(MixedModel* mixed);
int mixed_forward(MixedModel* mixed, const float* params, const int* inputs, const int* targets, int B, int T);
const float* mixed_losses(const MixedModel* mixed); // (B,T) of the last forward with targets
int mixed_backward(MixedModel* mixed, const float* params, float* grads, const int* targets,
                   const TokenBuckets* buckets, int B, int T);
int mixed_get_logits(const MixedModel* mixed, float* host_dst, size_t n);
