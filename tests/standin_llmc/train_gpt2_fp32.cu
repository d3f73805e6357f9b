/* A stand-in for llm.c's train_gpt2_fp32.cu, for CI machines that have nvcc but neither a GPU nor llm.c:
native/llmc_adapter_cuda_fp32.cu must compile and link against it as it does against llm.c.

It has the part of llm.c's ABI the adapter uses, with llm.c's names, types and signatures: cublas_handle
and cublas_compute_type, the GPT2Config, ParameterTensors, ActivationTensors, GradActTensors and GPT2
structs (the fields the adapter touches), fill_in_parameter_sizes, malloc_and_point_parameters,
fill_in_activation_sizes, malloc_and_point_activations, fill_in_grad_act_sizes, malloc_and_point_backward,
gpt2_forward, gpt2_zero_grad, gpt2_backward, gpt2_update and gpt2_free, with llm.c's conventions (exit() on
bad input, B and T fixed by the first forward, lazily allocated gradients and AdamW state, AdamW decaying
every parameter, main() behind #ifndef TESTING). Checkpoints are read by libllmc's core, not by llm.c.

Its model is NOT GPT-2, nor llm.c: it is the zero model (every logit 0, so the loss is ln V, every
gradient 0; the update is AdamW on zero gradients, i.e. weight decay). It proves that the adapter compiles,
links and exports llmc.h's API; tools/validate_llmc.py --cuda does not run the suite on it.
*/
#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include "llmc/utils.h"

static void cuda_check(cudaError_t status, const char* file, int line) {
    if (status != cudaSuccess) {
        printf("[CUDA ERROR] at file %s:%d:\n%s\n", file, line, cudaGetErrorString(status));
        exit(EXIT_FAILURE);
    }
}
#define cudaCheck(status) cuda_check((status), __FILE__, __LINE__)

static void cublas_check(cublasStatus_t status, const char* file, int line) {
    if (status != CUBLAS_STATUS_SUCCESS) {
        printf("[cuBLAS ERROR]: %d %s %d\n", status, file, line);
        exit(EXIT_FAILURE);
    }
}
#define cublasCheck(status) cublas_check((status), __FILE__, __LINE__)

static cublasComputeType_t cublas_compute_type; // main() sets both; the zero model multiplies nothing
cublasHandle_t cublas_handle;

// ----------------------------------------------------------------------------
// the model's memory, as llm.c lays it out

typedef struct {
    int max_seq_len;
    int vocab_size;
    int padded_vocab_size;
    int num_layers;
    int num_heads;
    int channels;
} GPT2Config;

#define NUM_PARAMETER_TENSORS 16
typedef struct {
    float* wte;
    float* wpe;
    float* ln1w;
    float* ln1b;
    float* qkvw;
    float* qkvb;
    float* attprojw;
    float* attprojb;
    float* ln2w;
    float* ln2b;
    float* fcw;
    float* fcb;
    float* fcprojw;
    float* fcprojb;
    float* lnfw;
    float* lnfb;
} ParameterTensors;

void fill_in_parameter_sizes(size_t* param_sizes, GPT2Config config) {
    size_t Vp = config.padded_vocab_size, C = config.channels, maxT = config.max_seq_len, L = config.num_layers;
    size_t sizes[NUM_PARAMETER_TENSORS] = {Vp * C,        maxT * C, L * C, L * C, L * 3 * C * C, L * 3 * C,
                                           L * C * C,     L * C,    L * C, L * C, L * 4 * C * C, L * 4 * C,
                                           L * C * 4 * C, L * C,    C,     C};
    memcpy(param_sizes, sizes, sizeof(sizes));
}

static float* malloc_and_point(float** targets[], const size_t* sizes, int n, int on_device) {
    size_t total = 0;
    for (int i = 0; i < n; i++) total += sizes[i];
    float* memory;
    if (on_device)
        cudaCheck(cudaMalloc((void**)&memory, total * sizeof(float)));
    else
        memory = (float*)mallocCheck(total * sizeof(float));
    float* it = memory;
    for (int i = 0; i < n; i++) {
        *(targets[i]) = it;
        it += sizes[i];
    }
    return memory;
}

float* malloc_and_point_parameters(ParameterTensors* params, size_t* param_sizes, int on_device) {
    float** ptrs[] = {&params->wte,      &params->wpe,      &params->ln1w, &params->ln1b, &params->qkvw, &params->qkvb,
                      &params->attprojw, &params->attprojb, &params->ln2w, &params->ln2b, &params->fcw,  &params->fcb,
                      &params->fcprojw,  &params->fcprojb,  &params->lnfw, &params->lnfb};
    return malloc_and_point(ptrs, param_sizes, NUM_PARAMETER_TENSORS, on_device);
}

// the zero model keeps two of llm.c's activations: the logits (llm.c's multi-purpose output buffer) and the
// per-position losses; and one of its activation gradients, the residual stream's
#define NUM_ACTIVATION_TENSORS 2
typedef struct {
    float* losses; // (B, T)
    float* output; // (B, T, Vp)
} ActivationTensors;

void fill_in_activation_sizes(size_t* act_sizes, int B, int T, GPT2Config config) {
    act_sizes[0] = (size_t)B * T;
    act_sizes[1] = (size_t)B * T * config.padded_vocab_size;
}

float* malloc_and_point_activations(ActivationTensors* acts, const size_t* act_sizes) {
    float** ptrs[] = {&acts->losses, &acts->output};
    return malloc_and_point(ptrs, act_sizes, NUM_ACTIVATION_TENSORS, 1);
}

#define NUM_BACKWARD_TENSORS 1
typedef struct {
    float* residual3; // (B, T, C)
} GradActTensors;

void fill_in_grad_act_sizes(size_t* act_sizes, int B, int T, GPT2Config config) {
    act_sizes[0] = (size_t)B * T * config.channels;
}

float* malloc_and_point_backward(GradActTensors* acts, const size_t* act_sizes) {
    float** ptrs[] = {&acts->residual3};
    return malloc_and_point(ptrs, act_sizes, NUM_BACKWARD_TENSORS, 1);
}

typedef struct {
    GPT2Config config;
    ParameterTensors params;
    size_t param_sizes[NUM_PARAMETER_TENSORS];
    float* params_memory;
    size_t num_parameters;
    ParameterTensors grads;
    float* grads_memory;
    float* m_memory;
    float* v_memory;
    ActivationTensors acts;
    size_t act_sizes[NUM_ACTIVATION_TENSORS];
    float* acts_memory;
    size_t num_activations;
    GradActTensors grads_acts;
    size_t num_grad_acts;
    float* grads_acts_memory;
    int batch_size;
    int seq_len;
    int* inputs;
    int* targets;
    float mean_loss;
    float* cpu_losses;
} GPT2;

// ----------------------------------------------------------------------------
// the zero model

void gpt2_forward(GPT2* model, int* inputs, int* targets, int B, int T) {
    int V = model->config.vocab_size;
    for (int i = 0; i < B * T; i++) {
        assert(0 <= inputs[i] && inputs[i] < V);
        if (targets != NULL) assert(0 <= targets[i] && targets[i] < V);
    }
    if (model->acts_memory == NULL) {
        model->batch_size = B;
        model->seq_len = T;
        fill_in_activation_sizes(model->act_sizes, B, T, model->config);
        model->num_activations = model->act_sizes[0] + model->act_sizes[1];
        model->acts_memory = malloc_and_point_activations(&model->acts, model->act_sizes);
        cudaCheck(cudaMalloc((void**)&model->inputs, B * T * sizeof(int)));
        cudaCheck(cudaMalloc((void**)&model->targets, B * T * sizeof(int)));
        cudaCheck(cudaMallocHost((void**)&model->cpu_losses, B * T * sizeof(float)));
    } else if (B != model->batch_size || T != model->seq_len) {
        printf("Model: B=%d T=%d, Desired: B=%d T=%d\n", model->batch_size, model->seq_len, B, T);
        exit(EXIT_FAILURE);
    }
    cudaCheck(cudaMemset(model->acts.output, 0, (size_t)B * T * model->config.padded_vocab_size * sizeof(float)));
    model->mean_loss = targets != NULL ? logf((float)V) : -1.0f;
}

void gpt2_zero_grad(GPT2* model) {
    if (model->grads_acts_memory != NULL)
        cudaCheck(cudaMemset(model->grads_acts_memory, 0, model->num_grad_acts * sizeof(float)));
    if (model->grads_memory != NULL)
        cudaCheck(cudaMemset(model->grads_memory, 0, model->num_parameters * sizeof(float)));
}

void gpt2_backward(GPT2* model) {
    if (model->mean_loss == -1.0f) {
        printf("Error: must forward with targets before backward\n");
        exit(EXIT_FAILURE);
    }
    if (model->grads_memory == NULL) {
        model->grads_memory = malloc_and_point_parameters(&model->grads, model->param_sizes, 1);
        size_t sizes[NUM_BACKWARD_TENSORS];
        GPT2Config one_layer = model->config;
        one_layer.num_layers = 1;
        fill_in_grad_act_sizes(sizes, model->batch_size, model->seq_len, one_layer);
        model->grads_acts_memory = malloc_and_point_backward(&model->grads_acts, sizes);
        model->num_grad_acts = sizes[0];
        gpt2_zero_grad(model);
    }
    // the zero model's gradients are zero: += 0 leaves them as they are
}

__global__ void adamw_kernel(float* params, const float* grads, float* m, float* v, size_t n, float lr, float beta1,
                             float beta2, float beta1_correction, float beta2_correction, float eps,
                             float weight_decay) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    m[i] = beta1 * m[i] + (1.0f - beta1) * grads[i];
    v[i] = beta2 * v[i] + (1.0f - beta2) * grads[i] * grads[i];
    float m_hat = m[i] / beta1_correction, v_hat = v[i] / beta2_correction;
    params[i] -= lr * (m_hat / (sqrtf(v_hat) + eps) + weight_decay * params[i]);
}

void gpt2_update(GPT2* model, float learning_rate, float beta1, float beta2, float eps, float weight_decay, int t) {
    size_t n = model->num_parameters;
    if (model->m_memory == NULL) {
        cudaCheck(cudaMalloc((void**)&model->m_memory, n * sizeof(float)));
        cudaCheck(cudaMalloc((void**)&model->v_memory, n * sizeof(float)));
        cudaCheck(cudaMemset(model->m_memory, 0, n * sizeof(float)));
        cudaCheck(cudaMemset(model->v_memory, 0, n * sizeof(float)));
    }
    adamw_kernel<<<(unsigned)((n + 511) / 512), 512>>>(model->params_memory, model->grads_memory, model->m_memory,
                                                       model->v_memory, n, learning_rate, beta1, beta2,
                                                       1.0f - powf(beta1, t), 1.0f - powf(beta2, t), eps, weight_decay);
    cudaCheck(cudaGetLastError());
}

void gpt2_free(GPT2* model) {
    float* device[] = {model->params_memory, model->grads_memory, model->m_memory,
                       model->v_memory,      model->acts_memory,  model->grads_acts_memory};
    for (float* p : device) cudaCheck(cudaFree(p));
    cudaCheck(cudaFree(model->inputs));
    cudaCheck(cudaFree(model->targets));
    cudaFreeHost(model->cpu_losses);
}

#ifndef TESTING
int main(void) {
    printf("the stand-in for llm.c's train_gpt2_fp32.cu has no training loop: it exists to be built with TESTING\n");
    return 0;
}
#endif
