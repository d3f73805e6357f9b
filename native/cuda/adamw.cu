// AdamW, one parameter tensor per launch (so weight decay can differ per tensor: llm.c's CPU decays all,
// PyTorch / llm.c CUDA only the 2-D ones). The reference's order of operations, in fp32:
//   g *= grad_scale (global-norm clipping); m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2
//   p -= lr * ((m / bc1) / (sqrt(v / bc2) + eps) + wd p)
// In bf16 mixed precision params are the fp32 master weights, and the bf16 copy the matmuls read is written
// in the same pass, stochastically rounded (bf16_stochastic: a function of the value and its index).
#include <cmath>

#include "common.cuh"

// index0: the flat index of params[0] among all the model's parameters (the rounding's position)
__global__ void adamw_kernel(float* params, bf16* params_bf16, size_t index0, const float* grads, float* m, float* v,
                             size_t n, float lr, float beta1, float beta2, float eps, float weight_decay,
                             float bias_correction1, float bias_correction2, float grad_scale) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = grads[i] * grad_scale;
    float mi = beta1 * m[i] + (1.0f - beta1) * g;
    float vi = beta2 * v[i] + (1.0f - beta2) * (g * g);
    m[i] = mi;
    v[i] = vi;
    float p = params[i];
    float update = (mi / bias_correction1) / (sqrtf(vi / bias_correction2) + eps);
    p -= lr * (update + weight_decay * p);
    params[i] = p;
    if (params_bf16) params_bf16[i] = bf16_stochastic(p, index0 + i, STOCHASTIC_ROUNDING_SEED);
}

int adamw_gpu(float* params, bf16* params_bf16, size_t index0, const float* grads, float* m, float* v, size_t n,
              float lr, float beta1, float beta2, float eps, float weight_decay, float bias_correction1,
              float bias_correction2, float grad_scale) {
    adamw_kernel<<<(unsigned)ceil_div(n, (size_t)256), 256>>>(params, params_bf16, index0, grads, m, v, n, lr, beta1,
                                                              beta2, eps, weight_decay, bias_correction1,
                                                              bias_correction2, grad_scale);
    LAUNCH_CHECK();
    return LLMC_OK;
}

// the bf16 copy of master weights set from outside (llmc_model_from_params, llmc_set_params): the same
// rounding as the update's, so a model given the weights a training run reached holds that run's bf16 copy
__global__ void round_params_kernel(bf16* params_bf16, const float* params, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) params_bf16[i] = bf16_stochastic(params[i], i, STOCHASTIC_ROUNDING_SEED);
}

int round_params_bf16_gpu(bf16* params_bf16, const float* params, size_t n) {
    round_params_kernel<<<(unsigned)ceil_div(n, (size_t)256), 256>>>(params_bf16, params, n);
    LAUNCH_CHECK();
    return LLMC_OK;
}
