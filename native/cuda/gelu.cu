// GELU, tanh approximation (GPT-2's): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
// Built without fast math, so tanhf is the accurate one (llm.c's gelu_backward breaks under -Ofast).
#include <cmath>

#include "common.cuh"

#define GELU_SCALING_FACTOR 0.7978845608028654f   // sqrt(2/pi)

__global__ void gelu_forward_kernel(float* out, const float* inp, size_t N) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    float x = inp[i];
    float cube = 0.044715f * x * x * x;
    out[i] = 0.5f * x * (1.0f + tanhf(GELU_SCALING_FACTOR * (x + cube)));
}

__global__ void gelu_backward_kernel(float* dinp, const float* inp, const float* dout, size_t N, bool accumulate) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    float x = inp[i];
    float tanh_out = tanhf(GELU_SCALING_FACTOR * (x + 0.044715f * x * x * x));
    float sech2 = 1.0f - tanh_out * tanh_out;
    float local_grad =
        0.5f * (1.0f + tanh_out) + x * 0.5f * sech2 * GELU_SCALING_FACTOR * (1.0f + 3.0f * 0.044715f * x * x);
    float g = local_grad * dout[i];
    dinp[i] = accumulate ? dinp[i] + g : g;
}

int gelu_forward_gpu(float* out, const float* inp, size_t N) {
    gelu_forward_kernel<<<(unsigned)ceil_div(N, (size_t)256), 256>>>(out, inp, N);
    LAUNCH_CHECK();
    return LLMC_OK;
}

// dinp (=|+=) gelu'(inp) * dout; dinp may alias dout when overwriting
int gelu_backward_gpu(float* dinp, const float* inp, const float* dout, size_t N, bool accumulate) {
    gelu_backward_kernel<<<(unsigned)ceil_div(N, (size_t)256), 256>>>(dinp, inp, dout, N, accumulate);
    LAUNCH_CHECK();
    return LLMC_OK;
}
