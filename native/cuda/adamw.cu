// AdamW, one parameter tensor per launch (so weight decay can differ per tensor: llm.c's CPU decays all,
// PyTorch / llm.c CUDA only the 2-D ones). The reference's order of operations, in fp32:
//   g *= grad_scale (global-norm clipping); m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2
//   p -= lr * ((m / bc1) / (sqrt(v / bc2) + eps) + wd p)
#include <cmath>

#include "common.cuh"

__global__ void adamw_kernel(float* params, const float* grads, float* m, float* v, size_t n, float lr, float beta1,
                             float beta2, float eps, float weight_decay, float bias_correction1,
                             float bias_correction2, float grad_scale) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = grads[i] * grad_scale;
    float mi = beta1 * m[i] + (1.0f - beta1) * g;
    float vi = beta2 * v[i] + (1.0f - beta2) * (g * g);
    m[i] = mi;
    v[i] = vi;
    float p = params[i];
    float update = (mi / bias_correction1) / (sqrtf(vi / bias_correction2) + eps);
    params[i] = p - lr * (update + weight_decay * p);
}

int adamw_gpu(float* params, const float* grads, float* m, float* v, size_t n, float lr, float beta1,
              float beta2, float eps, float weight_decay, float bias_correction1, float bias_correction2,
              float grad_scale) {
    adamw_kernel<<<(unsigned)ceil_div(n, (size_t)256), 256>>>(params, grads, m, v, n, lr, beta1, beta2, eps,
                                                              weight_decay, bias_correction1, bias_correction2,
                                                              grad_scale);
    LAUNCH_CHECK();
    return LLMC_OK;
}
