// Causal self-attention of bf16 mixed precision: q, k, v (B,T,3C), the output and the gradients in bf16,
// softmax statistics and every accumulation in fp32. The algorithm is attention.cu's (FlashAttention-2's):
// the forward keeps only the logsumexp of each row, the backward recomputes P tile by tile, dk/dv and dq
// come from two kernels (S and dP computed twice, the price of having no atomics), so every output element
// is written once after a fixed-order sum: bitwise deterministic.
//
// Head size 64 runs on the tensor cores through mma.sync m16n8k16 (bf16 in, fp32 accumulate), which every
// GPU from sm_80 on executes; other head sizes (and unaligned tensors) take attention.cu's fp32 kernels
// instantiated for bf16 storage.
//
// Layout of a block: 4 warps own 64 rows (16 each) whose operand fragments stay in registers; the other
// side streams through shared memory in 64-row tiles, two stages (cp.async fills the next while the warps
// multiply the current). Fragments (g = lane / 4, c = lane % 4), PTX's m16n8k16 layout:
//   A (16x16, row-major): a0 (g, 2c..2c+1), a1 (g+8, 2c..), a2 (g, 2c+8..), a3 (g+8, 2c+8..)
//   B (16x8, k x n):      b0 (k = 2c..2c+1, n = g), b1 (k = 2c+8.., n = g)
//   C/D (16x8):           d0 d1 (g, 2c..2c+1), d2 d3 (g+8, 2c..2c+1)
// so the output fragments of one product (S, 16 x 64) are, pairwise packed, the A fragments of the next
// (P V) with no shuffles. B fragments come from smem through ldmatrix: plain for a tile used as B^T (the keys
// of S = Q K^T), transposed for a tile used as B (the values of P V). Rows of 72 bf16 (144 bytes) put
// ldmatrix's eight row addresses in eight different bank groups.
#include <cmath>
#include <cstdint>

#include "common.cuh"

namespace {

constexpr int HS = 64; // the head size of the tensor-core kernels
constexpr int WARPS = 4;
constexpr int THREADS = 32 * WARPS;
constexpr int TILE = 64;              // rows of the streamed side per smem tile
constexpr int LD = HS + 8;            // smem row stride, in bf16
constexpr int TILE_ELEMS = TILE * LD; // 2 stages x 2 tensors x 9 KiB = 36 KiB of static smem
constexpr float LOG2E = 1.4426950408889634f;

__device__ inline uint32_t smem_address(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// four 8x8 bf16 matrices; lane l gives the address of row l % 8 of matrix l / 8
__device__ inline void ldmatrix_x4(uint32_t (&r)[4], const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(p)));
}

__device__ inline void ldmatrix_x4_trans(uint32_t (&r)[4], const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(p)));
}

__device__ inline void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x, the hardware approximation (relative error ~2^-22): the softmax's exponentials are taken base 2 with
// the scale and log2(e) folded into one multiply
__device__ inline float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// two floats rounded to bf16, the first in the low half (the lower column index of a fragment)
__device__ inline uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// 16 bytes global -> smem without passing through registers; zeros when !valid (src is then not read)
__device__ inline void cp_async16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_address(dst)), "l"(src),
                 "r"(valid ? 16 : 0));
}

// Two tensors (k and v, or q and dout) of one head streamed through two smem stages of 64-row tiles.
struct TileStream {
    bf16* smem; // [2 stages][2 tensors][TILE_ELEMS]
    const bf16* src[2];
    size_t stride[2];
    int T;

    __device__ bf16* tile(int stage, int j) const { return smem + (2 * stage + j) * TILE_ELEMS; }

    // start filling stage with rows [r0, r0+64) (zeros beyond T)
    __device__ void issue(int stage, int r0) const {
#pragma unroll
        for (int j = 0; j < 2; j++) {
            for (int i = threadIdx.x; i < TILE * HS / 8; i += THREADS) { // 8 chunks of 16 bytes per row
                int r = i / (HS / 8), c8 = i % (HS / 8);
                bool valid = r0 + r < T;
                const bf16* from = src[j] + (valid ? (size_t)(r0 + r) * stride[j] + 8 * c8 : 0);
                cp_async16(tile(stage, j) + r * LD + 8 * c8, from, valid);
            }
        }
        asm volatile("cp.async.commit_group;");
    }

    // wait for the oldest stage in flight (a later issue may still be pending); the caller's
    // __syncthreads then publishes it to every warp
    __device__ static void land(bool later_pending) {
        if (later_pending)
            asm volatile("cp.async.wait_group 1;" ::: "memory");
        else
            asm volatile("cp.async.wait_group 0;" ::: "memory");
    }
};

// A fragments of RB blocks of 16 rows [r, r+16 RB) x 64 dims of a (T, stride) matrix in global memory
template <int RB>
__device__ inline void load_a(uint32_t (*a)[HS / 16][4], const bf16* src, size_t stride, int r, int T) {
    int g = threadIdx.x % 32 / 4, c = threadIdx.x % 4;
#pragma unroll
    for (int rb = 0; rb < RB; rb++) {
#pragma unroll
        for (int kk = 0; kk < HS / 16; kk++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int row = r + 16 * rb + g + 8 * (e % 2), col = 16 * kk + 2 * c + 8 * (e / 2);
                a[rb][kk][e] = row < T ? *(const uint32_t*)(src + (size_t)row * stride + col) : 0u;
            }
        }
    }
}

// acc[rb][n] (16 x 8: columns 8n..8n+7) += A[rb] (16 x 64, fragments) . tile^T, tile rows [8n, 8n+8) being the
// columns; each B fragment read from smem serves all RB row blocks
template <int N, int RB>
__device__ inline void mma_a_bt(float (*acc)[N][4], const uint32_t (*a)[HS / 16][4], const bf16* tile) {
    int lane = threadIdx.x % 32;
#pragma unroll
    for (int n = 0; n < N; n++) {
#pragma unroll
        for (int half = 0; half < HS / 32; half++) { // dims [32 half, +32): k-steps 2 half and 2 half + 1
            uint32_t b[4];
            ldmatrix_x4(b, tile + (8 * n + lane % 8) * LD + 32 * half + 8 * (lane / 8));
#pragma unroll
            for (int rb = 0; rb < RB; rb++) {
                mma_bf16(acc[rb][n], a[rb][2 * half], b[0], b[1]);
                mma_bf16(acc[rb][n], a[rb][2 * half + 1], b[2], b[3]);
            }
        }
    }
}

// acc[rb] (16 x 64: 8 fragments) += P[rb] (16 x 16K: the output fragments of a product) . tile rows [0, 16K)
template <int K, int RB>
__device__ inline void mma_p_b(float (*acc)[HS / 8][4], const float (*p)[2 * K][4], const bf16* tile) {
    int lane = threadIdx.x % 32;
#pragma unroll
    for (int kk = 0; kk < K; kk++) {
        uint32_t a[RB][4];
#pragma unroll
        for (int rb = 0; rb < RB; rb++) {
            a[rb][0] = pack_bf16(p[rb][2 * kk][0], p[rb][2 * kk][1]);
            a[rb][1] = pack_bf16(p[rb][2 * kk][2], p[rb][2 * kk][3]);
            a[rb][2] = pack_bf16(p[rb][2 * kk + 1][0], p[rb][2 * kk + 1][1]);
            a[rb][3] = pack_bf16(p[rb][2 * kk + 1][2], p[rb][2 * kk + 1][3]);
        }
        const bf16* rows = tile + (16 * kk + 8 * (lane / 8 % 2) + lane % 8) * LD + 8 * (lane / 16);
#pragma unroll
        for (int n = 0; n < HS / 8; n += 2) { // matrices: (rows +0, dims 8n), (+8, 8n), (+0, 8n+8), (+8, 8n+8)
            uint32_t b[4];
            ldmatrix_x4_trans(b, rows + 8 * n);
#pragma unroll
            for (int rb = 0; rb < RB; rb++) {
                mma_bf16(acc[rb][n], a[rb], b[0], b[1]);
                mma_bf16(acc[rb][n + 1], a[rb], b[2], b[3]);
            }
        }
    }
}

// this warp's 16 rows from r of a (16 x 64) fragment set, rows < T: dst = x * scale (scale[0] for row g, [1] g+8)
__device__ inline void store_rows(bf16* dst, size_t stride, const float (*x)[4], int r, int T, const float* scale) {
    int g = threadIdx.x % 32 / 4, c = threadIdx.x % 4;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        int row = r + g + 8 * half;
        if (row >= T) continue;
#pragma unroll
        for (int n = 0; n < HS / 8; n++)
            *(uint32_t*)(dst + (size_t)row * stride + 8 * n + 2 * c) =
                pack_bf16(scale[half] * x[n][2 * half], scale[half] * x[n][2 * half + 1]);
    }
}

// ============================================================================= kernels
// Rows a block owns: the forward and dq kernels give each warp two blocks of 16 rows (every B fragment read
// from smem then feeds twice the tensor-core work; smem bandwidth, not the tensor cores, bounds one block
// of 16); the dk/dv kernel, whose warps hold k, v, dk and dv in registers, keeps one.
constexpr int RB_Q = 2, RB_KV = 1;
constexpr int Q_ROWS = 16 * RB_Q * WARPS, KV_ROWS = 16 * RB_KV * WARPS;

// grid (B*NH, query blocks, heaviest first): out (B,T,C), lse (B,NH,T)
__global__ void __launch_bounds__(THREADS)
    attention_forward_bf16_kernel(bf16* out, float* lse, const bf16* inp, int T, int C, int NH, float scale) {
    constexpr int RB = RB_Q, KEYS = 32;
    __shared__ __align__(16) bf16 smem[2 * 2 * TILE_ELEMS];
    int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    int q0 = (gridDim.y - 1 - blockIdx.y) * Q_ROWS;
    int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4, c = threadIdx.x % 4;
    int r = q0 + 16 * RB * warp; // this warp's rows: [r, r + 16 RB)
    size_t C3 = 3 * (size_t)C;
    const bf16* q = inp + (size_t)b * T * C3 + (size_t)h * HS;
    uint32_t qa[RB][HS / 16][4];
    load_a<RB>(qa, q, C3, r, T);
    float o[RB][HS / 8][4] = {};
    // per row (rb, half): running max m of the base-2 scores and this thread's share l of the sum of 2^(s - m)
    float m[RB][2], l[RB][2];
#pragma unroll
    for (int rb = 0; rb < RB; rb++) m[rb][0] = m[rb][1] = -INFINITY, l[rb][0] = l[rb][1] = 0.0f;
    float scale2 = scale * LOG2E;
    TileStream kv = {smem, {q + C, q + 2 * C}, {C3, C3}, T};
    int tiles = ceil_div(min(q0 + Q_ROWS, T), TILE); // keys up to the block's last query
    kv.issue(0, 0);
    for (int kt = 0; kt < tiles; kt++) {
        int stage = kt % 2, k0 = kt * TILE;
        __syncthreads(); // the other stage (tile kt-1) is no longer read
        if (kt + 1 < tiles) kv.issue(1 - stage, k0 + TILE);
        TileStream::land(kt + 1 < tiles);
        __syncthreads();
#pragma unroll 1
        for (int part = 0; part < TILE / KEYS; part++) { // KEYS keys at a time: fewer registers
            int kp = k0 + part * KEYS;
            if (kp > r + 16 * RB - 1) break; // this and the later keys are after all of this warp's queries
            float s[RB][KEYS / 8][4] = {};
            mma_a_bt<KEYS / 8, RB>(s, qa, kv.tile(stage, 0) + part * KEYS * LD);
            bool diagonal = kp + KEYS - 1 > r; // keys after some query: masked
#pragma unroll
            for (int rb = 0; rb < RB; rb++) {
#pragma unroll
                for (int half = 0; half < 2; half++) {
                    int row = r + 16 * rb + g + 8 * half;
                    float mx = m[rb][half];
#pragma unroll
                    for (int n = 0; n < KEYS / 8; n++) {
#pragma unroll
                        for (int j = 0; j < 2; j++) {
                            float& x = s[rb][n][2 * half + j];
                            x = diagonal && kp + 8 * n + 2 * c + j > row ? -INFINITY : x * scale2;
                            mx = fmaxf(mx, x);
                        }
                    }
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
                    float correction = exp2_approx(m[rb][half] - mx); // key 0 comes first and every row sees it
                    l[rb][half] *= correction;
#pragma unroll
                    for (int n = 0; n < HS / 8; n++) {
                        o[rb][n][2 * half] *= correction;
                        o[rb][n][2 * half + 1] *= correction;
                    }
#pragma unroll
                    for (int n = 0; n < KEYS / 8; n++) {
                        s[rb][n][2 * half] = exp2_approx(s[rb][n][2 * half] - mx);
                        s[rb][n][2 * half + 1] = exp2_approx(s[rb][n][2 * half + 1] - mx);
                        l[rb][half] += s[rb][n][2 * half] + s[rb][n][2 * half + 1];
                    }
                    m[rb][half] = mx;
                }
            }
            mma_p_b<KEYS / 16, RB>(o, s, kv.tile(stage, 1) + part * KEYS * LD);
        }
    }
#pragma unroll
    for (int rb = 0; rb < RB; rb++) {
        float inv[2];
#pragma unroll
        for (int half = 0; half < 2; half++) {
            float sum = l[rb][half];
            sum += __shfl_xor_sync(0xffffffff, sum, 1);
            sum += __shfl_xor_sync(0xffffffff, sum, 2);
            int row = r + 16 * rb + g + 8 * half;
            // lse in natural-log units: (m + log2 l) / log2(e)
            if (c == 0 && row < T) lse[(size_t)bh * T + row] = (m[rb][half] + log2f(sum)) / LOG2E;
            inv[half] = 1.0f / sum;
        }
        store_rows(out + (size_t)b * T * C + (size_t)h * HS, C, o[rb], r + 16 * rb, T, inv);
    }
}

// grid (B*NH, key blocks; the first have the most queries to walk). Each warp owns 16 keys and computes
// transposed products over 32 queries at a time: S^T = k q^T, dP^T = v dout^T, then dv += P^T dout and
// dk += dS^T q.
__global__ void __launch_bounds__(THREADS)
    attention_backward_dkdv_bf16_kernel(bf16* dinp, const bf16* dout, const bf16* inp, const float* lse,
                                        const float* delta, int T, int C, int NH, float scale) {
    constexpr int RB = RB_KV;
    __shared__ __align__(16) bf16 smem[2 * 2 * TILE_ELEMS];
    __shared__ float lse_s[2][TILE], delta_s[2][TILE]; // lse in base 2
    int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    int k0 = blockIdx.y * KV_ROWS;
    int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4, c = threadIdx.x % 4;
    int r = k0 + 16 * warp, keys[2] = {r + g, r + g + 8};
    size_t C3 = 3 * (size_t)C, at = (size_t)b * T * C3 + (size_t)h * HS;
    const bf16* dy = dout + (size_t)b * T * C + (size_t)h * HS;
    const float* row_lse = lse + (size_t)bh * T;
    const float* row_delta = delta + (size_t)bh * T;
    uint32_t ka[RB][HS / 16][4], va[RB][HS / 16][4];
    load_a<RB>(ka, inp + at + C, C3, r, T);
    load_a<RB>(va, inp + at + 2 * C, C3, r, T);
    float dk[RB][HS / 8][4] = {}, dv[RB][HS / 8][4] = {};
    float scale2 = scale * LOG2E;
    TileStream qdy = {smem, {inp + at, dy}, {C3, (size_t)C}, T};
    // lse and delta of the tile a stage holds: read into registers at issue, stored to smem at land
    int own = threadIdx.x;
    float next_lse = 0.0f, next_delta = 0.0f;
    auto fetch = [&](int t0) {
        bool valid = own < TILE && t0 + own < T;
        next_lse = valid ? row_lse[t0 + own] * LOG2E : 0.0f;
        next_delta = valid ? row_delta[t0 + own] : 0.0f;
    };
    qdy.issue(0, k0);
    fetch(k0);
    for (int t0 = k0, kt = 0; t0 < T; t0 += TILE, kt++) {
        int stage = kt % 2;
        __syncthreads();
        if (own < TILE) {
            lse_s[stage][own] = next_lse;
            delta_s[stage][own] = next_delta;
        }
        bool more = t0 + TILE < T;
        if (more) {
            qdy.issue(1 - stage, t0 + TILE);
            fetch(t0 + TILE);
        }
        TileStream::land(more);
        __syncthreads();
        if (t0 + TILE - 1 < r) continue; // every query of the tile is before this warp's keys
#pragma unroll 1
        for (int half = 0; half < 2; half++) { // queries [t0 + 32 half, +32); not unrolled: fewer registers
            constexpr int Q = TILE / 2;
            const bf16* qs = qdy.tile(stage, 0) + half * Q * LD;
            const bf16* dys = qdy.tile(stage, 1) + half * Q * LD;
            float p[RB][Q / 8][4] = {}, ds[RB][Q / 8][4] = {};
            mma_a_bt<Q / 8, RB>(p, ka, qs);
            mma_a_bt<Q / 8, RB>(ds, va, dys);
#pragma unroll
            for (int n = 0; n < Q / 8; n++) {
#pragma unroll
                for (int j = 0; j < 2; j++) { // a query column: its lse and delta serve both key rows
                    int i = half * Q + 8 * n + 2 * c + j, t = t0 + i;
                    float query_lse = lse_s[stage][i], query_delta = delta_s[stage][i];
#pragma unroll
                    for (int k = 0; k < 2; k++) {
                        int e = 2 * k + j;
                        float pe = keys[k] <= t && t < T ? exp2_approx(p[0][n][e] * scale2 - query_lse) : 0.0f;
                        ds[0][n][e] = pe * (ds[0][n][e] - query_delta);
                        p[0][n][e] = pe;
                    }
                }
            }
            mma_p_b<Q / 16, RB>(dv, p, dys);
            mma_p_b<Q / 16, RB>(dk, ds, qs);
        }
    }
    const float dk_scale[2] = {scale, scale}, dv_scale[2] = {1.0f, 1.0f};
    store_rows(dinp + at + C, C3, dk[0], r, T, dk_scale);
    store_rows(dinp + at + 2 * C, C3, dv[0], r, T, dv_scale);
}

// grid (B*NH, query blocks, heaviest first): S = q k^T, dP = dout v^T, dq += dS k, over 16 keys at a time
__global__ void __launch_bounds__(THREADS)
    attention_backward_dq_bf16_kernel(bf16* dinp, const bf16* dout, const bf16* inp, const float* lse,
                                      const float* delta, int T, int C, int NH, float scale) {
    constexpr int RB = RB_Q, K = 16;
    __shared__ __align__(16) bf16 smem[2 * 2 * TILE_ELEMS];
    int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    int q0 = (gridDim.y - 1 - blockIdx.y) * Q_ROWS;
    int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4, c = threadIdx.x % 4;
    int r = q0 + 16 * RB * warp;
    size_t C3 = 3 * (size_t)C, at = (size_t)b * T * C3 + (size_t)h * HS;
    uint32_t qa[RB][HS / 16][4], dya[RB][HS / 16][4];
    load_a<RB>(qa, inp + at, C3, r, T);
    load_a<RB>(dya, dout + (size_t)b * T * C + (size_t)h * HS, C, r, T);
    float scale2 = scale * LOG2E;
    float row_lse[RB][2], row_delta[RB][2]; // lse in base 2
#pragma unroll
    for (int rb = 0; rb < RB; rb++) {
#pragma unroll
        for (int half = 0; half < 2; half++) {
            int row = r + 16 * rb + g + 8 * half;
            row_lse[rb][half] = row < T ? lse[(size_t)bh * T + row] * LOG2E : 0.0f;
            row_delta[rb][half] = row < T ? delta[(size_t)bh * T + row] : 0.0f;
        }
    }
    float dq[RB][HS / 8][4] = {};
    TileStream kv = {smem, {inp + at + C, inp + at + 2 * C}, {C3, C3}, T};
    int tiles = ceil_div(min(q0 + Q_ROWS, T), TILE);
    kv.issue(0, 0);
    for (int kt = 0; kt < tiles; kt++) {
        int stage = kt % 2, k0 = kt * TILE;
        __syncthreads();
        if (kt + 1 < tiles) kv.issue(1 - stage, k0 + TILE);
        TileStream::land(kt + 1 < tiles);
        __syncthreads();
#pragma unroll 1
        for (int part = 0; part < TILE / K; part++) { // K keys at a time: fewer registers
            int kh = k0 + part * K;
            if (kh > r + 16 * RB - 1) break; // this and the later keys are after all of this warp's queries
            const bf16* ks = kv.tile(stage, 0) + part * K * LD;
            const bf16* vs = kv.tile(stage, 1) + part * K * LD;
            float p[RB][K / 8][4] = {}, ds[RB][K / 8][4] = {};
            mma_a_bt<K / 8, RB>(p, qa, ks);
            mma_a_bt<K / 8, RB>(ds, dya, vs);
#pragma unroll
            for (int rb = 0; rb < RB; rb++) {
#pragma unroll
                for (int n = 0; n < K / 8; n++) {
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        int key = kh + 8 * n + 2 * c + e % 2, row = r + 16 * rb + g + 8 * (e / 2);
                        float pe = key <= row ? exp2_approx(p[rb][n][e] * scale2 - row_lse[rb][e / 2]) : 0.0f;
                        ds[rb][n][e] = pe * (ds[rb][n][e] - row_delta[rb][e / 2]);
                    }
                }
            }
            mma_p_b<K / 16, RB>(dq, ds, ks);
        }
    }
    const float dq_scale[2] = {scale, scale};
#pragma unroll
    for (int rb = 0; rb < RB; rb++) store_rows(dinp + at, C3, dq[rb], r + 16 * rb, T, dq_scale);
}

// delta = rowsum(dout * out), (B,NH,T), for head size 64: 8 threads per row, one 16-byte load of each
__global__ void attention_delta_bf16_kernel(float* delta, const bf16* dout, const bf16* out, int T, int C, int NH,
                                            size_t rows) {
    size_t row = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 8;
    int part = threadIdx.x % 8;
    float s = 0.0f;
    if (row < rows) { // no early return: the 8 threads of a row meet in shuffles
        int t = row % T, h = (row / T) % NH;
        size_t b = row / ((size_t)T * NH), at = (b * T + t) * C + (size_t)h * HS + 8 * part;
        uint4 dy = *(const uint4*)(dout + at), y = *(const uint4*)(out + at);
        const __nv_bfloat162* dy2 = (const __nv_bfloat162*)&dy;
        const __nv_bfloat162* y2 = (const __nv_bfloat162*)&y;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float2 a = __bfloat1622float2(dy2[i]), o = __bfloat1622float2(y2[i]);
            s += a.x * o.x + a.y * o.y;
        }
    }
    for (int offset = 1; offset < 8; offset *= 2) s += __shfl_xor_sync(0xffffffff, s, offset);
    if (row < rows && part == 0) delta[row] = s;
}

bool aligned16(const void* p) { return (uintptr_t)p % 16 == 0; }

// head size 64 with 16-byte aligned tensors (C = 64 NH keeps every row aligned)
bool use_tensor_cores(int hs, const void* a, const void* b, const void* c) {
    return hs == HS && aligned16(a) && aligned16(b) && aligned16(c);
}

} // namespace

// inp (B,T,3C) -> out (B,T,C); lse (B,NH,T) saved for the backward
int attention_forward_bf16_gpu(bf16* out, float* lse, const bf16* inp, int B, int T, int C, int NH) {
    int hs = C / NH;
    TRY(check_attention_head_size(hs));
    if (!use_tensor_cores(hs, out, inp, inp)) return attention_forward_simt_gpu(out, lse, inp, B, T, C, NH);
    attention_forward_bf16_kernel<<<dim3(B * NH, ceil_div(T, Q_ROWS)), THREADS>>>(out, lse, inp, T, C, NH,
                                                                                  1.0f / sqrtf((float)hs));
    LAUNCH_CHECK();
    return LLMC_OK;
}

// dout (B,T,C) -> dinp (B,T,3C), overwritten, from the forward's inp, out and lse; delta (B,NH,T) scratch
int attention_backward_bf16_gpu(bf16* dinp, float* delta, const bf16* dout, const bf16* inp, const bf16* out,
                                const float* lse, int B, int T, int C, int NH) {
    int hs = C / NH;
    TRY(check_attention_head_size(hs));
    if (!use_tensor_cores(hs, dinp, inp, dout) || !aligned16(out)) {
        TRY(attention_delta_gpu(delta, dout, out, B, T, C, NH));
        return attention_backward_simt_gpu(dinp, dout, inp, lse, delta, B, T, C, NH, false);
    }
    size_t rows = (size_t)B * NH * T;
    attention_delta_bf16_kernel<<<(unsigned)ceil_div(rows * 8, (size_t)256), 256>>>(delta, dout, out, T, C, NH, rows);
    LAUNCH_CHECK();
    float scale = 1.0f / sqrtf((float)hs);
    attention_backward_dkdv_bf16_kernel<<<dim3(B * NH, ceil_div(T, KV_ROWS)), THREADS>>>(dinp, dout, inp, lse, delta, T,
                                                                                         C, NH, scale);
    LAUNCH_CHECK();
    attention_backward_dq_bf16_kernel<<<dim3(B * NH, ceil_div(T, Q_ROWS)), THREADS>>>(dinp, dout, inp, lse, delta, T, C,
                                                                                      NH, scale);
    LAUNCH_CHECK();
    return LLMC_OK;
}
