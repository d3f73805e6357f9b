// Causal multi-head self-attention, scale 1/sqrt(hs), as llm.c's CUDA path without cuDNN: the T x T
// products as batched cuBLAS GEMMs (TF32 when the context says so, blocks above the diagonal skipped)
// and a row softmax that zeroes the future; att (B,NH,T,T) is kept for the backward.
// No permuted copies of q, k, v: each (b, h) GEMM operand is addressed in place inside qkv (B,T,3C)
// with leading dimension 3C (per-batch pointer arrays), and the outputs land directly in (B,T,C) /
// (B,T,3C). Index arithmetic is size_t: B*NH*T*T passes 2^31 within a few layers at B=16, T=1024.
#include <cmath>
#include <cstdint>

#include "common.cuh"

constexpr int MAX_PER_LANE = 32;   // rows up to T = 1024 are held in registers: 32 values per lane

// ----------------------------------------------------------------------------- softmax over a causal row
// One warp per row (b,h,t) of att: softmax over t2 <= t of the scaled scores, zero for t2 > t.
// Reads the lower triangle once, writes the whole row.
template <int PER_LANE>
__global__ void causal_softmax_kernel(float* att, size_t rows, int T) {
    size_t row = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    int t = row % T;
    float* x = att + row * T;
    float v[PER_LANE];
    float m = -INFINITY;
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) {
        int t2 = lane + 32 * i;
        v[i] = t2 <= t ? x[t2] : -INFINITY;
        m = fmaxf(m, v[i]);
    }
    for (int offset = 16; offset > 0; offset /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, offset));
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) {
        v[i] = lane + 32 * i <= t ? expf(v[i] - m) : 0.0f;
        s += v[i];
    }
    for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffff, s, offset);
    float inv = 1.0f / s;
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) {
        int t2 = lane + 32 * i;
        if (t2 < T) x[t2] = v[i] * inv;
    }
}

// In place: datt -> dpreatt = scale * att * (datt - sum(datt * att)), zero above the diagonal
template <int PER_LANE>
__global__ void causal_softmax_backward_kernel(float* datt, const float* att, size_t rows, int T, float scale) {
    size_t row = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    int t = row % T;
    float* dx = datt + row * T;
    const float* a = att + row * T;
    float av[PER_LANE], gv[PER_LANE];
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) {
        int t2 = lane + 32 * i;
        av[i] = t2 <= t ? a[t2] : 0.0f;
        gv[i] = t2 <= t ? dx[t2] : 0.0f;
        s += av[i] * gv[i];
    }
    for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffff, s, offset);
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) {
        int t2 = lane + 32 * i;
        if (t2 < T) dx[t2] = t2 <= t ? scale * av[i] * (gv[i] - s) : 0.0f;
    }
}

// Rows longer than 32 * MAX_PER_LANE: the same math, re-reading the row instead of holding it.
__global__ void causal_softmax_long_kernel(float* att, size_t rows, int T) {
    size_t row = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    int t = row % T;
    float* x = att + row * T;
    float m = -INFINITY;
    for (int t2 = lane; t2 <= t; t2 += 32) m = fmaxf(m, x[t2]);
    for (int offset = 16; offset > 0; offset /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, offset));
    float s = 0.0f;
    for (int t2 = lane; t2 <= t; t2 += 32) {
        float e = expf(x[t2] - m);
        x[t2] = e;
        s += e;
    }
    for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffff, s, offset);
    float inv = 1.0f / s;
    for (int t2 = lane; t2 < T; t2 += 32) x[t2] = t2 <= t ? x[t2] * inv : 0.0f;
}

__global__ void causal_softmax_backward_long_kernel(float* datt, const float* att, size_t rows, int T, float scale) {
    size_t row = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    int t = row % T;
    float* dx = datt + row * T;
    const float* a = att + row * T;
    float s = 0.0f;
    for (int t2 = lane; t2 <= t; t2 += 32) s += dx[t2] * a[t2];
    for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffff, s, offset);
    for (int t2 = lane; t2 < T; t2 += 32) dx[t2] = t2 <= t ? scale * a[t2] * (dx[t2] - s) : 0.0f;
}

// The smallest register-held instantiation that covers T.
#define DISPATCH_PER_LANE(T, KERNEL, LONG_KERNEL, ...)                                         \
    do {                                                                                       \
        unsigned blocks_ = (unsigned)ceil_div(rows, (size_t)8);                                \
        if (T <= 32) KERNEL<1><<<blocks_, 256>>>(__VA_ARGS__);                                 \
        else if (T <= 64) KERNEL<2><<<blocks_, 256>>>(__VA_ARGS__);                            \
        else if (T <= 128) KERNEL<4><<<blocks_, 256>>>(__VA_ARGS__);                           \
        else if (T <= 256) KERNEL<8><<<blocks_, 256>>>(__VA_ARGS__);                           \
        else if (T <= 512) KERNEL<16><<<blocks_, 256>>>(__VA_ARGS__);                          \
        else if (T <= 32 * MAX_PER_LANE) KERNEL<MAX_PER_LANE><<<blocks_, 256>>>(__VA_ARGS__);  \
        else LONG_KERNEL<<<blocks_, 256>>>(__VA_ARGS__);                                       \
        LAUNCH_CHECK();                                                                        \
    } while (0)

// ----------------------------------------------------------------------------- batched GEMMs in place
// Where the (b, h) slice of a tensor starts: base + b * batch_stride + h * head_stride.
struct Operand {
    const float* base;
    size_t batch_stride, head_stride;
};

__global__ void fill_pointers_kernel(const float** ptrs, Operand a, Operand b, Operand c, int NH, int batch) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch) return;
    size_t bi = i / NH, h = i % NH;
    ptrs[i] = a.base + bi * a.batch_stride + h * a.head_stride;
    ptrs[batch + i] = b.base + bi * b.batch_stride + h * b.head_stride;
    ptrs[2 * batch + i] = c.base + bi * c.batch_stride + h * c.head_stride;
}

static bool aligned16(Operand x, int ld) {
    return (uintptr_t)x.base % 16 == 0 && x.batch_stride % 4 == 0 && x.head_stride % 4 == 0 && ld % 4 == 0;
}

// One GEMM per (b, h), C = alpha op(A) op(B) + beta C, column-major with the given leading dimensions.
// cuBLAS cannot see the alignment of pointers inside a device array, so odd shapes (hs or C not a
// multiple of 4, as the kernel tests draw) take one plain GEMM per head instead.
static int head_gemm(bool transA, bool transB, int m, int n, int k, float alpha, Operand A, int lda, Operand Bm,
                     int ldb, float beta, Operand Cm, int ldc, int B, int NH) {
    int batch = B * NH;
    if (!(aligned16(A, lda) && aligned16(Bm, ldb) && aligned16(Cm, ldc))) {
        for (int i = 0; i < batch; i++) {
            size_t b = i / NH, h = i % NH;
            const float* a = A.base + b * A.batch_stride + h * A.head_stride;
            const float* bm = Bm.base + b * Bm.batch_stride + h * Bm.head_stride;
            float* c = (float*)(Cm.base + b * Cm.batch_stride + h * Cm.head_stride);
            TRY(gemm(transA, transB, m, n, k, alpha, a, lda, bm, ldb, beta, c, ldc));
        }
        return LLMC_OK;
    }
    void* scratch;
    TRY(scratch_get(3 * (size_t)batch * sizeof(float*), &scratch));
    const float** ptrs = (const float**)scratch;
    fill_pointers_kernel<<<ceil_div(batch, 256), 256>>>(ptrs, A, Bm, Cm, NH, batch);
    LAUNCH_CHECK();
    return gemm_batched(transA, transB, m, n, k, alpha, ptrs, lda, ptrs + batch, ldb, beta,
                        (float* const*)(ptrs + 2 * batch), ldc, batch);
}

// Causality in blocks: queries [i*Tb, (i+1)*Tb) only meet keys [0, (i+1)*Tb). Splitting each T x T
// product into 4 query (or key) blocks skips the blocks above the diagonal: 10/16 of the work.
// The softmax still writes whole rows, so att is exact everywhere (zeros above the diagonal).
static int causal_blocks(int T) { return T >= 256 && T % 4 == 0 ? 4 : 1; }

static Operand at(Operand x, size_t offset) { return {x.base + offset, x.batch_stride, x.head_stride}; }

// inp (B,T,3C) -> out (B,T,C); att (B,NH,T,T) saved
int attention_forward_gpu(float* out, float* att, const float* inp, int B, int T, int C, int NH) {
    int hs = C / NH, C3 = 3 * C, S = causal_blocks(T), Tb = T / S;
    size_t TT = (size_t)T * T;
    float scale = 1.0f / sqrtf((float)hs);
    Operand q = {inp, (size_t)T * C3, (size_t)hs}, k = {inp + C, (size_t)T * C3, (size_t)hs};
    Operand v = {inp + 2 * C, (size_t)T * C3, (size_t)hs};
    Operand scores = {att, NH * TT, TT}, y = {out, (size_t)T * C, (size_t)hs};
    // att[t][t2] = scale * q[t] . k[t2] for the block's queries t and keys t2 < (i+1)*Tb; column-major: k q^T
    for (int i = 0; i < S; i++) {
        size_t t0 = (size_t)i * Tb;
        TRY(head_gemm(true, false, (i + 1) * Tb, Tb, hs, scale, k, C3, at(q, t0 * C3), C3, 0.0f, at(scores, t0 * T),
                      T, B, NH));
    }
    size_t rows = (size_t)B * NH * T;
    DISPATCH_PER_LANE(T, causal_softmax_kernel, causal_softmax_long_kernel, att, rows, T);
    // y[t] = sum_t2 att[t][t2] v[t2], written as out[b, t, h*hs:(h+1)*hs]
    for (int i = 0; i < S; i++) {
        size_t t0 = (size_t)i * Tb;
        TRY(head_gemm(false, false, hs, Tb, (i + 1) * Tb, 1.0f, v, C3, at(scores, t0 * T), T, 0.0f, at(y, t0 * C), C,
                      B, NH));
    }
    return LLMC_OK;
}

// dout (B,T,C) -> dinp (B,T,3C) (+= or =); datt (B,NH,T,T) scratch; att from the forward
int attention_backward_gpu(float* dinp, float* datt, const float* dout, const float* inp, const float* att,
                           int B, int T, int C, int NH, bool accumulate_dinp) {
    int hs = C / NH, C3 = 3 * C, S = causal_blocks(T), Tb = T / S;
    size_t TT = (size_t)T * T;
    float scale = 1.0f / sqrtf((float)hs);
    float beta = accumulate_dinp ? 1.0f : 0.0f;
    Operand q = {inp, (size_t)T * C3, (size_t)hs}, k = {inp + C, (size_t)T * C3, (size_t)hs};
    Operand v = {inp + 2 * C, (size_t)T * C3, (size_t)hs};
    Operand dq = {dinp, (size_t)T * C3, (size_t)hs}, dk = {dinp + C, (size_t)T * C3, (size_t)hs};
    Operand dv = {dinp + 2 * C, (size_t)T * C3, (size_t)hs};
    Operand dy = {dout, (size_t)T * C, (size_t)hs};
    Operand probs = {att, NH * TT, TT}, dscores = {datt, NH * TT, TT};
    for (int i = 0; i < S; i++) {
        // datt[t][t2] = dy[t] . v[t2], query block i (t0..) against keys t2 < (i+1)*Tb
        size_t t0 = (size_t)i * Tb;
        TRY(head_gemm(true, false, (i + 1) * Tb, Tb, hs, 1.0f, v, C3, at(dy, t0 * C), C, 0.0f, at(dscores, t0 * T), T,
                      B, NH));
        // dv[t2] = sum_t att[t][t2] dy[t], key block i (t2 from t0) against queries t >= t0
        TRY(head_gemm(false, true, hs, Tb, T - (int)t0, 1.0f, at(dy, t0 * C), C, at(probs, t0 * T + t0), T, beta,
                      at(dv, t0 * C3), C3, B, NH));
    }
    size_t rows = (size_t)B * NH * T;
    DISPATCH_PER_LANE(T, causal_softmax_backward_kernel, causal_softmax_backward_long_kernel, datt, att, rows, T,
                      scale);
    // dq[t] = sum_t2 dpreatt[t][t2] k[t2];  dk[t2] = sum_t dpreatt[t][t2] q[t]  (dpreatt is in datt now)
    for (int i = 0; i < S; i++) {
        size_t t0 = (size_t)i * Tb;
        TRY(head_gemm(false, false, hs, Tb, (i + 1) * Tb, 1.0f, k, C3, at(dscores, t0 * T), T, beta, at(dq, t0 * C3),
                      C3, B, NH));
        TRY(head_gemm(false, true, hs, Tb, T - (int)t0, 1.0f, at(q, t0 * C3), C3, at(dscores, t0 * T + t0), T, beta,
                      at(dk, t0 * C3), C3, B, NH));
    }
    return LLMC_OK;
}
