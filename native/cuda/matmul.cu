// Linear layers through cuBLAS(Lt). Row-major (N,C) @ (OC,C)^T is, in cuBLAS's column-major view, the
// product weight^T-as-stored (C x OC, transposed) times inp (C x N). Accumulation is always fp32.
//  - fp32 / TF32 (the context's compute type, llmc_set_precision): fp32 operands.
//  - bf16 mixed precision: bf16 operands, the output bf16 (activations) or fp32 (the residual stream,
//    weight gradients, which accumulate in fp32).
// The forward is one cuBLASLt call: the bias comes from the epilogue, a residual stream, when given, is the
// C operand (D = A B + 1 * C + bias), so the block's projections write residual2 / residual3 directly, and
// in bf16 the MLP's GELU can be the epilogue too (GELU_AUX_BIAS keeps the pre-activation for the backward,
// whose dinp product then applies GELU's derivative in its own epilogue, DGELU).
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

#include <cublasLt.h>

#include "common.cuh"

int gemm(bool transA, bool transB, int m, int n, int k, float alpha, const float* A, int lda, const float* Bm, int ldb,
         float beta, float* Cm, int ldc) {
    CUBLAS_TRY(cublasGemmEx(cublas_handle(), transA ? CUBLAS_OP_T : CUBLAS_OP_N, transB ? CUBLAS_OP_T : CUBLAS_OP_N, m,
                            n, k, &alpha, A, CUDA_R_32F, lda, Bm, CUDA_R_32F, ldb, &beta, Cm, CUDA_R_32F, ldc,
                            cublas_compute_type(), CUBLAS_GEMM_DEFAULT));
    return LLMC_OK;
}

int gemm_batched(bool transA, bool transB, int m, int n, int k, float alpha, const float* const* A, int lda,
                 const float* const* Bm, int ldb, float beta, float* const* Cm, int ldc, int batch) {
    CUBLAS_TRY(cublasGemmBatchedEx(cublas_handle(), transA ? CUBLAS_OP_T : CUBLAS_OP_N,
                                   transB ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &alpha, (const void* const*)A,
                                   CUDA_R_32F, lda, (const void* const*)Bm, CUDA_R_32F, ldb, &beta, (void* const*)Cm,
                                   CUDA_R_32F, ldc, batch, cublas_compute_type(), CUBLAS_GEMM_DEFAULT));
    return LLMC_OK;
}

// the largest power of two (<= 256) dividing the address: what cuBLASLt may assume about a pointer
static uint32_t alignment(const void* p) {
    uint32_t a = 256;
    while (a > 4 && (uintptr_t)p % a) a /= 2;
    return a;
}

// ----------------------------------------------------------------------------- one cuBLASLt call
// D (m x n, column-major) = op(A) op(B) + beta C (C: D's type and layout) + bias, then the epilogue.
struct LtMatmul {
    bool transA, transB;
    int m, n, k;
    const void* A;
    int lda;
    const void* B;
    int ldb;
    cudaDataType_t ab_type; // A and B
    void* D;
    int ldd;
    cudaDataType_t d_type;
    const void* C; // read when beta != 0
    float beta;
    cublasComputeType_t compute;
    cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    const void* bias = nullptr; // (m) of d_type: BIAS and GELU_AUX_BIAS
    void* aux = nullptr;        // (m x n, ld m) of d_type: GELU_AUX_BIAS writes it, DGELU reads it
};

// RAII for the cuBLASLt descriptors of one call
struct LtDescriptors {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
    ~LtDescriptors() {
        if (pref) cublasLtMatmulPreferenceDestroy(pref);
        if (d) cublasLtMatrixLayoutDestroy(d);
        if (b) cublasLtMatrixLayoutDestroy(b);
        if (a) cublasLtMatrixLayoutDestroy(a);
        if (desc) cublasLtMatmulDescDestroy(desc);
    }
};

// The heuristic's first choice, cached per call shape: a function of the shapes only, so runs repeat bit for
// bit, and the heuristic (tens of microseconds of host time) runs once per shape instead of every call.
using LtKey = std::tuple<int, int, int, int, int, int, int, int, int, int, int, int, int, int, int, int>;
struct LtChoice {
    bool found;
    cublasLtMatmulAlgo_t algo;
};
static std::mutex g_lt_cache_mutex;
static std::map<LtKey, LtChoice> g_lt_cache;

// LLMC_OK, LLMC_ERR_UNSUPPORTED (with a message) when cuBLASLt has no algorithm for the call (the caller may
// fall back to a plainer epilogue), or LLMC_ERR_DEVICE
static int lt_matmul(const LtMatmul& p) {
    LtDescriptors lt;
    cublasOperation_t opA = p.transA ? CUBLAS_OP_T : CUBLAS_OP_N, opB = p.transB ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_TRY(cublasLtMatmulDescCreate(&lt.desc, p.compute, CUDA_R_32F));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(lt.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof(opA)));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(lt.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof(opB)));
    if (p.epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
        CUBLAS_TRY(
            cublasLtMatmulDescSetAttribute(lt.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &p.epilogue, sizeof(p.epilogue)));
    }
    if (p.bias) {
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(lt.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias, sizeof(p.bias)));
    }
    if (p.aux) {
        int64_t ld = p.m;
        CUBLAS_TRY(
            cublasLtMatmulDescSetAttribute(lt.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &p.aux, sizeof(p.aux)));
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(lt.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof(ld)));
    }
    // layouts describe storage before the transpose
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&lt.a, p.ab_type, p.transA ? p.k : p.m, p.transA ? p.m : p.k, p.lda));
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&lt.b, p.ab_type, p.transB ? p.n : p.k, p.transB ? p.k : p.n, p.ldb));
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&lt.d, p.d_type, p.m, p.n, p.ldd));
    const void* c = p.beta != 0.0f ? p.C : p.D; // read with beta = 0: never affects the result
    uint32_t align[5] = {alignment(p.A), alignment(p.B), alignment(c), alignment(p.D), p.aux ? alignment(p.aux) : 256u};
    LtKey key{p.transA,
              p.transB,
              p.m,
              p.n,
              p.k,
              p.lda,
              p.ldb,
              p.ldd,
              (int)p.ab_type * 64 + (int)p.d_type,
              (int)p.compute,
              (int)p.epilogue * 2 + (p.bias != nullptr),
              p.beta != 0.0f,
              (int)align[0],
              (int)align[1],
              (int)(align[2] * 1024 + align[3]),
              (int)align[4]};
    size_t workspace_bytes;
    void* workspace = cublaslt_workspace(&workspace_bytes);
    LtChoice choice;
    {
        std::lock_guard<std::mutex> lock(g_lt_cache_mutex);
        auto it = g_lt_cache.find(key);
        if (it != g_lt_cache.end()) {
            choice = it->second;
        } else {
            CUBLAS_TRY(cublasLtMatmulPreferenceCreate(&lt.pref));
            CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(lt.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                            &workspace_bytes, sizeof(workspace_bytes)));
            const cublasLtMatmulPreferenceAttributes_t which[4] = {
                CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
            for (int i = 0; i < 4; i++)
                CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(lt.pref, which[i], &align[i], sizeof(align[i])));
            cublasLtMatmulHeuristicResult_t heuristic;
            int found = 0;
            cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(cublaslt_handle(), lt.desc, lt.a, lt.b, lt.d, lt.d,
                                                               lt.pref, 1, &heuristic, &found);
            // a refusal (NOT_SUPPORTED, INVALID_VALUE for an epilogue's constraints) is "no algorithm"
            choice.found = st == CUBLAS_STATUS_SUCCESS && found > 0;
            if (choice.found) choice.algo = heuristic.algo;
            g_lt_cache[key] = choice;
        }
    }
    if (!choice.found)
        return set_error(LLMC_ERR_UNSUPPORTED, "cuBLASLt has no algorithm for the matmul m=%d n=%d k=%d (epilogue %d)",
                         p.m, p.n, p.k, (int)p.epilogue);
    const float alpha = 1.0f;
    CUBLAS_TRY(cublasLtMatmul(cublaslt_handle(), lt.desc, &alpha, p.A, lt.a, p.B, lt.b, &p.beta, c, lt.d, p.D, lt.d,
                              &choice.algo, workspace, workspace_bytes, 0));
    return LLMC_OK;
}

// out[n, o] = bias[o] (+ residual[n, o]): the slow path, for a bias cuBLASLt's epilogue cannot read
template <typename T>
__global__ void bias_residual_kernel(T* out, const T* bias, const float* residual, size_t N, int OC) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < N * OC)
        out[idx] = from_f32<T>((bias ? to_f32(bias[idx % OC]) : 0.0f) + (residual ? residual[idx] : 0.0f));
}

template <typename T>
static constexpr cudaDataType_t data_type() {
    return sizeof(T) == 4 ? CUDA_R_32F : CUDA_R_16BF;
}

// out (N,OC) = inp (N,C) weight(OC,C)^T + bias (+ residual) with In operands and an Out result; when gelu_pre
// is given, out = gelu(x) and gelu_pre = x (x the linear output, bias included).
template <typename In, typename Out>
static int linear_forward(Out* out, Out* gelu_pre, const In* inp, const In* weight, const Out* bias,
                          const float* residual, size_t N, int C, int OC, cublasComputeType_t compute) {
    LtMatmul p = {true,
                  false,
                  OC,
                  (int)N,
                  C,
                  weight,
                  C,
                  inp,
                  C,
                  data_type<In>(),
                  out,
                  OC,
                  data_type<Out>(),
                  residual,
                  residual ? 1.0f : 0.0f,
                  compute};
    if (gelu_pre && !residual && (!bias || alignment(bias) >= 16)) {
        p.epilogue = bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
        p.bias = bias;
        p.aux = gelu_pre;
        int rc = lt_matmul(p);
        if (rc != LLMC_ERR_UNSUPPORTED) return rc;
        clear_error(); // no fused algorithm for this shape: bias epilogue, then the GELU kernel
    }
    Out* linear = gelu_pre ? gelu_pre : out;
    p.D = linear;
    p.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    p.bias = nullptr;
    p.aux = nullptr;
    if (bias && alignment(bias) >= 16) {
        p.epilogue = CUBLASLT_EPILOGUE_BIAS;
        p.bias = bias;
    } else if (bias) {
        bias_residual_kernel<<<(unsigned)ceil_div(N * OC, (size_t)256), 256>>>(linear, bias, residual, N, OC);
        LAUNCH_CHECK();
        p.C = linear;
        p.beta = 1.0f;
    }
    TRY(lt_matmul(p));
    if (gelu_pre) TRY(gelu_forward_gpu(out, (const Out*)gelu_pre, N * OC));
    return LLMC_OK;
}

// inp (N,C), weight (OC,C), bias (OC) or NULL, residual (N,OC) or NULL -> out (N,OC) = inp weight^T + bias + residual
int matmul_forward_gpu(float* out, const float* inp, const float* weight, const float* bias, const float* residual,
                       size_t N, int C, int OC) {
    return linear_forward<float, float>(out, nullptr, inp, weight, bias, residual, N, C, OC, cublas_compute_type());
}

// dout (N,OC) -> dinp (N,C) = dout @ weight; dweight (OC,C) += dout^T @ inp; dbias (OC) += column sums of dout
int matmul_backward_gpu(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, size_t N, int C, int OC, bool accumulate_dinp) {
    TRY(gemm(false, false, C, (int)N, OC, 1.0f, weight, C, dout, OC, accumulate_dinp ? 1.0f : 0.0f, dinp, C));
    TRY(gemm(false, true, C, OC, (int)N, 1.0f, inp, C, dout, OC, 1.0f, dweight, C));
    if (dbias) TRY(column_sum_gpu(dbias, dout, N, (size_t)OC));
    return LLMC_OK;
}

// ----------------------------------------------------------------------------- bf16 operands
int matmul_forward_bf16_gpu(bf16* out, bf16* gelu_pre, const bf16* inp, const bf16* weight, const bf16* bias, size_t N,
                            int C, int OC) {
    return linear_forward<bf16, bf16>(out, gelu_pre, inp, weight, bias, nullptr, N, C, OC, CUBLAS_COMPUTE_32F);
}

int matmul_forward_bf16_residual_gpu(float* out, const bf16* inp, const bf16* weight, const float* bias,
                                     const float* residual, size_t N, int C, int OC) {
    return linear_forward<bf16, float>(out, nullptr, inp, weight, bias, residual, N, C, OC, CUBLAS_COMPUTE_32F);
}

int matmul_backward_dinp_bf16_gpu(bf16* dinp, const bf16* dout, const bf16* weight, const bf16* gelu_pre, size_t N,
                                  int C, int OC) {
    // column-major: dinp^T (C x N) = weight-as-stored (C x OC) dout^T (OC x N)
    LtMatmul p = {false, false,       C,    (int)N, OC,          weight,  C,    dout,
                  OC,    CUDA_R_16BF, dinp, C,      CUDA_R_16BF, nullptr, 0.0f, CUBLAS_COMPUTE_32F};
    if (gelu_pre) {
        p.epilogue = CUBLASLT_EPILOGUE_DGELU;
        p.aux = (void*)gelu_pre;
        int rc = lt_matmul(p);
        if (rc != LLMC_ERR_UNSUPPORTED) return rc;
        clear_error();
        p.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
        p.aux = nullptr;
    }
    TRY(lt_matmul(p));
    if (gelu_pre) TRY(gelu_backward_gpu(dinp, gelu_pre, (const bf16*)dinp, N * C, false));
    return LLMC_OK;
}

int matmul_backward_dweight_bf16_gpu(float* dweight, const bf16* dout, const bf16* inp, size_t N, int C, int OC) {
    // column-major: dweight^T (C x OC) += inp^T-as-stored (C x N) dout (N x OC)
    LtMatmul p = {false, true,        C,       OC, (int)N,     inp,     C,    dout,
                  OC,    CUDA_R_16BF, dweight, C,  CUDA_R_32F, dweight, 1.0f, CUBLAS_COMPUTE_32F};
    return lt_matmul(p);
}
