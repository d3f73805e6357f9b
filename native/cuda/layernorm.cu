// LayerNorm over the last dimension C: eps 1e-5, biased variance, as llm.c and PyTorch.
// One warp per row (B*T rows); row sums by warp shuffles, whose order is fixed.
// In bf16 mixed precision the input (the residual stream), the parameters, mean and rstd stay fp32; the
// output, the matmul operand, is bf16, and so is the gradient arriving from that matmul (dout).
#include "common.cuh"

constexpr float LAYERNORM_EPS = 1e-5f;
constexpr int WARPS_PER_BLOCK = 8;

__device__ inline float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffff, v, offset);
    return v;
}

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
    layernorm_forward_kernel<<<(unsigned)ceil_div(N, (size_t)WARPS_PER_BLOCK), WARPS_PER_BLOCK * 32>>>(
        out, mean, rstd, inp, weight, bias, N, C);
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

int layernorm_backward_bf16_gpu(float* dinp, bf16* dinp_bf16, float* dweight, float* dbias, const bf16* dout,
                                const float* inp, const float* weight, const float* mean, const float* rstd, size_t N,
                                int C) {
    return layernorm_backward<bf16>(dinp, dinp_bf16, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
}

template int layernorm_forward_gpu<float>(float*, float*, float*, const float*, const float*, const float*, size_t,
                                          int);
template int layernorm_forward_gpu<bf16>(bf16*, float*, float*, const float*, const float*, const float*, size_t, int);
