// Residual connections: out = inp1 + inp2 forward; the gradient flows unchanged into both branches.
#include "common.cuh"

__global__ void residual_forward_kernel(float* out, const float* inp1, const float* inp2, size_t N) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N) out[i] = inp1[i] + inp2[i];
}

__global__ void add_inplace_kernel(float* dst, const float* src, size_t N) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N) dst[i] += src[i];
}

int residual_forward_gpu(float* out, const float* inp1, const float* inp2, size_t N) {
    residual_forward_kernel<<<(unsigned)ceil_div(N, (size_t)256), 256>>>(out, inp1, inp2, N);
    LAUNCH_CHECK();
    return LLMC_OK;
}

int add_inplace_gpu(float* dst, const float* src, size_t N) {
    add_inplace_kernel<<<(unsigned)ceil_div(N, (size_t)256), 256>>>(dst, src, N);
    LAUNCH_CHECK();
    return LLMC_OK;
}

// ----------------------------------------------------------------------------- fp32 <-> bf16
// The kernel-level API's bf16 mode moves fp32 host arrays through the bf16 kernels: convert in (round to
// nearest even, as PyTorch's .to(bfloat16)), convert out, or add a bf16 gradient into an fp32 one.
template <typename To, typename From>
__global__ void convert_kernel(To* out, const From* in, size_t N) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N) out[i] = from_f32<To>(to_f32(in[i]));
}

__global__ void add_bf16_kernel(float* dst, const bf16* src, size_t N) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N) dst[i] += __bfloat162float(src[i]);
}

int to_bf16_gpu(bf16* out, const float* in, size_t N) {
    convert_kernel<<<(unsigned)ceil_div(N, (size_t)256), 256>>>(out, in, N);
    LAUNCH_CHECK();
    return LLMC_OK;
}

int to_float_gpu(float* out, const bf16* in, size_t N) {
    convert_kernel<<<(unsigned)ceil_div(N, (size_t)256), 256>>>(out, in, N);
    LAUNCH_CHECK();
    return LLMC_OK;
}

int add_bf16_gpu(float* dst, const bf16* src, size_t N) {
    add_bf16_kernel<<<(unsigned)ceil_div(N, (size_t)256), 256>>>(dst, src, N);
    LAUNCH_CHECK();
    return LLMC_OK;
}
