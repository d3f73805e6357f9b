// Causal multi-head self-attention, scale 1/sqrt(hs), fused in the style of FlashAttention-2: the
// (T,T) scores and probabilities never reach device memory.
//
// Forward: a block owns a tile of queries of one (b, h) and walks the key tiles up to the diagonal,
// keeping per row the running maximum m, the running sum of exponentials l and the unnormalized
// output (online softmax: when m grows, l and the output are rescaled by exp(m_old - m_new)). It
// writes out = output / l and the row's logsumexp lse = m + log(l), (B,NH,T), for the backward:
// 48 KiB per layer at T=1024 instead of the 48 MiB of (NH,T,T) probabilities, per batch row.
// Backward: P is recomputed tile by tile as exp(s - lse). With delta = rowsum(dout * out) (one small
// kernel first), dS = P * (dP - delta) where dP = dout v^T, so no softmax row needs to be whole.
// dk, dv come from one kernel whose block owns a key tile and walks the query tiles from the diagonal
// on; dq from a second kernel whose block owns a query tile and walks the key tiles (S and dP are
// computed twice, the price of having no atomics). Every output element is written by one thread
// after a fixed-order sum: bitwise deterministic. Blocks with the most tiles to walk start first.
//
// Two implementations of that algorithm:
//  - head size 64 in TF32 mode: tensor-core mma.sync m16n8k8 (TF32 in, fp32 accumulate); blocks of 8
//    warps own 128 rows (16 per warp) and stream 64-row tiles of the other side through double-buffered
//    shared memory (cp.async); operands rounded to TF32 (cvt.rna) as cuBLAS's TF32 GEMMs do.
//  - everything else (strict fp32, other head sizes up to 128, unaligned tensors): plain fp32 FFMA,
//    one thread per row (or 2-4 threads per row splitting the head dimension above 32), so strict mode
//    keeps fp32 accuracy (relative errors ~3e-7 against float64). Templated on the storage type, these
//    are also bf16 mixed precision's fallback (bf16 in and out, fp32 inside).
// bf16 mixed precision's tensor-core kernels (head size 64) are in attention_bf16.cu.
// q, k, v are read in place from qkv (B,T,3C) and the outputs land in (B,T,C) / (B,T,3C) directly.
// The kernel-level entry points also want att (B,NH,T,T): attention_probs_gpu writes it from q, k and
// the logsumexp; the model never does.
#include <cmath>
#include <cstdint>

#include "common.cuh"

constexpr int SIMT_ROWS = 64; // rows a block of the fp32 kernels owns

// Where head h of batch row b starts in qkv and in a (B,T,C) tensor.
__device__ inline size_t qkv_offset(int b, int h, int T, int C, int hs) {
    return (size_t)b * T * 3 * C + (size_t)h * hs;
}
__device__ inline size_t btc_offset(int b, int h, int T, int C, int hs) { return (size_t)b * T * C + (size_t)h * hs; }

// ----------------------------------------------------------------------------- delta = rowsum(dout * out)
// One warp per (b, t, h) row; delta is (B,NH,T).
template <typename E>
__global__ void attention_delta_kernel(float* delta, const E* dout, const E* out, int B, int T, int C, int NH) {
    size_t row = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32, hs = C / NH;
    if (row >= (size_t)B * NH * T) return;
    int t = row % T, h = (row / T) % NH, b = row / ((size_t)T * NH);
    size_t at = btc_offset(b, h, T, C, hs) + (size_t)t * C;
    float s = 0.0f;
    for (int d = lane; d < hs; d += 32) s += to_f32(dout[at + d]) * to_f32(out[at + d]);
    for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffff, s, offset);
    if (lane == 0) delta[row] = s;
}

// ============================================================================= fp32 (FFMA) kernels
// E, the storage type of q, k, v and the outputs: float, or bf16 (bf16 mixed precision's fallback for head
// sizes other than 64), computed in fp32 either way.
// HS_MAX: head sizes up to it (zero-padded); each row's head dimension is split over PARTS threads of
// DPT dims, whose partial dot products meet through shuffles. Tiles: ROWS rows per block, TILE rows
// of the other operand per shared-memory tile, each stored [TILE][PARTS][DPT + 4] (the +4 keeps the
// float4 reads of the parts in different banks).
template <int HS_MAX>
struct Simt {
    static constexpr int DPT = HS_MAX < 32 ? HS_MAX : 32;
    static constexpr int PARTS = HS_MAX / DPT;
    static constexpr int ROWS = SIMT_ROWS, TILE = 32, THREADS = ROWS * PARTS;
    static constexpr int LD = DPT + 4; // floats per (row, part) in shared memory
    static constexpr int TILE_FLOATS = TILE * PARTS * LD;
};

// Sum over the PARTS adjacent lanes that share a row.
template <int PARTS>
__device__ inline float part_sum(float x) {
#pragma unroll
    for (int offset = 1; offset < PARTS; offset *= 2) x += __shfl_xor_sync(0xffffffff, x, offset);
    return x;
}

// rows [r0, r0+TILE) of a (T, stride) matrix, head dims [0, hs), into smem; zeros beyond T and hs
template <int HS_MAX, typename E>
__device__ inline void simt_load_tile(float* tile, const E* src, size_t stride, int r0, int T, int hs) {
    using S = Simt<HS_MAX>;
    for (int i = threadIdx.x; i < S::TILE * HS_MAX; i += S::THREADS) {
        int r = i / HS_MAX, d = i % HS_MAX;
        float x = (r0 + r < T && d < hs) ? to_f32(src[(size_t)(r0 + r) * stride + d]) : 0.0f;
        tile[(r * S::PARTS + d / S::DPT) * S::LD + d % S::DPT] = x;
    }
}

// this thread's DPT dims of row r, scaled; zeros beyond T and hs
template <int HS_MAX, typename E>
__device__ inline void simt_load_row(float* x, const E* src, size_t stride, int r, int part, int T, int hs,
                                     float scale) {
    using S = Simt<HS_MAX>;
#pragma unroll
    for (int i = 0; i < S::DPT; i++) {
        int d = part * S::DPT + i;
        x[i] = (r < T && d < hs) ? scale * to_f32(src[(size_t)r * stride + d]) : 0.0f;
    }
}

// dot of this thread's dims with row j of a smem tile, summed over the row's parts
template <int HS_MAX>
__device__ inline float simt_dot(const float* x, const float* tile, int j, int part) {
    using S = Simt<HS_MAX>;
    const float4* y = (const float4*)(tile + (j * S::PARTS + part) * S::LD);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < S::DPT / 4; i++) {
        float4 v = y[i];
        s += x[4 * i] * v.x + x[4 * i + 1] * v.y + x[4 * i + 2] * v.z + x[4 * i + 3] * v.w;
    }
    return part_sum<S::PARTS>(s);
}

// acc += p * row j of a smem tile
template <int HS_MAX>
__device__ inline void simt_axpy(float* acc, float p, const float* tile, int j, int part) {
    using S = Simt<HS_MAX>;
    const float4* y = (const float4*)(tile + (j * S::PARTS + part) * S::LD);
#pragma unroll
    for (int i = 0; i < S::DPT / 4; i++) {
        float4 v = y[i];
        acc[4 * i] += p * v.x;
        acc[4 * i + 1] += p * v.y;
        acc[4 * i + 2] += p * v.z;
        acc[4 * i + 3] += p * v.w;
    }
}

// this thread's dims of row r: dst = x * scale, or dst += x * scale
template <int HS_MAX, typename E>
__device__ inline void simt_store_row(E* dst, size_t stride, const float* x, int r, int part, int T, int hs,
                                      float scale, bool accumulate) {
    using S = Simt<HS_MAX>;
    if (r >= T) return;
#pragma unroll
    for (int i = 0; i < S::DPT; i++) {
        int d = part * S::DPT + i;
        if (d < hs) {
            E* p = dst + (size_t)r * stride + d;
            *p = from_f32<E>(accumulate ? to_f32(*p) + scale * x[i] : scale * x[i]);
        }
    }
}

// grid (B*NH, query tiles, heaviest first); inp (B,T,3C) -> out (B,T,C), lse (B,NH,T)
template <int HS_MAX, typename E>
__global__ void __launch_bounds__(Simt<HS_MAX>::THREADS)
    attention_forward_simt(E* out, float* lse, const E* inp, int T, int C, int NH, float scale) {
    using S = Simt<HS_MAX>;
    __shared__ __align__(16) float ks[S::TILE_FLOATS];
    __shared__ __align__(16) float vs[S::TILE_FLOATS];
    int bh = blockIdx.x, b = bh / NH, h = bh % NH, hs = C / NH;
    int q0 = (gridDim.y - 1 - blockIdx.y) * S::ROWS;
    int i = q0 + threadIdx.x / S::PARTS, part = threadIdx.x % S::PARTS;
    const E* q = inp + qkv_offset(b, h, T, C, hs);
    size_t C3 = 3 * (size_t)C;
    float x[S::DPT], acc[S::DPT];
    simt_load_row<HS_MAX>(x, q, C3, i, part, T, hs, scale);
#pragma unroll
    for (int d = 0; d < S::DPT; d++) acc[d] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    int k_end = min(q0 + S::ROWS, T); // keys [0, k_end) meet some query of the block
    for (int k0 = 0; k0 < k_end; k0 += S::TILE) {
        __syncthreads();
        simt_load_tile<HS_MAX>(ks, q + C, C3, k0, T, hs);
        simt_load_tile<HS_MAX>(vs, q + 2 * C, C3, k0, T, hs);
        __syncthreads();
        float s[S::TILE];
        float tile_max = -INFINITY;
#pragma unroll
        for (int j = 0; j < S::TILE; j++) {
            s[j] = simt_dot<HS_MAX>(x, ks, j, part); // all lanes: the parts of a row meet in shuffles
            if (k0 + j > i) s[j] = -INFINITY;
            tile_max = fmaxf(tile_max, s[j]);
        }
        // key 0 is in the first tile and every row meets it, so m is finite from there on
        float m_new = fmaxf(m, tile_max), correction = expf(m - m_new);
        l *= correction;
#pragma unroll
        for (int d = 0; d < S::DPT; d++) acc[d] *= correction;
#pragma unroll
        for (int j = 0; j < S::TILE; j++) {
            float p = expf(s[j] - m_new); // 0 for the masked keys
            l += p;
            simt_axpy<HS_MAX>(acc, p, vs, j, part);
        }
        m = m_new;
    }
    simt_store_row<HS_MAX>(out + btc_offset(b, h, T, C, hs), C, acc, i, part, T, hs, 1.0f / l, false);
    if (i < T && part == 0) lse[(size_t)bh * T + i] = m + logf(l);
}

// grid (B*NH, key tiles): dk, dv of a key tile from all the queries at or after it
template <int HS_MAX, typename E>
__global__ void __launch_bounds__(Simt<HS_MAX>::THREADS)
    attention_backward_dkdv_simt(E* dinp, const E* dout, const E* inp, const float* lse, const float* delta, int T,
                                 int C, int NH, float scale, bool accumulate) {
    using S = Simt<HS_MAX>;
    __shared__ __align__(16) float qs[S::TILE_FLOATS];
    __shared__ __align__(16) float dos[S::TILE_FLOATS];
    __shared__ float lse_s[S::TILE], delta_s[S::TILE];
    int bh = blockIdx.x, b = bh / NH, h = bh % NH, hs = C / NH;
    int k0 = blockIdx.y * S::ROWS;
    int j = k0 + threadIdx.x / S::PARTS, part = threadIdx.x % S::PARTS;
    size_t C3 = 3 * (size_t)C, at = qkv_offset(b, h, T, C, hs);
    const E* dy = dout + btc_offset(b, h, T, C, hs);
    float k[S::DPT], v[S::DPT], dk[S::DPT], dv[S::DPT];
    simt_load_row<HS_MAX>(k, inp + at + C, C3, j, part, T, hs, scale);
    simt_load_row<HS_MAX>(v, inp + at + 2 * C, C3, j, part, T, hs, 1.0f);
#pragma unroll
    for (int d = 0; d < S::DPT; d++) dk[d] = dv[d] = 0.0f;
    for (int t0 = k0; t0 < T; t0 += S::TILE) {
        __syncthreads();
        simt_load_tile<HS_MAX>(qs, inp + at, C3, t0, T, hs);
        simt_load_tile<HS_MAX>(dos, dy, C, t0, T, hs);
        for (int r = threadIdx.x; r < S::TILE; r += S::THREADS) {
            lse_s[r] = t0 + r < T ? lse[(size_t)bh * T + t0 + r] : 0.0f;
            delta_s[r] = t0 + r < T ? delta[(size_t)bh * T + t0 + r] : 0.0f;
        }
        __syncthreads();
        for (int r = 0; r < S::TILE; r++) {
            int t = t0 + r;
            float s = simt_dot<HS_MAX>(k, qs, r, part), dp = simt_dot<HS_MAX>(v, dos, r, part);
            float p = (j <= t && t < T) ? expf(s - lse_s[r]) : 0.0f;
            float ds = p * (dp - delta_s[r]);
            simt_axpy<HS_MAX>(dv, p, dos, r, part);
            simt_axpy<HS_MAX>(dk, ds, qs, r, part);
        }
    }
    simt_store_row<HS_MAX>(dinp + at + C, C3, dk, j, part, T, hs, scale, accumulate);
    simt_store_row<HS_MAX>(dinp + at + 2 * C, C3, dv, j, part, T, hs, 1.0f, accumulate);
}

// grid (B*NH, query tiles, heaviest first): dq of a query tile from the keys up to it
template <int HS_MAX, typename E>
__global__ void __launch_bounds__(Simt<HS_MAX>::THREADS)
    attention_backward_dq_simt(E* dinp, const E* dout, const E* inp, const float* lse, const float* delta, int T, int C,
                               int NH, float scale, bool accumulate) {
    using S = Simt<HS_MAX>;
    __shared__ __align__(16) float ks[S::TILE_FLOATS];
    __shared__ __align__(16) float vs[S::TILE_FLOATS];
    int bh = blockIdx.x, b = bh / NH, h = bh % NH, hs = C / NH;
    int q0 = (gridDim.y - 1 - blockIdx.y) * S::ROWS;
    int i = q0 + threadIdx.x / S::PARTS, part = threadIdx.x % S::PARTS;
    size_t C3 = 3 * (size_t)C, at = qkv_offset(b, h, T, C, hs);
    float q[S::DPT], dy[S::DPT], dq[S::DPT];
    simt_load_row<HS_MAX>(q, inp + at, C3, i, part, T, hs, scale);
    simt_load_row<HS_MAX>(dy, dout + btc_offset(b, h, T, C, hs), C, i, part, T, hs, 1.0f);
#pragma unroll
    for (int d = 0; d < S::DPT; d++) dq[d] = 0.0f;
    float row_lse = i < T ? lse[(size_t)bh * T + i] : 0.0f, row_delta = i < T ? delta[(size_t)bh * T + i] : 0.0f;
    int k_end = min(q0 + S::ROWS, T);
    for (int k0 = 0; k0 < k_end; k0 += S::TILE) {
        __syncthreads();
        simt_load_tile<HS_MAX>(ks, inp + at + C, C3, k0, T, hs);
        simt_load_tile<HS_MAX>(vs, inp + at + 2 * C, C3, k0, T, hs);
        __syncthreads();
        for (int r = 0; r < S::TILE; r++) {
            float s = simt_dot<HS_MAX>(q, ks, r, part), dp = simt_dot<HS_MAX>(dy, vs, r, part);
            float p = k0 + r <= i ? expf(s - row_lse) : 0.0f;
            simt_axpy<HS_MAX>(dq, p * (dp - row_delta), ks, r, part);
        }
    }
    simt_store_row<HS_MAX>(dinp + at, C3, dq, i, part, T, hs, scale, accumulate);
}

// ============================================================================= TF32 tensor-core kernels, hs = 64
// m16n8k8 fragments (g = lane / 4, c = lane % 4): A (16x8, row-major) a0 (g, c), a1 (g+8, c), a2 (g, c+4),
// a3 (g+8, c+4); B (8x8) b0 (k=c, n=g), b1 (k=c+4, n=g); C/D (16x8) d0 (g, 2c), d1 (g, 2c+1), d2 (g+8, 2c),
// d3 (g+8, 2c+1).
// A product's output fragment becomes the next product's A operand (P -> P v) without shuffles by
// renumbering the reduction index inside each group of 8: k = c stands for element 2c and k = c+4 for
// 2c+1, for A (taken from d0..d3) and B (read from smem) alike, so a = {d0, d2, d1, d3}.
// A block owns TC_BLOCK_ROWS rows (16 per warp, their operand fragments in registers) and streams the
// other side through smem in tiles of 64 rows x 64 floats, row stride 68: the two read patterns (row g,
// col c) and (row 2c, col g) then hit 32 different banks. Two stages: cp.async fills the next tile
// while the warps multiply the current one; each thread rounds the chunks it copied to TF32 in place.
constexpr int TC_HS = 64, TC_TILE = 64, TC_LD = 68, TC_WARPS = 8;
constexpr int TC_THREADS = 32 * TC_WARPS, TC_BLOCK_ROWS = 16 * TC_WARPS;
constexpr int TC_TILE_FLOATS = TC_TILE * TC_LD;
constexpr size_t TC_SMEM_BYTES = 2 * 2 * TC_TILE_FLOATS * sizeof(uint32_t); // 2 stages x 2 tensors

__device__ inline uint32_t to_tf32(float x) {
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

__device__ inline void mma_tf32(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16 bytes global -> smem without passing through registers; zeros when !valid (src is then not read)
__device__ inline void cp_async16(void* dst, const void* src, bool valid) {
    unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(src), "r"(valid ? 16 : 0));
}

// Two tensors (k and v, or q and dout) of one head streamed through two smem stages of 64-row tiles.
struct TileStream {
    uint32_t* smem; // [2 stages][2 tensors][TC_TILE_FLOATS]
    const float* src[2];
    size_t stride[2];
    int T;

    __device__ uint32_t* tile(int stage, int j) const { return smem + (2 * stage + j) * TC_TILE_FLOATS; }

    // start filling stage with rows [r0, r0+64) (zeros beyond T)
    __device__ void issue(int stage, int r0) const {
#pragma unroll
        for (int j = 0; j < 2; j++) {
            for (int i = threadIdx.x; i < TC_TILE * TC_HS / 4; i += TC_THREADS) {
                int r = i / (TC_HS / 4), c4 = i % (TC_HS / 4);
                bool valid = r0 + r < T;
                const float* from = src[j] + (valid ? (size_t)(r0 + r) * stride[j] + 4 * c4 : 0);
                uint32_t* to = tile(stage, j) + r * TC_LD + 4 * c4;
                cp_async16(to, from, valid);
            }
        }
        asm volatile("cp.async.commit_group;");
    }

    // wait for stage's copies (a later issue may still be in flight) and round this thread's chunks to TF32;
    // the caller's __syncthreads then publishes them
    __device__ void land(int stage, bool later_pending) const {
        if (later_pending)
            asm volatile("cp.async.wait_group 1;" ::: "memory");
        else
            asm volatile("cp.async.wait_group 0;" ::: "memory");
#pragma unroll
        for (int j = 0; j < 2; j++) {
            for (int i = threadIdx.x; i < TC_TILE * TC_HS / 4; i += TC_THREADS) {
                uint4* x = (uint4*)(tile(stage, j) + i / (TC_HS / 4) * TC_LD + 4 * (i % (TC_HS / 4)));
                uint4 v = *x;
                *x = make_uint4(to_tf32(__uint_as_float(v.x)), to_tf32(__uint_as_float(v.y)),
                                to_tf32(__uint_as_float(v.z)), to_tf32(__uint_as_float(v.w)));
            }
        }
    }
};

// A fragments of this warp's 16 rows [r, r+16) x 64 dims, from global memory, times scale
__device__ inline void tc_load_a(uint32_t (*a)[4], const float* src, size_t stride, int r, int T, float scale) {
    int g = threadIdx.x % 32 / 4, c = threadIdx.x % 4;
#pragma unroll
    for (int kk = 0; kk < TC_HS / 8; kk++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int row = r + g + 8 * (e % 2), col = 8 * kk + c + 4 * (e / 2);
            a[kk][e] = to_tf32(row < T ? scale * src[(size_t)row * stride + col] : 0.0f);
        }
    }
}

// acc[n] (16 x 8 columns n) += A (16 x 64, fragments) . tile^T: tile rows [8n, 8n+8) are the columns
template <int N>
__device__ inline void tc_mma_abt(float (*acc)[4], const uint32_t (*a)[4], const uint32_t* tile) {
    int g = threadIdx.x % 32 / 4, c = threadIdx.x % 4;
#pragma unroll
    for (int n = 0; n < N; n++) {
#pragma unroll
        for (int kk = 0; kk < TC_HS / 8; kk++) {
            const uint32_t* row = tile + (8 * n + g) * TC_LD + 8 * kk + c;
            mma_tf32(acc[n], a[kk], row[0], row[4]);
        }
    }
}

// acc (16 x 64, 8 fragments) += P (16 x 8K, output fragments of a product) . tile rows [0, 8K)
template <int K>
__device__ inline void tc_mma_pb(float (*acc)[4], const float (*p)[4], const uint32_t* tile) {
    int g = threadIdx.x % 32 / 4, c = threadIdx.x % 4;
#pragma unroll
    for (int kk = 0; kk < K; kk++) {
        uint32_t a[4] = {to_tf32(p[kk][0]), to_tf32(p[kk][2]), to_tf32(p[kk][1]), to_tf32(p[kk][3])};
        const uint32_t* rows = tile + (8 * kk + 2 * c) * TC_LD + g;
#pragma unroll
        for (int n = 0; n < TC_HS / 8; n++) mma_tf32(acc[n], a, rows[8 * n], rows[TC_LD + 8 * n]);
    }
}

// this warp's 16 rows of a (16 x 64) fragment set: dst = x * scale (rows < T), or dst += x * scale
__device__ inline void tc_store(float* dst, size_t stride, const float (*x)[4], int r, int T, float scale0,
                                float scale1, bool accumulate) {
    int g = threadIdx.x % 32 / 4, c = threadIdx.x % 4;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        int row = r + g + 8 * half;
        if (row >= T) continue;
        float scale = half ? scale1 : scale0;
#pragma unroll
        for (int n = 0; n < TC_HS / 8; n++) {
            float2* p = (float2*)(dst + (size_t)row * stride + 8 * n + 2 * c);
            float2 v = make_float2(scale * x[n][2 * half], scale * x[n][2 * half + 1]);
            if (accumulate) {
                float2 old = *p;
                v.x += old.x;
                v.y += old.y;
            }
            *p = v;
        }
    }
}

// grid (B*NH, query blocks, heaviest first)
__global__ void __launch_bounds__(TC_THREADS)
    attention_forward_tf32(float* out, float* lse, const float* inp, int T, int C, int NH, float scale) {
    extern __shared__ __align__(16) uint32_t smem[];
    int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    int q0 = (gridDim.y - 1 - blockIdx.y) * TC_BLOCK_ROWS;
    int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4, c = threadIdx.x % 4;
    int r = q0 + 16 * warp, rows[2] = {r + g, r + g + 8};
    size_t C3 = 3 * (size_t)C;
    const float* q = inp + qkv_offset(b, h, T, C, TC_HS);
    uint32_t qa[TC_HS / 8][4];
    tc_load_a(qa, q, C3, r, T, scale);
    float o[TC_HS / 8][4] = {};
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}; // l: this thread's share of the row sums
    TileStream kv = {smem, {q + C, q + 2 * C}, {C3, C3}, T};
    int tiles = ceil_div(min(q0 + TC_BLOCK_ROWS, T), TC_TILE); // keys up to the block's last query
    kv.issue(0, 0);
    for (int kt = 0; kt < tiles; kt++) {
        int stage = kt % 2, k0 = kt * TC_TILE;
        __syncthreads(); // the other stage (tile kt-1) is no longer read
        if (kt + 1 < tiles) kv.issue(1 - stage, k0 + TC_TILE);
        kv.land(stage, kt + 1 < tiles);
        __syncthreads();
        if (k0 > r + 15) continue; // every key of the tile is after this warp's queries
        float s[TC_TILE / 8][4] = {};
        tc_mma_abt<TC_TILE / 8>(s, qa, kv.tile(stage, 0));
        if (k0 + TC_TILE - 1 > r) { // the tile crosses the diagonal: keys after the query are masked
#pragma unroll
            for (int n = 0; n < TC_TILE / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    if (k0 + 8 * n + 2 * c + e % 2 > rows[e / 2]) s[n][e] = -INFINITY;
        }
#pragma unroll
        for (int half = 0; half < 2; half++) {
            float mx = m[half];
#pragma unroll
            for (int n = 0; n < TC_TILE / 8; n++) mx = fmaxf(mx, fmaxf(s[n][2 * half], s[n][2 * half + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
            float correction = __expf(m[half] - mx); // key 0 is in tile 0, so mx is finite
            l[half] *= correction;
#pragma unroll
            for (int n = 0; n < TC_HS / 8; n++) {
                o[n][2 * half] *= correction;
                o[n][2 * half + 1] *= correction;
            }
#pragma unroll
            for (int n = 0; n < TC_TILE / 8; n++) {
                s[n][2 * half] = __expf(s[n][2 * half] - mx);
                s[n][2 * half + 1] = __expf(s[n][2 * half + 1] - mx);
                l[half] += s[n][2 * half] + s[n][2 * half + 1];
            }
            m[half] = mx;
        }
        tc_mma_pb<TC_TILE / 8>(o, s, kv.tile(stage, 1));
    }
#pragma unroll
    for (int half = 0; half < 2; half++) {
        l[half] += __shfl_xor_sync(0xffffffff, l[half], 1);
        l[half] += __shfl_xor_sync(0xffffffff, l[half], 2);
        if (c == 0 && rows[half] < T) lse[(size_t)bh * T + rows[half]] = m[half] + logf(l[half]);
    }
    tc_store(out + btc_offset(b, h, T, C, TC_HS), C, o, r, T, 1.0f / l[0], 1.0f / l[1], false);
}

// grid (B*NH, key blocks). Each warp owns 16 keys and computes transposed products: S^T = k q^T,
// dP^T = v dout^T, then dv += P^T dout and dk += dS^T q, over 32 queries at a time (registers).
__global__ void __launch_bounds__(TC_THREADS)
    attention_backward_dkdv_tf32(float* dinp, const float* dout, const float* inp, const float* lse, const float* delta,
                                 int T, int C, int NH, float scale, bool accumulate) {
    extern __shared__ __align__(16) uint32_t smem[];
    __shared__ float lse_s[2][TC_TILE], delta_s[2][TC_TILE];
    int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    int k0 = blockIdx.y * TC_BLOCK_ROWS;
    int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4, c = threadIdx.x % 4;
    int r = k0 + 16 * warp, keys[2] = {r + g, r + g + 8};
    size_t C3 = 3 * (size_t)C, at = qkv_offset(b, h, T, C, TC_HS);
    const float* dy = dout + btc_offset(b, h, T, C, TC_HS);
    const float* row_lse = lse + (size_t)bh * T;
    const float* row_delta = delta + (size_t)bh * T;
    uint32_t ka[TC_HS / 8][4], va[TC_HS / 8][4];
    tc_load_a(ka, inp + at + C, C3, r, T, scale);
    tc_load_a(va, inp + at + 2 * C, C3, r, T, 1.0f);
    float dk[TC_HS / 8][4] = {}, dv[TC_HS / 8][4] = {};
    TileStream qdy = {smem, {inp + at, dy}, {C3, (size_t)C}, T};
    // lse and delta of the tile a stage holds, read into registers at issue, stored at land
    int i_own = threadIdx.x;
    float next_lse = 0.0f, next_delta = 0.0f;
    auto fetch = [&](int t0) {
        if (i_own < TC_TILE && t0 + i_own < T) {
            next_lse = row_lse[t0 + i_own];
            next_delta = row_delta[t0 + i_own];
        } else {
            next_lse = next_delta = 0.0f;
        }
    };
    qdy.issue(0, k0);
    fetch(k0);
    for (int t0 = k0, kt = 0; t0 < T; t0 += TC_TILE, kt++) {
        int stage = kt % 2;
        __syncthreads();
        if (i_own < TC_TILE) {
            lse_s[stage][i_own] = next_lse;
            delta_s[stage][i_own] = next_delta;
        }
        bool more = t0 + TC_TILE < T;
        if (more) {
            qdy.issue(1 - stage, t0 + TC_TILE);
            fetch(t0 + TC_TILE);
        }
        qdy.land(stage, more);
        __syncthreads();
        if (t0 + TC_TILE - 1 < r) continue; // every query of the tile is before this warp's keys
#pragma unroll
        for (int half = 0; half < 2; half++) { // queries [t0 + 32 half, +32)
            const int Q = TC_TILE / 2;
            const uint32_t* qs = qdy.tile(stage, 0) + half * Q * TC_LD;
            const uint32_t* dys = qdy.tile(stage, 1) + half * Q * TC_LD;
            float p[Q / 8][4] = {}, ds[Q / 8][4] = {};
            tc_mma_abt<Q / 8>(p, ka, qs);
            tc_mma_abt<Q / 8>(ds, va, dys);
#pragma unroll
            for (int n = 0; n < Q / 8; n++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int i = half * Q + 8 * n + 2 * c + e % 2, t = t0 + i;
                    float pe = (keys[e / 2] <= t && t < T) ? __expf(p[n][e] - lse_s[stage][i]) : 0.0f;
                    ds[n][e] = pe * (ds[n][e] - delta_s[stage][i]);
                    p[n][e] = pe;
                }
            }
            tc_mma_pb<Q / 8>(dv, p, dys);
            tc_mma_pb<Q / 8>(dk, ds, qs);
        }
    }
    tc_store(dinp + at + C, C3, dk, r, T, scale, scale, accumulate);
    tc_store(dinp + at + 2 * C, C3, dv, r, T, 1.0f, 1.0f, accumulate);
}

// grid (B*NH, query blocks, heaviest first): S = q k^T, dP = dout v^T, dq += dS k
__global__ void __launch_bounds__(TC_THREADS)
    attention_backward_dq_tf32(float* dinp, const float* dout, const float* inp, const float* lse, const float* delta,
                               int T, int C, int NH, float scale, bool accumulate) {
    extern __shared__ __align__(16) uint32_t smem[];
    int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    int q0 = (gridDim.y - 1 - blockIdx.y) * TC_BLOCK_ROWS;
    int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4, c = threadIdx.x % 4;
    int r = q0 + 16 * warp, rows[2] = {r + g, r + g + 8};
    size_t C3 = 3 * (size_t)C, at = qkv_offset(b, h, T, C, TC_HS);
    uint32_t qa[TC_HS / 8][4], dya[TC_HS / 8][4];
    tc_load_a(qa, inp + at, C3, r, T, scale);
    tc_load_a(dya, dout + btc_offset(b, h, T, C, TC_HS), C, r, T, 1.0f);
    float row_lse[2], row_delta[2];
    for (int half = 0; half < 2; half++) {
        row_lse[half] = rows[half] < T ? lse[(size_t)bh * T + rows[half]] : 0.0f;
        row_delta[half] = rows[half] < T ? delta[(size_t)bh * T + rows[half]] : 0.0f;
    }
    float dq[TC_HS / 8][4] = {};
    TileStream kv = {smem, {inp + at + C, inp + at + 2 * C}, {C3, C3}, T};
    int tiles = ceil_div(min(q0 + TC_BLOCK_ROWS, T), TC_TILE);
    kv.issue(0, 0);
    for (int kt = 0; kt < tiles; kt++) {
        int stage = kt % 2, k0 = kt * TC_TILE;
        __syncthreads();
        if (kt + 1 < tiles) kv.issue(1 - stage, k0 + TC_TILE);
        kv.land(stage, kt + 1 < tiles);
        __syncthreads();
        if (k0 > r + 15) continue;
        const uint32_t* ks = kv.tile(stage, 0);
        float p[TC_TILE / 8][4] = {}, ds[TC_TILE / 8][4] = {};
        tc_mma_abt<TC_TILE / 8>(p, qa, ks);
        tc_mma_abt<TC_TILE / 8>(ds, dya, kv.tile(stage, 1));
#pragma unroll
        for (int n = 0; n < TC_TILE / 8; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int key = k0 + 8 * n + 2 * c + e % 2;
                float pe = key <= rows[e / 2] ? __expf(p[n][e] - row_lse[e / 2]) : 0.0f;
                ds[n][e] = pe * (ds[n][e] - row_delta[e / 2]);
            }
        }
        tc_mma_pb<TC_TILE / 8>(dq, ds, ks);
    }
    tc_store(dinp + at, C3, dq, r, T, scale, scale, accumulate);
}

// ============================================================================= launchers
static bool aligned16(const void* p) { return (uintptr_t)p % 16 == 0; }

// The tensor-core kernels: TF32 mode, head size 64, 16-byte aligned tensors (C = 64 NH keeps rows aligned).
static bool use_tf32_kernels(int hs, const void* a, const void* b, const void* c) {
    return cublas_compute_type() == CUBLAS_COMPUTE_32F_FAST_TF32 && hs == TC_HS && aligned16(a) && aligned16(b) &&
           aligned16(c);
}

int check_attention_head_size(int hs) {
    if (hs > ATTENTION_MAX_HEAD_SIZE)
        return set_error(LLMC_ERR_ARGUMENT, "head size C/NH = %d: the CUDA attention supports at most %d", hs,
                         ATTENTION_MAX_HEAD_SIZE);
    return LLMC_OK;
}

// The smallest fp32 instantiation that covers hs.
#define DISPATCH_HEAD_SIZE(hs, KERNEL, E, grid, ...)                   \
    do {                                                               \
        if (hs <= 16)                                                  \
            KERNEL<16, E><<<grid, Simt<16>::THREADS>>>(__VA_ARGS__);   \
        else if (hs <= 32)                                             \
            KERNEL<32, E><<<grid, Simt<32>::THREADS>>>(__VA_ARGS__);   \
        else if (hs <= 64)                                             \
            KERNEL<64, E><<<grid, Simt<64>::THREADS>>>(__VA_ARGS__);   \
        else                                                           \
            KERNEL<128, E><<<grid, Simt<128>::THREADS>>>(__VA_ARGS__); \
        LAUNCH_CHECK();                                                \
    } while (0)

template <typename E>
int attention_forward_simt_gpu(E* out, float* lse, const E* inp, int B, int T, int C, int NH) {
    int hs = C / NH;
    TRY(check_attention_head_size(hs));
    dim3 grid(B * NH, ceil_div(T, SIMT_ROWS));
    DISPATCH_HEAD_SIZE(hs, attention_forward_simt, E, grid, out, lse, inp, T, C, NH, 1.0f / sqrtf((float)hs));
    return LLMC_OK;
}

template <typename E>
int attention_delta_gpu(float* delta, const E* dout, const E* out, int B, int T, int C, int NH) {
    size_t rows = (size_t)B * NH * T;
    attention_delta_kernel<<<(unsigned)ceil_div(rows, (size_t)8), 256>>>(delta, dout, out, B, T, C, NH);
    LAUNCH_CHECK();
    return LLMC_OK;
}

template <typename E>
int attention_backward_simt_gpu(E* dinp, const E* dout, const E* inp, const float* lse, const float* delta, int B,
                                int T, int C, int NH, bool accumulate_dinp) {
    int hs = C / NH;
    TRY(check_attention_head_size(hs));
    float scale = 1.0f / sqrtf((float)hs);
    dim3 grid(B * NH, ceil_div(T, SIMT_ROWS));
    DISPATCH_HEAD_SIZE(hs, attention_backward_dkdv_simt, E, grid, dinp, dout, inp, lse, delta, T, C, NH, scale,
                       accumulate_dinp);
    DISPATCH_HEAD_SIZE(hs, attention_backward_dq_simt, E, grid, dinp, dout, inp, lse, delta, T, C, NH, scale,
                       accumulate_dinp);
    return LLMC_OK;
}

template int attention_forward_simt_gpu<bf16>(bf16*, float*, const bf16*, int, int, int, int);
template int attention_delta_gpu<bf16>(float*, const bf16*, const bf16*, int, int, int, int);
template int attention_backward_simt_gpu<bf16>(bf16*, const bf16*, const bf16*, const float*, const float*, int, int,
                                               int, int, bool);

// inp (B,T,3C) -> out (B,T,C); lse (B,NH,T) saved for the backward
int attention_forward_gpu(float* out, float* lse, const float* inp, int B, int T, int C, int NH) {
    int hs = C / NH;
    TRY(check_attention_head_size(hs));
    if (use_tf32_kernels(hs, out, inp, inp)) {
        CUDA_TRY(cudaFuncSetAttribute(attention_forward_tf32, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)TC_SMEM_BYTES));
        attention_forward_tf32<<<dim3(B * NH, ceil_div(T, TC_BLOCK_ROWS)), TC_THREADS, TC_SMEM_BYTES>>>(
            out, lse, inp, T, C, NH, 1.0f / sqrtf((float)hs));
        LAUNCH_CHECK();
        return LLMC_OK;
    }
    return attention_forward_simt_gpu(out, lse, inp, B, T, C, NH);
}

// dout (B,T,C) -> dinp (B,T,3C) (+= or =), from the forward's inp, out and lse; delta (B,NH,T) scratch
int attention_backward_gpu(float* dinp, float* delta, const float* dout, const float* inp, const float* out,
                           const float* lse, int B, int T, int C, int NH, bool accumulate_dinp) {
    int hs = C / NH;
    TRY(check_attention_head_size(hs));
    float scale = 1.0f / sqrtf((float)hs);
    TRY(attention_delta_gpu(delta, dout, out, B, T, C, NH));
    if (use_tf32_kernels(hs, dinp, inp, dout)) {
        dim3 grid(B * NH, ceil_div(T, TC_BLOCK_ROWS));
        CUDA_TRY(cudaFuncSetAttribute(attention_backward_dkdv_tf32, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)TC_SMEM_BYTES));
        CUDA_TRY(cudaFuncSetAttribute(attention_backward_dq_tf32, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)TC_SMEM_BYTES));
        attention_backward_dkdv_tf32<<<grid, TC_THREADS, TC_SMEM_BYTES>>>(dinp, dout, inp, lse, delta, T, C, NH, scale,
                                                                          accumulate_dinp);
        LAUNCH_CHECK();
        attention_backward_dq_tf32<<<grid, TC_THREADS, TC_SMEM_BYTES>>>(dinp, dout, inp, lse, delta, T, C, NH, scale,
                                                                        accumulate_dinp);
        LAUNCH_CHECK();
        return LLMC_OK;
    }
    return attention_backward_simt_gpu(dinp, dout, inp, lse, delta, B, T, C, NH, accumulate_dinp);
}

// ----------------------------------------------------------------------------- att for the kernel-level API
// att[b,h,t,t2] = exp(scale q[t].k[t2] - lse[t]) for t2 <= t, else 0; one thread per element.
__global__ void attention_probs_kernel(float* att, const float* inp, const float* lse, int B, int T, int C, int NH,
                                       float scale) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * NH * T * T) return;
    int t2 = idx % T, t = (idx / T) % T, h = (idx / ((size_t)T * T)) % NH, hs = C / NH;
    int b = idx / ((size_t)T * T * NH);
    if (t2 > t) {
        att[idx] = 0.0f;
        return;
    }
    const float* q = inp + qkv_offset(b, h, T, C, hs) + (size_t)t * 3 * C;
    const float* k = inp + qkv_offset(b, h, T, C, hs) + (size_t)t2 * 3 * C + C;
    float s = 0.0f;
    for (int d = 0; d < hs; d++) s += q[d] * k[d];
    att[idx] = expf(scale * s - lse[((size_t)b * NH + h) * T + t]);
}

int attention_probs_gpu(float* att, const float* inp, const float* lse, int B, int T, int C, int NH) {
    size_t n = (size_t)B * NH * T * T;
    attention_probs_kernel<<<(unsigned)ceil_div(n, (size_t)256), 256>>>(att, inp, lse, B, T, C, NH,
                                                                        1.0f / sqrtf((float)(C / NH)));
    LAUNCH_CHECK();
    return LLMC_OK;
}
