// Linear layers through cuBLAS. Row-major (N,C) @ (OC,C)^T is, in cuBLAS's column-major view, the
// product weight^T-as-stored (C x OC, transposed) times inp (C x N). Strict fp32 or TF32 follows the
// context's compute type (llmc_set_precision); accumulation is always fp32.
// The forward is one cuBLASLt call: the bias comes from the epilogue and a residual stream, when given,
// is the C operand (D = A B + 1 * C + bias), so the block's projections write residual2 / residual3
// directly, with no extra pass over the activations.
#include <cstdint>

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
                                   CUDA_R_32F, lda, (const void* const*)Bm, CUDA_R_32F, ldb, &beta,
                                   (void* const*)Cm, CUDA_R_32F, ldc, batch, cublas_compute_type(),
                                   CUBLAS_GEMM_DEFAULT));
    return LLMC_OK;
}

// out[n, o] = bias[o] (+ residual[n, o]): the slow path, for a bias cuBLASLt's epilogue cannot read
__global__ void bias_residual_kernel(float* out, const float* bias, const float* residual, size_t N, int OC) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < N * OC) out[idx] = (bias ? bias[idx % OC] : 0.0f) + (residual ? residual[idx] : 0.0f);
}

// the largest power of two (<= 256) dividing the address: what cuBLASLt may assume about a pointer
static uint32_t alignment(const void* p) {
    uint32_t a = 256;
    while (a > 4 && (uintptr_t)p % a) a /= 2;
    return a;
}

// RAII for the cuBLASLt descriptors of one call
struct LtCall {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
    ~LtCall() {
        if (pref) cublasLtMatmulPreferenceDestroy(pref);
        if (c) cublasLtMatrixLayoutDestroy(c);
        if (b) cublasLtMatrixLayoutDestroy(b);
        if (a) cublasLtMatrixLayoutDestroy(a);
        if (desc) cublasLtMatmulDescDestroy(desc);
    }
};

// inp (N,C), weight (OC,C), bias (OC) or NULL, residual (N,OC) or NULL -> out (N,OC) = inp weight^T + bias + residual
int matmul_forward_gpu(float* out, const float* inp, const float* weight, const float* bias, const float* residual,
                       size_t N, int C, int OC) {
    bool bias_epilogue = bias && alignment(bias) >= 16;
    const float* c_operand = residual;
    if (bias && !bias_epilogue) {
        bias_residual_kernel<<<(unsigned)ceil_div(N * OC, (size_t)256), 256>>>(out, bias, residual, N, OC);
        LAUNCH_CHECK();
        c_operand = out;
    }
    const float alpha = 1.0f, beta = c_operand ? 1.0f : 0.0f;
    if (!c_operand) c_operand = out;   // read with beta = 0: never affects the result

    LtCall lt;
    cublasOperation_t transpose = CUBLAS_OP_T, none = CUBLAS_OP_N;
    CUBLAS_TRY(cublasLtMatmulDescCreate(&lt.desc, cublas_compute_type(), CUDA_R_32F));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(lt.desc, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof(transpose)));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(lt.desc, CUBLASLT_MATMUL_DESC_TRANSB, &none, sizeof(none)));
    if (bias_epilogue) {
        cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(lt.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(lt.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    }
    // layouts describe storage before the transpose: weight is C x OC, inp C x N, out / residual OC x N
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&lt.a, CUDA_R_32F, C, OC, C));
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&lt.b, CUDA_R_32F, C, N, C));
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&lt.c, CUDA_R_32F, OC, N, OC));
    CUBLAS_TRY(cublasLtMatmulPreferenceCreate(&lt.pref));
    size_t workspace_bytes;
    void* workspace = cublaslt_workspace(&workspace_bytes);
    uint32_t align_a = alignment(weight), align_b = alignment(inp), align_c = alignment(c_operand),
             align_d = alignment(out);
    CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(lt.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                                                    sizeof(workspace_bytes)));
    CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(lt.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                    sizeof(align_a)));
    CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(lt.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                    sizeof(align_b)));
    CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(lt.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c,
                                                    sizeof(align_c)));
    CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(lt.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d,
                                                    sizeof(align_d)));
    // the heuristic's first choice: a function of the shapes only, so runs repeat bit for bit
    cublasLtMatmulHeuristicResult_t heuristic;
    int found = 0;
    CUBLAS_TRY(cublasLtMatmulAlgoGetHeuristic(cublaslt_handle(), lt.desc, lt.a, lt.b, lt.c, lt.c, lt.pref, 1,
                                              &heuristic, &found));
    if (found == 0)
        return set_error(LLMC_ERR_DEVICE, "cuBLASLt has no algorithm for the matmul N=%zu C=%d OC=%d", N, C, OC);
    CUBLAS_TRY(cublasLtMatmul(cublaslt_handle(), lt.desc, &alpha, weight, lt.a, inp, lt.b, &beta, c_operand, lt.c, out,
                              lt.c, &heuristic.algo, workspace, workspace_bytes, 0));
    return LLMC_OK;
}

// dout (N,OC) -> dinp (N,C) = dout @ weight; dweight (OC,C) += dout^T @ inp; dbias (OC) += column sums of dout
int matmul_backward_gpu(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, size_t N, int C, int OC, bool accumulate_dinp) {
    TRY(gemm(false, false, C, (int)N, OC, 1.0f, weight, C, dout, OC, accumulate_dinp ? 1.0f : 0.0f, dinp, C));
    TRY(gemm(false, true, C, OC, (int)N, 1.0f, inp, C, dout, OC, 1.0f, dweight, C));
    if (dbias) TRY(column_sum_gpu(dbias, dout, N, (size_t)OC));
    return LLMC_OK;
}
