// LayerNorm over the last dimension C: eps 1e-5, biased variance, as llm.c and PyTorch.
// One warp per row (B*T rows); row sums by warp shuffles, whose order is fixed.
// In bf16 mixed precision the input (the residual stream), the parameters, mean and rstd stay fp32; the
// output, the matmul operand, is bf16, and so is the gradient arriving from that matmul (dout).
#include <algorithm>

#include "common.cuh"

constexpr float LAYERNORM_EPS = 1e-5f;
constexpr int WARPS_PER_BLOCK = 8;

__device__ inline float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffff, v, offset);
    return v;
}

// 8 consecutive columns in registers: two float4 of fp32, one 16-byte pack of bf16
__device__ inline void load8(float (&v)[8], const float* p) {
    float4 a = *(const float4*)p, b = *(const float4*)(p + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
__device__ inline void load8(float (&v)[8], const bf16* p) {
    Pack16<bf16> pack = *(const Pack16<bf16>*)p;
#pragma unroll
    for (int j = 0; j < 8; j++) v[j] = __bfloat162float(pack.x[j]);
}
__device__ inline void store8(float* p, const float (&v)[8]) {
    *(float4*)p = make_float4(v[0], v[1], v[2], v[3]);
    *(float4*)(p + 4) = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ inline void store8(bf16* p, const float (&v)[8]) {
    Pack16<bf16> pack;
#pragma unroll
    for (int j = 0; j < 8; j++) pack.x[j] = __float2bfloat16_rn(v[j]);
    *(Pack16<bf16>*)p = pack;
}

// Mixed precision's forward, 16-byte accesses: lane l takes columns [8l, 8l+8) of every 256 (C % 8 == 0)
__global__ void layernorm_forward_vec_kernel(bf16* out, float* mean, float* rstd, const float* inp, const float* weight,
                                             const float* bias, size_t N, int C) {
    size_t row = (size_t)blockIdx.x * WARPS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= N) return;
    const float* x = inp + row * C;
    float s = 0.0f;
    for (int c = 8 * lane; c < C; c += 256) {
        float v[8];
        load8(v, x + c);
#pragma unroll
        for (int j = 0; j < 8; j++) s += v[j];
    }
    float m = warp_sum(s) / C;
    float var = 0.0f; // second pass (the row is in L1): no cancellation from E[x^2] - E[x]^2
    for (int c = 8 * lane; c < C; c += 256) {
        float v[8];
        load8(v, x + c);
#pragma unroll
        for (int j = 0; j < 8; j++) var += (v[j] - m) * (v[j] - m);
    }
    float r = 1.0f / sqrtf(warp_sum(var) / C + LAYERNORM_EPS);
    for (int c = 8 * lane; c < C; c += 256) {
        float v[8], w[8], b[8];
        load8(v, x + c);
        load8(w, weight + c);
        load8(b, bias + c);
#pragma unroll
        for (int j = 0; j < 8; j++) v[j] = (v[j] - m) * r * w[j] + b[j];
        store8(out + row * C + c, v);
    }
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

static bool aligned16(const void* p) { return (uintptr_t)p % 16 == 0; }

// inp (N,C) -> out (N,C); mean, rstd (N)
template <typename T>
__global__ void layernorm_forward_kernel(T* out, float* mean, float* rstd, const float* inp, const float* weight,
                                         const float* bias, size_t N, int C) {
    size_t row = (size_t)blockIdx.x * WARPS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= N) return;
    const float* x = inp + row * C;
    float s = 0.0f;
    for (int c = lane; c < C; c += 32) s += x[c];
    float m = warp_sum(s) / C;
    // second pass over the row (in L1) for the variance: no cancellation from E[x^2] - E[x]^2
    float v = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float d = x[c] - m;
        v += d * d;
    }
    float r = 1.0f / sqrtf(warp_sum(v) / C + LAYERNORM_EPS);
    T* y = out + row * C;
    for (int c = lane; c < C; c += 32) y[c] = from_f32<T>((x[c] - m) * r * weight[c] + bias[c]);
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

template <typename T>
int layernorm_forward_gpu(T* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias,
                          size_t N, int C) {
    unsigned blocks = (unsigned)ceil_div(N, (size_t)WARPS_PER_BLOCK);
    if constexpr (sizeof(T) == 2) {
        if (C % 8 == 0 && aligned16(out) && aligned16(inp) && aligned16(weight) && aligned16(bias)) {
            layernorm_forward_vec_kernel<<<blocks, WARPS_PER_BLOCK * 32>>>(out, mean, rstd, inp, weight, bias, N, C);
            LAUNCH_CHECK();
            return LLMC_OK;
        }
    }
    layernorm_forward_kernel<<<blocks, WARPS_PER_BLOCK * 32>>>(out, mean, rstd, inp, weight, bias, N, C);
    LAUNCH_CHECK();
    return LLMC_OK;
}

// dinp += rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)), dnorm = dout * weight; when dinp_bf16 is
// given it receives the updated dinp rounded to bf16 (the next matmul's operand)
template <typename T>
__global__ void layernorm_backward_dinp_kernel(float* dinp, bf16* dinp_bf16, const T* dout, const float* inp,
                                               const float* weight, const float* mean, const float* rstd, size_t N,
                                               int C) {
    size_t row = (size_t)blockIdx.x * WARPS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= N) return;
    const float* x = inp + row * C;
    const T* dy = dout + row * C;
    float m = mean[row], r = rstd[row];
    float dnorm_sum = 0.0f, dnorm_norm_sum = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float dnorm = to_f32(dy[c]) * weight[c];
        dnorm_sum += dnorm;
        dnorm_norm_sum += dnorm * (x[c] - m) * r;
    }
    float dnorm_mean = warp_sum(dnorm_sum) / C;
    float dnorm_norm_mean = warp_sum(dnorm_norm_sum) / C;
    float* dx = dinp + row * C;
    for (int c = lane; c < C; c += 32) {
        float norm = (x[c] - m) * r;
        float dnorm = to_f32(dy[c]) * weight[c];
        float updated = dx[c] + (dnorm - dnorm_mean - norm * dnorm_norm_mean) * r;
        dx[c] = updated;
        if (dinp_bf16) dinp_bf16[row * C + c] = __float2bfloat16_rn(updated);
    }
}

template <typename T>
static int layernorm_backward(float* dinp, bf16* dinp_bf16, float* dweight, float* dbias, const T* dout,
                              const float* inp, const float* weight, const float* mean, const float* rstd, size_t N,
                              int C) {
    layernorm_backward_dinp_kernel<<<(unsigned)ceil_div(N, (size_t)WARPS_PER_BLOCK), WARPS_PER_BLOCK * 32>>>(
        dinp, dinp_bf16, dout, inp, weight, mean, rstd, N, C);
    LAUNCH_CHECK();
    return layernorm_param_grads_gpu(dweight, dbias, dout, inp, mean, rstd, N, C);
}

int layernorm_backward_gpu(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                           const float* weight, const float* mean, const float* rstd, size_t N, int C) {
    return layernorm_backward<float>(dinp, nullptr, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
}

// Mixed precision's backward in one pass over the rows: dinp as above, and the parameter gradients from the
// same loads. Each warp adds its rows' dout * norm and dout into its own slice of shared memory (each column
// belongs to one lane: no two threads touch one word); the block adds its warps in order into its row of
// partial (2, blocks, C), and sum_chunks_gpu adds the blocks in order: deterministic, no atomics.
// VEC (C % 8 == 0, aligned tensors): 16-byte accesses, each lane taking 8 adjacent columns.
template <bool VEC>
__global__ void layernorm_backward_fused_kernel(float* dinp, bf16* dinp_bf16, float* partial, const bf16* dout,
                                                const float* inp, const float* weight, const float* mean,
                                                const float* rstd, size_t N, int C) {
    extern __shared__ __align__(16) float sums[]; // [warps][2][C]
    constexpr int W = VEC ? 8 : 1;                // columns a lane takes at a time: [W lane, W lane + W) of 32 W
    int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float* dw = sums + (size_t)warp * 2 * C;
    float* db = dw + C;
    for (int c = lane; c < C; c += 32) dw[c] = db[c] = 0.0f;
    __syncwarp();
    for (size_t row = (size_t)blockIdx.x * warps + warp; row < N; row += (size_t)gridDim.x * warps) {
        const float* x = inp + row * C;
        const bf16* dy = dout + row * C;
        float m = mean[row], r = rstd[row];
        float dnorm_sum = 0.0f, dnorm_norm_sum = 0.0f;
        for (int c = W * lane; c < C; c += 32 * W) {
            float g[W], xv[W], w[W];
            if constexpr (VEC) {
                load8(g, dy + c), load8(xv, x + c), load8(w, weight + c);
            } else {
                g[0] = __bfloat162float(dy[c]), xv[0] = x[c], w[0] = weight[c];
            }
#pragma unroll
            for (int j = 0; j < W; j++) {
                float dnorm = g[j] * w[j];
                dnorm_sum += dnorm;
                dnorm_norm_sum += dnorm * (xv[j] - m) * r;
            }
        }
        float dnorm_mean = warp_sum(dnorm_sum) / C;
        float dnorm_norm_mean = warp_sum(dnorm_norm_sum) / C;
        float* dx = dinp + row * C;
        for (int c = W * lane; c < C; c += 32 * W) {
            float g[W], xv[W], w[W], d[W], sw[W], sb[W];
            if constexpr (VEC) {
                load8(g, dy + c), load8(xv, x + c), load8(w, weight + c), load8(d, dx + c);
                load8(sw, dw + c), load8(sb, db + c);
            } else {
                g[0] = __bfloat162float(dy[c]), xv[0] = x[c], w[0] = weight[c], d[0] = dx[c], sw[0] = dw[c];
                sb[0] = db[c];
            }
#pragma unroll
            for (int j = 0; j < W; j++) {
                float norm = (xv[j] - m) * r;
                d[j] += (g[j] * w[j] - dnorm_mean - norm * dnorm_norm_mean) * r;
                sw[j] += g[j] * norm;
                sb[j] += g[j];
            }
            if constexpr (VEC) {
                store8(dx + c, d), store8(dinp_bf16 + row * C + c, d), store8(dw + c, sw), store8(db + c, sb);
            } else {
                dx[c] = d[0], dinp_bf16[row * C + c] = __float2bfloat16_rn(d[0]), dw[c] = sw[0], db[c] = sb[0];
            }
        }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float sw = 0.0f, sb = 0.0f;
        for (int w = 0; w < warps; w++) {
            sw += sums[(size_t)w * 2 * C + c];
            sb += sums[(size_t)w * 2 * C + C + c];
        }
        partial[(size_t)blockIdx.x * C + c] = sw;
        partial[((size_t)gridDim.x + blockIdx.x) * C + c] = sb;
    }
}

// the device's shared memory limit for one block (opt-in), read once
static int shared_memory_limit() {
    static int limit = -1;
    if (limit < 0 && cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0) != cudaSuccess) {
        cudaGetLastError();
        limit = 48 << 10;
    }
    return limit;
}

int layernorm_backward_bf16_gpu(float* dinp, bf16* dinp_bf16, float* dweight, float* dbias, const bf16* dout,
                                const float* inp, const float* weight, const float* mean, const float* rstd, size_t N,
                                int C) {
    int warps = WARPS_PER_BLOCK;
    size_t per_warp = 2 * (size_t)C * sizeof(float);
    while (warps > 1 && warps * per_warp > (size_t)shared_memory_limit()) warps /= 2;
    if (warps * per_warp > (size_t)shared_memory_limit()) // C in the tens of thousands: two passes
        return layernorm_backward<bf16>(dinp, dinp_bf16, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
    size_t smem = warps * per_warp;
    int blocks = (int)std::min(ceil_div(N, (size_t)warps * 8), (size_t)1024); // a function of the shape only
    void* partial;
    TRY(scratch_get(2 * (size_t)blocks * C * sizeof(float), &partial));
    bool vec =
        C % 8 == 0 && aligned16(dinp) && aligned16(dinp_bf16) && aligned16(dout) && aligned16(inp) && aligned16(weight);
    auto kernel = vec ? layernorm_backward_fused_kernel<true> : layernorm_backward_fused_kernel<false>;
    if (smem > (48 << 10))
        CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    kernel<<<blocks, warps * 32, smem>>>(dinp, dinp_bf16, (float*)partial, dout, inp, weight, mean, rstd, N, C);
    LAUNCH_CHECK();
    return sum_chunks_gpu(dweight, dbias, (const float*)partial, (size_t)C, blocks);
}

template int layernorm_forward_gpu<float>(float*, float*, float*, const float*, const float*, const float*, size_t,
                                          int);
template int layernorm_forward_gpu<bf16>(bf16*, float*, float*, const float*, const float*, const float*, size_t, int);
