// The llmc_model API of llmc.h on the GPU: GPT-2 in llm.c's layout (16 parameter tensors in one flat
// buffer), activations sized once for (max_B, max_T), forward / backward / AdamW on the device.
// Every entry point returns an error code and never ends the process.
// The config and argument checks, the parameter sizes and the checkpoint reader are the host C core's
// (native/core), the same code as the CPU library's.
// A model made in bf16 mode (llmc_set_precision(2)) keeps its fp32 parameters, gradients and AdamW state
// here, as master weights, and hands the bf16 activations and computation to mixed.cu.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <new>
#include <vector>

#include "common.cuh"
#include "../core/core.h"

constexpr size_t DLOGITS_ROWS = 8192; // positions per chunk of the lm head's backward (1.6 GB at Vp = 50304)

// llm.c's order: wte wpe ln1w ln1b qkvw qkvb attprojw attprojb ln2w ln2b fcw fcb fcprojw fcprojb lnfw lnfb
enum { WTE, WPE, LN1W, LN1B, QKVW, QKVB, ATTPROJW, ATTPROJB, LN2W, LN2B, FCW, FCB, FCPROJW, FCPROJB, LNFW, LNFB };

struct Params { // views into one flat device buffer
    float* t[LLMC_NUM_PARAM_TENSORS];
};

// Activations kept from forward to backward; per-layer tensors stack all L layers.
struct Activations {
    float* encoded;   // (B,T,C)
    float* ln1;       // (L,B,T,C)
    float* ln1_mean;  // (L,B,T)
    float* ln1_rstd;  // (L,B,T)
    float* qkv;       // (L,B,T,3C)
    float* atty;      // (L,B,T,C)
    float* att_lse;   // (L,B,NH,T) logsumexp of each attention row: the backward recomputes the probabilities
    float* residual2; // (L,B,T,C)
    float* ln2;       // (L,B,T,C)
    float* ln2_mean;  // (L,B,T)
    float* ln2_rstd;  // (L,B,T)
    float* fch;       // (L,B,T,4C)
    float* fch_gelu;  // (L,B,T,4C)
    float* residual3; // (L,B,T,C)
    float* lnf;       // (B,T,C)
    float* lnf_mean;  // (B,T)
    float* lnf_rstd;  // (B,T)
    float* logits;    // (B,T,Vp)
    float* losses;    // (B,T)
    float2* stats;    // (B,T) softmax max and sum of exp, read again by the backward
    // work buffers, reused by every layer
    float* dlogits;   // (DLOGITS_ROWS,Vp) one chunk of positions at a time
    float* att_delta; // (B,NH,T) rowsum(datty * atty), the attention backward's scratch
    float* dresidual; // (B,T,C) gradient flowing down the residual stream
    float* dbtc;      // (B,T,C) gradient of a layernorm output or of atty
    float* dfch;      // (B,T,4C)
    float* dqkv;      // (B,T,3C)
};

struct llmc_model {
    llmc_config config;
    int max_B, max_T;
    size_t param_sizes[LLMC_NUM_PARAM_TENSORS];
    size_t num_parameters;
    float* params_memory;
    float* grads_memory;
    float* m_memory; // AdamW state, allocated at the first update or set_optimizer_state
    float* v_memory;
    Params params, grads;
    Activations acts; // fp32 / TF32 models
    void* acts_memory;
    MixedModel* mixed; // bf16 mixed-precision models instead of acts
    int* inputs;       // (max_B*max_T) device
    int* targets;
    TokenBuckets buckets;
    int B, T; // of the last forward
    bool forward_done, has_targets;
    // data parallelism (llmc_dist_join); dist NULL: one GPU. ZeRO-1 pads the flat buffers to world_size equal
    // shards (the padding stays zero) and keeps m and v for this rank's shard only.
    DistComm* dist;
    int zero_stage, dist_world;
    size_t shard_offset, shard_count, shard_stride; // this rank's parameters; stride: the padded shard size
    bool grads_synced; // the gradients are the average over the ranks (since the last backward / zero_grad)
};

static void point_params(Params* p, float* memory, const size_t* sizes) {
    for (int i = 0; i < LLMC_NUM_PARAM_TENSORS; i++) {
        p->t[i] = memory;
        memory += sizes[i];
    }
}

// Allocates everything for (max_B, max_T); on failure frees what it made.
static int model_create(const llmc_config* config, int max_B, int max_T, llmc_model** out) {
    TRY(llmc_check_model_size(config, max_B, max_T));
    if (config->channels / config->num_heads > ATTENTION_MAX_HEAD_SIZE)
        return set_error(LLMC_ERR_ARGUMENT,
                         "config: head size channels / num_heads = %d / %d exceeds the CUDA "
                         "attention's limit of %d",
                         config->channels, config->num_heads, ATTENTION_MAX_HEAD_SIZE);
    llmc_model* model = new (std::nothrow) llmc_model();
    if (!model) return set_error(LLMC_ERR_ALLOC, "cannot allocate the model struct");
    model->config = *config;
    model->max_B = max_B;
    model->max_T = max_T;
    llmc_param_sizes(config, model->param_sizes);
    model->num_parameters = llmc_num_parameters(config);

    bool mixed = precision_mode() == PRECISION_BF16;
    size_t B = max_B, T = max_T, C = config->channels, L = config->num_layers, NH = config->num_heads;
    size_t Vp = config->padded_vocab_size, BT = B * T;
    Activations& a = model->acts;
    // (pointer, floats) for one allocation; stats are float2, counted as 2 floats
    std::vector<std::pair<float**, size_t>> layout = {{&a.encoded, BT * C},
                                                      {&a.ln1, L * BT * C},
                                                      {&a.ln1_mean, L * BT},
                                                      {&a.ln1_rstd, L * BT},
                                                      {&a.qkv, L * BT * 3 * C},
                                                      {&a.atty, L * BT * C},
                                                      {&a.att_lse, L * B * NH * T},
                                                      {&a.residual2, L * BT * C},
                                                      {&a.ln2, L * BT * C},
                                                      {&a.ln2_mean, L * BT},
                                                      {&a.ln2_rstd, L * BT},
                                                      {&a.fch, L * BT * 4 * C},
                                                      {&a.fch_gelu, L * BT * 4 * C},
                                                      {&a.residual3, L * BT * C},
                                                      {&a.lnf, BT * C},
                                                      {&a.lnf_mean, BT},
                                                      {&a.lnf_rstd, BT},
                                                      {&a.logits, BT * Vp},
                                                      {&a.losses, BT},
                                                      {(float**)&a.stats, 2 * BT},
                                                      {&a.dlogits, std::min(BT, DLOGITS_ROWS) * Vp},
                                                      {&a.att_delta, B * NH * T},
                                                      {&a.dresidual, BT * C},
                                                      {&a.dbtc, BT * C},
                                                      {&a.dfch, BT * 4 * C},
                                                      {&a.dqkv, BT * 3 * C}};
    // every tensor starts 256-byte aligned (16-byte vector accesses, cuBLASLt's preferred alignment)
    auto padded = [](size_t n) { return ceil_div(n, (size_t)64) * 64; };
    size_t total = 0;
    if (!mixed)
        for (auto& [ptr, n] : layout) total += padded(n);

    int rc = LLMC_OK;
    size_t param_bytes = model->num_parameters * sizeof(float);
    if (cudaMalloc(&model->params_memory, param_bytes) != cudaSuccess ||
        cudaMalloc(&model->grads_memory, param_bytes) != cudaSuccess ||
        (!mixed && cudaMalloc(&model->acts_memory, total * sizeof(float)) != cudaSuccess) ||
        cudaMalloc(&model->inputs, BT * sizeof(int)) != cudaSuccess ||
        cudaMalloc(&model->targets, BT * sizeof(int)) != cudaSuccess) {
        cudaGetLastError(); // clear the sticky-free allocation error
        size_t free_bytes = 0, total_bytes = 0;
        cudaMemGetInfo(&free_bytes, &total_bytes);
        rc = set_error(LLMC_ERR_ALLOC,
                       "out of device memory: the model needs %.2f GiB (params, grads, activations "
                       "for B=%d, T=%d), %.2f GiB free",
                       (2.0 * param_bytes + total * 4.0 + BT * 8.0) / (1 << 30), max_B, max_T,
                       free_bytes / (double)(1 << 30));
    } else if (cudaMemset(model->grads_memory, 0, param_bytes) != cudaSuccess) {
        rc = set_error(LLMC_ERR_DEVICE, "cudaMemset of the gradients failed: %s",
                       cudaGetErrorString(cudaGetLastError()));
    } else if (mixed) {
        rc = mixed_create(*config, max_B, max_T, model->param_sizes, &model->mixed);
    }
    if (rc != LLMC_OK) {
        llmc_model_free(model);
        return rc;
    }
    float* p = (float*)model->acts_memory;
    for (auto& [ptr, n] : layout) {
        if (!p) break; // a mixed-precision model: its activations are mixed.cu's
        *ptr = p;
        p += padded(n);
    }
    point_params(&model->params, model->params_memory, model->param_sizes);
    point_params(&model->grads, model->grads_memory, model->param_sizes);
    *out = model;
    return LLMC_OK;
}

// ----------------------------------------------------------------------------- forward / backward
// The forward over the inputs (and targets) already on the device.
static int forward_pass(llmc_model* model) {
    const llmc_config& cfg = model->config;
    int B = model->B, T = model->T, C = cfg.channels, NH = cfg.num_heads, L = cfg.num_layers;
    int V = cfg.vocab_size, Vp = cfg.padded_vocab_size;
    size_t BT = (size_t)B * T;
    // per-layer strides use the current B, T: the stacks are packed for this forward
    size_t btc = BT * C, lse_size = (size_t)B * NH * T;
    Params& p = model->params;
    Activations& a = model->acts;

    TRY(encoder_forward_gpu(a.encoded, model->inputs, p.t[WTE], p.t[WPE], B, T, C));
    for (int l = 0; l < L; l++) {
        const float* residual = l == 0 ? a.encoded : a.residual3 + (l - 1) * btc;
        float* ln1 = a.ln1 + l * btc;
        float* qkv = a.qkv + l * 3 * btc;
        float* atty = a.atty + l * btc;
        float* residual2 = a.residual2 + l * btc;
        float* ln2 = a.ln2 + l * btc;
        float* fch = a.fch + l * 4 * btc;
        float* fch_gelu = a.fch_gelu + l * 4 * btc;
        TRY(layernorm_forward_gpu(ln1, a.ln1_mean + l * BT, a.ln1_rstd + l * BT, residual, p.t[LN1W] + l * C,
                                  p.t[LN1B] + l * C, BT, C));
        TRY(matmul_forward_gpu(qkv, ln1, p.t[QKVW] + (size_t)l * 3 * C * C, p.t[QKVB] + l * 3 * C, nullptr, BT, C,
                               3 * C));
        TRY(attention_forward_gpu(atty, a.att_lse + l * lse_size, qkv, B, T, C, NH));
        // residual2 = residual + attproj, the residual added by the GEMM itself
        TRY(matmul_forward_gpu(residual2, atty, p.t[ATTPROJW] + (size_t)l * C * C, p.t[ATTPROJB] + l * C, residual, BT,
                               C, C));
        TRY(layernorm_forward_gpu(ln2, a.ln2_mean + l * BT, a.ln2_rstd + l * BT, residual2, p.t[LN2W] + l * C,
                                  p.t[LN2B] + l * C, BT, C));
        TRY(matmul_forward_gpu(fch, ln2, p.t[FCW] + (size_t)l * 4 * C * C, p.t[FCB] + l * 4 * C, nullptr, BT, C,
                               4 * C));
        TRY(gelu_forward_gpu(fch_gelu, fch, 4 * btc));
        // residual3 = residual2 + fcproj
        TRY(matmul_forward_gpu(a.residual3 + l * btc, fch_gelu, p.t[FCPROJW] + (size_t)l * 4 * C * C,
                               p.t[FCPROJB] + l * C, residual2, BT, 4 * C, C));
    }
    TRY(layernorm_forward_gpu(a.lnf, a.lnf_mean, a.lnf_rstd, a.residual3 + (L - 1) * btc, p.t[LNFW], p.t[LNFB], BT, C));
    TRY(matmul_forward_gpu(a.logits, a.lnf, p.t[WTE], nullptr, nullptr, BT, C, Vp)); // lm head tied to wte
    if (model->has_targets) TRY(classifier_forward_gpu(a.losses, a.stats, a.logits, model->targets, BT, V, Vp));
    return LLMC_OK;
}

static int backward_pass(llmc_model* model) {
    const llmc_config& cfg = model->config;
    int B = model->B, T = model->T, C = cfg.channels, NH = cfg.num_heads, L = cfg.num_layers;
    int V = cfg.vocab_size, Vp = cfg.padded_vocab_size;
    size_t BT = (size_t)B * T, btc = BT * C, lse_size = (size_t)B * NH * T;
    Params &p = model->params, &g = model->grads;
    Activations& a = model->acts;

    // The lm head, DLOGITS_ROWS positions at a time: dlogits = (softmax - onehot) / (B*T) for a chunk, then
    // its share of dlnf and dwte. The logits stay intact (llmc_get_logits after backward and update), and
    // the (B,T,Vp) gradient is never stored whole.
    for (size_t r = 0; r < BT; r += DLOGITS_ROWS) {
        size_t rows = std::min(DLOGITS_ROWS, BT - r);
        TRY(classifier_backward_gpu(a.dlogits, a.logits + r * Vp, a.stats + r, model->targets + r, 1.0f / (float)BT,
                                    rows, V, Vp));
        TRY(matmul_backward_gpu(a.dbtc + r * C, g.t[WTE], nullptr, a.dlogits, a.lnf + r * C, p.t[WTE], rows, C, Vp,
                                false));
    }
    CUDA_TRY(cudaMemset(a.dresidual, 0, btc * sizeof(float)));
    TRY(layernorm_backward_gpu(a.dresidual, g.t[LNFW], g.t[LNFB], a.dbtc, a.residual3 + (L - 1) * btc, p.t[LNFW],
                               a.lnf_mean, a.lnf_rstd, BT, C));
    for (int l = L - 1; l >= 0; l--) {
        const float* residual = l == 0 ? a.encoded : a.residual3 + (l - 1) * btc;
        // residual3 = residual2 + fcproj: dresidual reaches both unchanged
        TRY(matmul_backward_gpu(a.dfch, g.t[FCPROJW] + (size_t)l * 4 * C * C, g.t[FCPROJB] + l * C, a.dresidual,
                                a.fch_gelu + l * 4 * btc, p.t[FCPROJW] + (size_t)l * 4 * C * C, BT, 4 * C, C, false));
        TRY(gelu_backward_gpu(a.dfch, a.fch + l * 4 * btc, a.dfch, 4 * btc, false));
        TRY(matmul_backward_gpu(a.dbtc, g.t[FCW] + (size_t)l * 4 * C * C, g.t[FCB] + l * 4 * C, a.dfch, a.ln2 + l * btc,
                                p.t[FCW] + (size_t)l * 4 * C * C, BT, C, 4 * C, false));
        TRY(layernorm_backward_gpu(a.dresidual, g.t[LN2W] + l * C, g.t[LN2B] + l * C, a.dbtc, a.residual2 + l * btc,
                                   p.t[LN2W] + l * C, a.ln2_mean + l * BT, a.ln2_rstd + l * BT, BT, C));
        // dresidual is now d residual2 = residual + attproj
        TRY(matmul_backward_gpu(a.dbtc, g.t[ATTPROJW] + (size_t)l * C * C, g.t[ATTPROJB] + l * C, a.dresidual,
                                a.atty + l * btc, p.t[ATTPROJW] + (size_t)l * C * C, BT, C, C, false));
        TRY(attention_backward_gpu(a.dqkv, a.att_delta, a.dbtc, a.qkv + l * 3 * btc, a.atty + l * btc,
                                   a.att_lse + l * lse_size, B, T, C, NH, false));
        TRY(matmul_backward_gpu(a.dbtc, g.t[QKVW] + (size_t)l * 3 * C * C, g.t[QKVB] + l * 3 * C, a.dqkv,
                                a.ln1 + l * btc, p.t[QKVW] + (size_t)l * 3 * C * C, BT, C, 3 * C, false));
        TRY(layernorm_backward_gpu(a.dresidual, g.t[LN1W] + l * C, g.t[LN1B] + l * C, a.dbtc, residual,
                                   p.t[LN1W] + l * C, a.ln1_mean + l * BT, a.ln1_rstd + l * BT, BT, C));
    }
    return encoder_backward_gpu(g.t[WTE], g.t[WPE], a.dresidual, &model->buckets, B, T, C);
}

// AdamW's state covers every parameter, or under ZeRO-1 this rank's (padded) shard.
static size_t optimizer_state_size(const llmc_model* model) {
    return model->dist && model->zero_stage == 1 ? model->shard_stride : model->num_parameters;
}

// AdamW's m and v, zeroed, at the first update or set_optimizer_state: both or neither. A failed
// cudaMalloc is cleared from cudaGetLastError, so the model stays usable (later launch checks would
// otherwise report the stale error).
static int alloc_optimizer_state(llmc_model* model, const char* fn) {
    if (model->m_memory) return LLMC_OK;
    size_t bytes = optimizer_state_size(model) * sizeof(float);
    float *m = nullptr, *v = nullptr;
    bool got_m = cudaMalloc(&m, bytes) == cudaSuccess;
    bool got_v = got_m && cudaMalloc(&v, bytes) == cudaSuccess;
    if (!got_v) {
        cudaGetLastError();
        if (got_m) cudaFree(m);
        size_t free_bytes = 0, total_bytes = 0;
        cudaMemGetInfo(&free_bytes, &total_bytes);
        return set_error(LLMC_ERR_ALLOC, "%s: out of device memory for the AdamW state (2 x %.2f GiB, %.2f GiB free)",
                         fn, bytes / (double)(1 << 30), free_bytes / (double)(1 << 30));
    }
    model->m_memory = m; // owned by the model from here on (llmc_model_free)
    model->v_memory = v;
    CUDA_TRY(cudaMemset(m, 0, bytes));
    CUDA_TRY(cudaMemset(v, 0, bytes));
    return LLMC_OK;
}

// A mixed-precision model's bf16 weights after its master weights were set from outside.
static int sync_bf16_params(llmc_model* model) {
    if (!model->mixed) return LLMC_OK;
    return round_params_bf16_gpu(mixed_params_bf16(model->mixed), model->params_memory, model->num_parameters);
}

// ----------------------------------------------------------------------------- llmc.h: model API
#define CHECK_MODEL(model, fn) \
    if (!(model)) return set_error(LLMC_ERR_ARGUMENT, fn ": model is NULL")
#define CHECK_PTR(ptr, fn) \
    if (!(ptr)) return set_error(LLMC_ERR_ARGUMENT, fn ": " #ptr " is NULL")

extern "C" {

int llmc_model_from_params(const llmc_config* config, const float* params, int max_B, int max_T, llmc_model** out) {
    clear_error();
    CHECK_PTR(config, "llmc_model_from_params");
    CHECK_PTR(params, "llmc_model_from_params");
    CHECK_PTR(out, "llmc_model_from_params");
    *out = nullptr;
    TRY(llmc_check_config(config, nullptr));
    TRY(ensure_device());
    llmc_model* model;
    TRY(model_create(config, max_B, max_T, &model));
    if (cudaMemcpy(model->params_memory, params, model->num_parameters * sizeof(float), cudaMemcpyHostToDevice) !=
        cudaSuccess) {
        llmc_model_free(model);
        return set_error(LLMC_ERR_DEVICE, "llmc_model_from_params: copying the parameters to the device failed");
    }
    int rc = sync_bf16_params(model);
    if (rc != LLMC_OK) {
        llmc_model_free(model);
        return rc;
    }
    *out = model;
    return LLMC_OK;
}

int llmc_model_from_checkpoint(const char* path, int max_B, int max_T, llmc_model** out) {
    clear_error();
    CHECK_PTR(path, "llmc_model_from_checkpoint");
    CHECK_PTR(out, "llmc_model_from_checkpoint");
    *out = nullptr;
    llmc_checkpoint ck;
    TRY(llmc_checkpoint_open(path, &ck));
    int rc = llmc_check_model_size(&ck.config, max_B, max_T); // before reading the whole file
    std::vector<float> params;
    if (rc == LLMC_OK) {
        try {
            params.resize(ck.num_parameters);
        } catch (const std::bad_alloc&) {
            rc = set_error(LLMC_ERR_ALLOC, "checkpoint '%s': out of host memory for its %zu parameters", path,
                           ck.num_parameters);
        }
    }
    if (rc != LLMC_OK) {
        llmc_checkpoint_close(&ck);
        return rc;
    }
    TRY(llmc_checkpoint_read(&ck, params.data()));
    return llmc_model_from_params(&ck.config, params.data(), max_B, max_T, out);
}

void llmc_model_free(llmc_model* model) {
    if (!model) return;
    cudaFree(model->params_memory);
    cudaFree(model->grads_memory);
    cudaFree(model->m_memory);
    cudaFree(model->v_memory);
    dist_free(model->dist);
    cudaFree(model->acts_memory);
    mixed_free(model->mixed);
    cudaFree(model->inputs);
    cudaFree(model->targets);
    token_buckets_free(&model->buckets);
    delete model;
}

int llmc_model_config(const llmc_model* model, llmc_config* out) {
    clear_error();
    CHECK_MODEL(model, "llmc_model_config");
    CHECK_PTR(out, "llmc_model_config");
    *out = model->config;
    return LLMC_OK;
}

size_t llmc_model_num_parameters(const llmc_model* model) { return model ? model->num_parameters : 0; }

int llmc_forward(llmc_model* model, const int* inputs, const int* targets, int B, int T, float* mean_loss) {
    clear_error();
    CHECK_MODEL(model, "llmc_forward");
    int V = model->config.vocab_size;
    TRY(llmc_check_forward(inputs, targets, B, T, model->max_B, model->max_T, V));
    size_t BT = (size_t)B * T;
    CUDA_TRY(cudaMemcpy(model->inputs, inputs, BT * sizeof(int), cudaMemcpyHostToDevice));
    if (targets) CUDA_TRY(cudaMemcpy(model->targets, targets, BT * sizeof(int), cudaMemcpyHostToDevice));
    model->B = B;
    model->T = T;
    model->has_targets = targets != nullptr;
    model->forward_done = false;
    if (model->mixed)
        TRY(mixed_forward(model->mixed, model->params_memory, model->inputs, targets ? model->targets : nullptr, B, T));
    else
        TRY(forward_pass(model));
    // the backward's token buckets, sorted on the host while the GPU runs the forward
    if (targets) TRY(token_buckets_build(&model->buckets, inputs, (int)BT, V));
    model->forward_done = true;
    float loss = -1.0f; // llm.c's "no targets"
    if (targets) {
        double sum;
        TRY(sum_gpu(&sum, model->mixed ? mixed_losses(model->mixed) : model->acts.losses, BT, false));
        loss = (float)(sum / BT);
    } else {
        CUDA_TRY(cudaDeviceSynchronize()); // report asynchronous failures of the forward here
    }
    if (mean_loss) *mean_loss = loss;
    return LLMC_OK;
}

int llmc_zero_grad(llmc_model* model) {
    clear_error();
    CHECK_MODEL(model, "llmc_zero_grad");
    CUDA_TRY(cudaMemset(model->grads_memory, 0, model->num_parameters * sizeof(float)));
    model->grads_synced = false;
    return LLMC_OK;
}

int llmc_backward(llmc_model* model) {
    clear_error();
    CHECK_MODEL(model, "llmc_backward");
    if (!model->forward_done || !model->has_targets)
        return set_error(LLMC_ERR_STATE, "llmc_backward: needs a forward with targets first");
    if (model->dist && model->zero_stage == 1 && model->grads_synced) // the other shards are no sums any more
        return set_error(LLMC_ERR_UNSUPPORTED,
                         "llmc_backward: under ZeRO-1 the gradients were reduce-scattered "
                         "(llmc_dist_sync_grads); accumulate before they are, or zero_grad first");
    if (model->mixed)
        TRY(mixed_backward(model->mixed, model->params_memory, model->grads_memory, model->targets, &model->buckets,
                           model->B, model->T));
    else
        TRY(backward_pass(model));
    CUDA_TRY(cudaDeviceSynchronize());
    model->grads_synced = false;
    return LLMC_OK;
}

// The gradients averaged over the ranks: ZeRO-0 everywhere, ZeRO-1 on this rank's shard.
static int sync_grads(llmc_model* model) {
    if (!model->dist || model->grads_synced) return LLMC_OK;
    if (model->zero_stage == 1)
        TRY(dist_reduce_scatter_mean(model->dist, model->grads_memory, model->shard_stride));
    else
        TRY(dist_allreduce_mean(model->dist, model->grads_memory, model->num_parameters));
    model->grads_synced = true;
    return LLMC_OK;
}

int llmc_update(llmc_model* model, const llmc_adamw* opt, int t, float* grad_norm) {
    clear_error();
    CHECK_MODEL(model, "llmc_update");
    TRY(llmc_check_update(opt, t));
    TRY(alloc_optimizer_state(model, "llmc_update"));
    TRY(sync_grads(model));
    // this rank's parameters: all of them, or its ZeRO-1 shard [begin, end) (m and v hold only that)
    bool sharded = model->dist && model->zero_stage == 1;
    size_t begin = sharded ? model->shard_offset : 0;
    size_t end = begin + (sharded ? model->shard_count : model->num_parameters);
    double norm_squared;
    TRY(sum_gpu(&norm_squared, model->grads_memory + begin, end - begin, true));
    if (sharded) TRY(dist_sum_doubles(model->dist, &norm_squared, 1)); // the global norm, the same on every rank
    double norm = sqrt(norm_squared);
    float grad_scale = (opt->grad_clip > 0.0f && norm > opt->grad_clip) ? (float)(opt->grad_clip / norm) : 1.0f;
    float bias_correction1 = (float)(1.0 - pow((double)opt->beta1, t));
    float bias_correction2 = (float)(1.0 - pow((double)opt->beta2, t));
    size_t offset = 0;
    for (int i = 0; i < LLMC_NUM_PARAM_TENSORS; offset += model->param_sizes[i], i++) {
        size_t lo = std::max(offset, begin), hi = std::min(offset + model->param_sizes[i], end);
        if (lo >= hi) continue; // the tensor lies outside this rank's shard
        float wd = llmc_weight_decay(opt, i);
        bf16* params_bf16 = model->mixed ? mixed_params_bf16(model->mixed) + lo : nullptr;
        TRY(adamw_gpu(model->params_memory + lo, params_bf16, lo, model->grads_memory + lo,
                      model->m_memory + (lo - begin), model->v_memory + (lo - begin), hi - lo, opt->learning_rate,
                      opt->beta1, opt->beta2, opt->eps, wd, bias_correction1, bias_correction2, grad_scale));
    }
    if (sharded) { // every rank's updated shard to every rank; the bf16 copy rounds as adamw_gpu did
        TRY(dist_allgather(model->dist, model->params_memory, model->shard_stride));
        TRY(sync_bf16_params(model));
    }
    CUDA_TRY(cudaDeviceSynchronize());
    if (grad_norm) *grad_norm = (float)norm;
    return LLMC_OK;
}

static int copy_out(float* dst, const float* src, size_t n, const char* fn) {
    if (!dst) return set_error(LLMC_ERR_ARGUMENT, "%s: dst is NULL", fn);
    CUDA_TRY(cudaMemcpy(dst, src, n * sizeof(float), cudaMemcpyDeviceToHost));
    return LLMC_OK;
}

int llmc_get_params(const llmc_model* model, float* dst) {
    clear_error();
    CHECK_MODEL(model, "llmc_get_params");
    return copy_out(dst, model->params_memory, model->num_parameters, "llmc_get_params");
}

int llmc_set_params(llmc_model* model, const float* src) {
    clear_error();
    CHECK_MODEL(model, "llmc_set_params");
    CHECK_PTR(src, "llmc_set_params");
    CUDA_TRY(cudaMemcpy(model->params_memory, src, model->num_parameters * sizeof(float), cudaMemcpyHostToDevice));
    return sync_bf16_params(model);
}

int llmc_save_checkpoint(const llmc_model* model, const char* path, int version) {
    clear_error();
    CHECK_MODEL(model, "llmc_save_checkpoint");
    CHECK_PTR(path, "llmc_save_checkpoint");
    std::vector<float> params;
    try {
        params.resize(model->num_parameters);
    } catch (const std::bad_alloc&) {
        return set_error(LLMC_ERR_ALLOC, "llmc_save_checkpoint: no host memory for %zu parameters",
                         model->num_parameters);
    }
    TRY(copy_out(params.data(), model->params_memory, model->num_parameters, "llmc_save_checkpoint"));
    return llmc_checkpoint_write(path, &model->config, params.data(), version);
}

int llmc_get_grads(const llmc_model* model, float* dst) {
    clear_error();
    CHECK_MODEL(model, "llmc_get_grads");
    return copy_out(dst, model->grads_memory, model->num_parameters, "llmc_get_grads");
}

int llmc_get_logits(const llmc_model* model, float* dst) {
    clear_error();
    CHECK_MODEL(model, "llmc_get_logits");
    if (!model->forward_done) return set_error(LLMC_ERR_STATE, "llmc_get_logits: no forward has run");
    size_t n = (size_t)model->B * model->T * model->config.padded_vocab_size;
    if (model->mixed) {
        CHECK_PTR(dst, "llmc_get_logits");
        return mixed_get_logits(model->mixed, dst, n);
    }
    return copy_out(dst, model->acts.logits, n, "llmc_get_logits");
}

// Under ZeRO-1 the full m or v exists on no rank: gathered from the shards into a scratch buffer.
static int copy_out_state(const llmc_model* model, float* dst, const float* state, const char* fn) {
    if (!(model->dist && model->zero_stage == 1)) return copy_out(dst, state, model->num_parameters, fn);
    size_t stride = model->shard_stride;
    void* scratch;
    TRY(scratch_get(stride * model->dist_world * sizeof(float), &scratch));
    float* full = (float*)scratch;
    CUDA_TRY(cudaMemcpy(full + model->shard_offset, state, stride * sizeof(float), cudaMemcpyDeviceToDevice));
    TRY(dist_allgather(model->dist, full, stride));
    return copy_out(dst, full, model->num_parameters, fn);
}

int llmc_get_optimizer_state(const llmc_model* model, float* m, float* v) {
    clear_error();
    CHECK_MODEL(model, "llmc_get_optimizer_state");
    CHECK_PTR(m, "llmc_get_optimizer_state");
    CHECK_PTR(v, "llmc_get_optimizer_state");
    if (!model->m_memory) { // zeros before the first update
        memset(m, 0, model->num_parameters * sizeof(float));
        memset(v, 0, model->num_parameters * sizeof(float));
        return LLMC_OK;
    }
    TRY(copy_out_state(model, m, model->m_memory, "llmc_get_optimizer_state"));
    return copy_out_state(model, v, model->v_memory, "llmc_get_optimizer_state");
}

int llmc_set_optimizer_state(llmc_model* model, const float* m, const float* v) {
    clear_error();
    CHECK_MODEL(model, "llmc_set_optimizer_state");
    CHECK_PTR(m, "llmc_set_optimizer_state");
    CHECK_PTR(v, "llmc_set_optimizer_state");
    TRY(alloc_optimizer_state(model, "llmc_set_optimizer_state"));
    bool sharded = model->dist && model->zero_stage == 1; // this rank keeps its shard of the full arrays
    size_t first = sharded ? model->shard_offset : 0, count = sharded ? model->shard_count : model->num_parameters;
    CUDA_TRY(cudaMemcpy(model->m_memory, m + first, count * sizeof(float), cudaMemcpyHostToDevice));
    CUDA_TRY(cudaMemcpy(model->v_memory, v + first, count * sizeof(float), cudaMemcpyHostToDevice));
    return LLMC_OK;
}

// ----------------------------------------------------------------------------- llmc.h: data parallelism
int llmc_dist_unique_id(unsigned char* id) {
    clear_error();
    CHECK_PTR(id, "llmc_dist_unique_id");
    TRY(ensure_device());
    return dist_unique_id(id);
}

// ZeRO-1's shards must be equal for NCCL: the flat parameter and gradient buffers grow to world_size shards,
// the tail zero (it never changes: its gradient is zero and AdamW keeps a zero parameter at zero).
static int pad_flat_buffer(float** buffer, size_t used, size_t padded) {
    float* grown = nullptr;
    CUDA_TRY(cudaMalloc(&grown, padded * sizeof(float)));
    cudaError_t err = cudaMemcpy(grown, *buffer, used * sizeof(float), cudaMemcpyDeviceToDevice);
    if (err == cudaSuccess) err = cudaMemset(grown + used, 0, (padded - used) * sizeof(float));
    if (err != cudaSuccess) {
        cudaFree(grown);
        return set_error(LLMC_ERR_DEVICE, "padding the parameters for ZeRO-1 failed: %s", cudaGetErrorString(err));
    }
    cudaFree(*buffer);
    *buffer = grown;
    return LLMC_OK;
}

int llmc_dist_join(llmc_model* model, const unsigned char* id, int rank, int world_size, int zero_stage) {
    clear_error();
    CHECK_MODEL(model, "llmc_dist_join");
    CHECK_PTR(id, "llmc_dist_join");
    if (model->dist) return set_error(LLMC_ERR_STATE, "llmc_dist_join: this model has joined already");
    if (world_size < 1 || rank < 0 || rank >= world_size)
        return set_error(LLMC_ERR_ARGUMENT, "llmc_dist_join: rank %d of world_size %d: need 0 <= rank < world_size",
                         rank, world_size);
    if (zero_stage != 0 && zero_stage != 1)
        return set_error(LLMC_ERR_ARGUMENT, "llmc_dist_join: zero_stage %d: 0 or 1", zero_stage);
    if (zero_stage == 1 && model->m_memory)
        return set_error(LLMC_ERR_STATE,
                         "llmc_dist_join: ZeRO-1 shards AdamW's state: join before the first "
                         "update or set_optimizer_state");
    size_t P = model->num_parameters, stride = (P + world_size - 1) / world_size;
    if (zero_stage == 1 && stride * world_size != P) {
        TRY(pad_flat_buffer(&model->params_memory, P, stride * world_size));
        TRY(pad_flat_buffer(&model->grads_memory, P, stride * world_size));
        point_params(&model->params, model->params_memory, model->param_sizes);
        point_params(&model->grads, model->grads_memory, model->param_sizes);
    }
    TRY(dist_create(id, rank, world_size, &model->dist));
    model->zero_stage = zero_stage;
    model->dist_world = world_size;
    model->shard_stride = stride;
    model->shard_offset = std::min(P, (size_t)rank * stride);
    model->shard_count = std::min(P, model->shard_offset + stride) - model->shard_offset;
    model->grads_synced = false;
    return LLMC_OK;
}

int llmc_dist_sync_grads(llmc_model* model) {
    clear_error();
    CHECK_MODEL(model, "llmc_dist_sync_grads");
    if (!model->dist)
        return set_error(LLMC_ERR_STATE, "llmc_dist_sync_grads: the model has not joined (llmc_dist_join)");
    TRY(sync_grads(model));
    CUDA_TRY(cudaDeviceSynchronize());
    return LLMC_OK;
}

int llmc_dist_shard(const llmc_model* model, size_t* offset, size_t* count) {
    clear_error();
    CHECK_MODEL(model, "llmc_dist_shard");
    CHECK_PTR(offset, "llmc_dist_shard");
    CHECK_PTR(count, "llmc_dist_shard");
    bool sharded = model->dist && model->zero_stage == 1;
    *offset = sharded ? model->shard_offset : 0;
    *count = sharded ? model->shard_count : model->num_parameters;
    return LLMC_OK;
}

int llmc_dist_mean(llmc_model* model, float* values, int n) {
    clear_error();
    CHECK_MODEL(model, "llmc_dist_mean");
    CHECK_PTR(values, "llmc_dist_mean");
    if (n < 1) return set_error(LLMC_ERR_ARGUMENT, "llmc_dist_mean: n = %d: at least 1", n);
    if (!model->dist) return LLMC_OK; // one rank: its own mean
    return dist_mean_floats(model->dist, values, n);
}

} // extern "C"
