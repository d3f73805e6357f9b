// GELU, tanh approximation (GPT-2's): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
// Built without fast math, so tanhf is the accurate one (llm.c's gelu_backward breaks under -Ofast).
// Templated on the storage type: float, or bf16 (bf16 mixed precision, computed in fp32).
#include <cmath>

#include "common.cuh"

#define GELU_SCALING_FACTOR 0.7978845608028654f // sqrt(2/pi)

template <typename T>
__global__ void gelu_forward_kernel(T* out, const T* inp, size_t N) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    float x = to_f32(inp[i]);
    float cube = 0.044715f * x * x * x;
    out[i] = from_f32<T>(0.5f * x * (1.0f + tanhf(GELU_SCALING_FACTOR * (x + cube))));
}

template <typename T>
__global__ void gelu_backward_kernel(T* dinp, const T* inp, const T* dout, size_t N, bool accumulate) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    float x = to_f32(inp[i]);
    float tanh_out = tanhf(GELU_SCALING_FACTOR * (x + 0.044715f * x * x * x));
    float sech2 = 1.0f - tanh_out * tanh_out;
    float local_grad =
        0.5f * (1.0f + tanh_out) + x * 0.5f * sech2 * GELU_SCALING_FACTOR * (1.0f + 3.0f * 0.044715f * x * x);
    float g = local_grad * to_f32(dout[i]);
    dinp[i] = from_f32<T>(accumulate ? to_f32(dinp[i]) + g : g);
}

template <typename T>
int gelu_forward_gpu(T* out, const T* inp, size_t N) {
    gelu_forward_kernel<<<(unsigned)ceil_div(N, (size_t)256), 256>>>(out, inp, N);
    LAUNCH_CHECK();
    return LLMC_OK;
}

// dinp (=|+=) gelu'(inp) * dout; dinp may alias dout when overwriting
template <typename T>
int gelu_backward_gpu(T* dinp, const T* inp, const T* dout, size_t N, bool accumulate) {
    gelu_backward_kernel<<<(unsigned)ceil_div(N, (size_t)256), 256>>>(dinp, inp, dout, N, accumulate);
    LAUNCH_CHECK();
    return LLMC_OK;
}

template int gelu_forward_gpu<float>(float*, const float*, size_t);
template int gelu_forward_gpu<bf16>(bf16*, const bf16*, size_t);
template int gelu_backward_gpu<float>(float*, const float*, const float*, size_t, bool);
template int gelu_backward_gpu<bf16>(bf16*, const bf16*, const bf16*, size_t, bool);
