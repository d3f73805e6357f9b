/* A stand-in for llm.c's train_gpt2.cu (bf16 mixed precision), for CI machines that have nvcc but neither a
GPU nor llm.c: native/llmc_adapter_cuda.cu must compile and link against it as it does against llm.c.

It has the part of llm.c's ABI the adapter uses, with llm.c's names, types and signatures: floatX (bf16),
the GPT2Config, ActivationTensors, TensorSpec, MultiGpuConfig and GPT2 structs (the fields the adapter
touches), fill_in_activation_sizes, sizeof_dtype, multi_gpu_config_init, common_start, gpt2_init_common,
gpt2_allocate_weights, gpt2_allocate_state, gpt2_forward, gpt2_validate, gpt2_backward_and_reduce,
gpt2_calculate_grad_norm, gpt2_update and gpt2_free, with llm.c's conventions (device memory laid out as
llm.c lays it out, exit() on bad input, main() behind #ifndef TESTING). Checkpoints are read by libllmc's
core, not by llm.c.

Its model is NOT GPT-2, nor llm.c: it is the zero model (every logit 0, so the loss is ln V, every
gradient 0; the update is AdamW on zero gradients, i.e. weight decay on the 2-D tensors). It proves that
the adapter compiles, links and exports llmc.h's API; tools/validate_llmc.py --cuda does not run the suite
on it.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include "llmc/utils.h"

typedef __nv_bfloat16 floatX;

static void cuda_check(cudaError_t status, const char* file, int line) {
    if (status != cudaSuccess) {
        printf("[CUDA ERROR] at file %s:%d:\n%s\n", file, line, cudaGetErrorString(status));
        exit(EXIT_FAILURE);
    }
}
#define cudaCheck(status) cuda_check((status), __FILE__, __LINE__)

// ----------------------------------------------------------------------------
// single-GPU bookkeeping

typedef struct {
    int process_rank;
    int num_processes;
    int local_device_idx;
    int zero_stage;
    size_t shard_num_parameters;
} MultiGpuConfig;

MultiGpuConfig multi_gpu_config;
cudaStream_t main_stream;

MultiGpuConfig multi_gpu_config_init(int num_processes, int process_rank, int gpus_per_node, char* server_ip,
                                     char* fs_path, char* init_method) {
    cudaCheck(cudaSetDevice(0));
    MultiGpuConfig config = {0, 1, 0, 0, 0};
    return config;
}

void common_start(bool override_enable_tf32 = true, bool print_device_info = true) {
    cudaCheck(cudaStreamCreate(&main_stream));
}

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

constexpr int NUM_PARAMETER_TENSORS = 16;

enum class DType : uint8_t { FP32, FP16, BF16 };

size_t sizeof_dtype(DType type) { return type == DType::FP32 ? sizeof(float) : sizeof(floatX); }

struct TensorSpec {
    void** ptr;
    size_t size;
    DType type;
};

// the zero model keeps three of llm.c's activations: the attention matrix, the logits (llm.c's
// multi-purpose output buffer) and the per-position losses
constexpr int NUM_ACTIVATION_TENSORS = 3;
typedef struct {
    floatX* att;    // (L, B, NH, T, T)
    floatX* output; // (B, T, Vp)
    float* losses;  // (B, T)
} ActivationTensors;

void fill_in_activation_sizes(const ActivationTensors* data, TensorSpec (&tensors)[NUM_ACTIVATION_TENSORS], size_t B,
                              size_t T, GPT2Config config, int recompute) {
    size_t L = config.num_layers, NH = config.num_heads, Vp = config.padded_vocab_size;
    tensors[0] = TensorSpec{(void**)&data->att, L * B * NH * T * T, DType::BF16};
    tensors[1] = TensorSpec{(void**)&data->output, B * T * Vp, DType::BF16};
    tensors[2] = TensorSpec{(void**)&data->losses, B * T, DType::FP32};
}

typedef struct {
    GPT2Config config;
    size_t param_elements[NUM_PARAMETER_TENSORS];
    void* params_memory;
    size_t num_parameters;
    size_t num_parameters_bytes;
    void* grads_memory;
    float* m_memory;
    float* v_memory;
    float* master_weights;
    ActivationTensors acts;
    TensorSpec acts_specs[NUM_ACTIVATION_TENSORS];
    void* acts_memory;
    int batch_size;
    int seq_len;
    float mean_loss;
    int use_master_weights;
    bool init_state;
    int recompute;
} GPT2;

void gpt2_init_common(GPT2* model) {
    memset(model, 0, sizeof(GPT2));
    model->mean_loss = -1.0f;
    model->use_master_weights = 1;
    model->init_state = true;
    model->recompute = 1;
}

void gpt2_allocate_weights(GPT2* model) {
    size_t Vp = model->config.padded_vocab_size, C = model->config.channels, maxT = model->config.max_seq_len;
    size_t L = model->config.num_layers;
    size_t sizes[NUM_PARAMETER_TENSORS] = {Vp * C,        maxT * C, L * C, L * C, L * 3 * C * C, L * 3 * C,
                                           L * C * C,     L * C,    L * C, L * C, L * 4 * C * C, L * 4 * C,
                                           L * C * 4 * C, L * C,    C,     C};
    model->num_parameters = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        model->param_elements[i] = sizes[i];
        model->num_parameters += sizes[i];
    }
    model->num_parameters_bytes = model->num_parameters * sizeof(floatX);
    cudaCheck(cudaMalloc(&model->params_memory, model->num_parameters_bytes));
}

void gpt2_allocate_state(GPT2* model, int B, int T) {
    model->batch_size = B;
    model->seq_len = T;
    cudaCheck(cudaMalloc(&model->grads_memory, model->num_parameters_bytes));
    fill_in_activation_sizes(&model->acts, model->acts_specs, B, T, model->config, model->recompute);
    size_t bytes = 0;
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++)
        bytes += model->acts_specs[i].size * sizeof_dtype(model->acts_specs[i].type);
    cudaCheck(cudaMalloc(&model->acts_memory, bytes));
    cudaCheck(cudaMemset(model->acts_memory, 0, bytes));
    char* it = (char*)model->acts_memory;
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) {
        *model->acts_specs[i].ptr = it;
        it += model->acts_specs[i].size * sizeof_dtype(model->acts_specs[i].type);
    }
    size_t n = multi_gpu_config.shard_num_parameters;
    cudaCheck(cudaMalloc((void**)&model->m_memory, n * sizeof(float)));
    cudaCheck(cudaMalloc((void**)&model->v_memory, n * sizeof(float)));
    cudaCheck(cudaMalloc((void**)&model->master_weights, n * sizeof(float)));
}

// ----------------------------------------------------------------------------
// the zero model

static void check_tokens(const int* tokens, size_t n, int V) {
    for (size_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= V) {
            printf("Token out of range\n");
            exit(EXIT_FAILURE);
        }
    }
}

void gpt2_forward(GPT2* model, const int* inputs, size_t B, size_t T) {
    if (B > (size_t)model->batch_size || T > (size_t)model->seq_len) {
        printf("B, T too large\n");
        exit(EXIT_FAILURE);
    }
    check_tokens(inputs, B * T, model->config.vocab_size);
    cudaCheck(cudaMemset(model->acts.output, 0, B * T * model->config.padded_vocab_size * sizeof(floatX)));
}

float gpt2_validate(GPT2* model, const int* inputs, const int* targets, size_t B, size_t T) {
    gpt2_forward(model, inputs, B, T);
    check_tokens(targets, B * T, model->config.vocab_size);
    return logf((float)model->config.vocab_size);
}

void gpt2_backward_and_reduce(GPT2* model, int* inputs, const int* targets, int grad_accum_steps, int micro_step) {
    if (micro_step == 0) cudaCheck(cudaMemset(model->grads_memory, 0, model->num_parameters_bytes));
    model->mean_loss = logf((float)model->config.vocab_size);
}

float gpt2_calculate_grad_norm(GPT2* model, MultiGpuConfig* multi_gpu_config) {
    return 0.0f; // every gradient is zero
}

// AdamW on one tensor: fp32 master weights, bf16 copy rounded to nearest (llm.c rounds stochastically)
__global__ void adamw_kernel(floatX* params, float* master, const floatX* grads, float* m, float* v, size_t n, float lr,
                             float beta1, float beta2, float beta1_correction, float beta2_correction, float eps,
                             float weight_decay, float grad_scale) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float grad = grad_scale * __bfloat162float(grads[i]);
    m[i] = beta1 * m[i] + (1.0f - beta1) * grad;
    v[i] = beta2 * v[i] + (1.0f - beta2) * grad * grad;
    float m_hat = m[i] / beta1_correction, v_hat = v[i] / beta2_correction;
    master[i] -= lr * (m_hat / (sqrtf(v_hat) + eps) + weight_decay * master[i]);
    params[i] = __float2bfloat16(master[i]);
}

void gpt2_update(GPT2* model, float learning_rate, float beta1, float beta2, float eps, float weight_decay,
                 float grad_scale, int t, MultiGpuConfig* multi_gpu_config, bool init_from_master_only = false) {
    size_t offset = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t n = model->param_elements[i];
        bool matrix = i == 0 || i == 1 || i == 4 || i == 6 || i == 10 || i == 12; // llm.c's 2-D tensors
        adamw_kernel<<<(unsigned)((n + 511) / 512), 512, 0, main_stream>>>(
            (floatX*)model->params_memory + offset, model->master_weights + offset,
            (const floatX*)model->grads_memory + offset, model->m_memory + offset, model->v_memory + offset, n,
            learning_rate, beta1, beta2, 1.0f - powf(beta1, t), 1.0f - powf(beta2, t), eps,
            matrix ? weight_decay : 0.0f, grad_scale);
        cudaCheck(cudaGetLastError());
        offset += n;
    }
    cudaCheck(cudaDeviceSynchronize());
}

void gpt2_free(GPT2* model) {
    void* pointers[] = {model->params_memory, model->grads_memory,   model->m_memory,
                        model->v_memory,      model->master_weights, model->acts_memory};
    for (void* p : pointers) cudaCheck(cudaFree(p));
}

#ifndef TESTING
int main(void) {
    printf("the stand-in for llm.c's train_gpt2.cu has no training loop: it exists to be built with TESTING\n");
    return 0;
}
#endif
