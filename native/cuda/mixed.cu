// bf16 mixed precision, the way llm.c's train_gpt2.cu trains GPT-2 (llmc_set_precision(2) when the model
// is made): the matmuls and attention read bf16 weights and activations on the tensor cores (fp32
// accumulation); the master weights, their gradients and AdamW's m and v stay fp32 (model.cu owns them),
// and the bf16 copy of the weights is rewritten by every update, stochastically rounded.
// What else stays fp32, and why: the residual stream and its gradient (the projections add into it in
// their GEMM epilogue; bf16 there would round every layer's contribution), layernorm's parameters and
// statistics, the embeddings, the softmax statistics, the losses, and every reduction (bias and layernorm
// gradients, the gradient norm). The logits are bf16, as in llm.c and PyTorch autocast, and the loss is
// computed from them in fp32.
//
// Memory: GELU's output is either kept per layer or recomputed from the pre-activation in the backward
// (llm.c's -r 1): LLMC_RECOMPUTE_GELU=1 asks for it, and a model that does not fit otherwise gets it.
// LLMC_GELU_FUSION=0 turns off cuBLASLt's GELU epilogues (separate GELU kernels instead), to compare.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>
#include <vector>

#include "common.cuh"

namespace {

constexpr int NUM_PARAM_TENSORS = 16;
// llm.c's order: wte wpe ln1w ln1b qkvw qkvb attprojw attprojb ln2w ln2b fcw fcb fcprojw fcprojb lnfw lnfb
enum { WTE, WPE, LN1W, LN1B, QKVW, QKVB, ATTPROJW, ATTPROJB, LN2W, LN2B, FCW, FCB, FCPROJW, FCPROJB, LNFW, LNFB };
constexpr size_t DLOGITS_ROWS = 8192; // positions per chunk of the lm head's backward (0.8 GB at Vp = 50304)

// Activations kept from forward to backward; per-layer tensors stack all L layers.
struct Activations {
    float* encoded;   // (B,T,C) the residual stream (fp32 throughout)
    bf16* ln1;        // (L,B,T,C)
    float* ln1_mean;  // (L,B,T)
    float* ln1_rstd;  // (L,B,T)
    bf16* qkv;        // (L,B,T,3C)
    bf16* atty;       // (L,B,T,C)
    float* att_lse;   // (L,B,NH,T)
    float* residual2; // (L,B,T,C)
    bf16* ln2;        // (L,B,T,C)
    float* ln2_mean;  // (L,B,T)
    float* ln2_rstd;  // (L,B,T)
    bf16* fch;        // (L,B,T,4C) before GELU
    bf16* fch_gelu;   // (L,B,T,4C), or one layer's (B,T,4C) when recomputed in the backward
    float* residual3; // (L,B,T,C)
    bf16* lnf;        // (B,T,C)
    float* lnf_mean;  // (B,T)
    float* lnf_rstd;  // (B,T)
    bf16* logits;     // (B,T,Vp)
    float* losses;    // (B,T)
    float2* stats;    // (B,T) softmax max and sum of exp, read again by the backward
    // work buffers, reused by every layer
    bf16* dlogits;        // (DLOGITS_ROWS,Vp) one chunk of positions at a time
    float* att_delta;     // (B,NH,T)
    float* dresidual;     // (B,T,C) gradient flowing down the residual stream
    bf16* dresidual_bf16; // (B,T,C) the same, the projections' dout operand
    bf16* dbtc;           // (B,T,C) gradient of a layernorm output or of atty
    bf16* dfch;           // (B,T,4C)
    bf16* dqkv;           // (B,T,3C)
};

} // namespace

struct MixedModel {
    llmc_config config;
    int max_B, max_T;
    size_t offsets[NUM_PARAM_TENSORS]; // of each tensor in the flat parameter (and gradient) buffers
    size_t num_parameters;
    bf16* params_bf16;
    bool recompute_gelu, gelu_fusion;
    Activations acts;
    void* acts_memory;
};

namespace {

bool env_flag(const char* name, bool fallback) {
    const char* value = getenv(name);
    return value && *value ? value[0] != '0' : fallback;
}

// The activations for (max_B, max_T) in one allocation; LLMC_ERR_ALLOC (cleared from cudaGetLastError, the
// model untouched) when it does not fit.
int allocate_activations(MixedModel* m, bool recompute_gelu) {
    const llmc_config& cfg = m->config;
    size_t B = m->max_B, T = m->max_T, C = cfg.channels, L = cfg.num_layers, NH = cfg.num_heads;
    size_t Vp = cfg.padded_vocab_size, BT = B * T;
    Activations& a = m->acts;
    const size_t F = sizeof(float), H = sizeof(bf16);
    // (pointer, bytes); every tensor starts 256-byte aligned (16-byte vector accesses, cuBLASLt's preference)
    std::vector<std::pair<void**, size_t>> layout = {{(void**)&a.encoded, BT * C * F},
                                                     {(void**)&a.ln1, L * BT * C * H},
                                                     {(void**)&a.ln1_mean, L * BT * F},
                                                     {(void**)&a.ln1_rstd, L * BT * F},
                                                     {(void**)&a.qkv, L * BT * 3 * C * H},
                                                     {(void**)&a.atty, L * BT * C * H},
                                                     {(void**)&a.att_lse, L * B * NH * T * F},
                                                     {(void**)&a.residual2, L * BT * C * F},
                                                     {(void**)&a.ln2, L * BT * C * H},
                                                     {(void**)&a.ln2_mean, L * BT * F},
                                                     {(void**)&a.ln2_rstd, L * BT * F},
                                                     {(void**)&a.fch, L * BT * 4 * C * H},
                                                     {(void**)&a.fch_gelu, (recompute_gelu ? 1 : L) * BT * 4 * C * H},
                                                     {(void**)&a.residual3, L * BT * C * F},
                                                     {(void**)&a.lnf, BT * C * H},
                                                     {(void**)&a.lnf_mean, BT * F},
                                                     {(void**)&a.lnf_rstd, BT * F},
                                                     {(void**)&a.logits, BT * Vp * H},
                                                     {(void**)&a.losses, BT * F},
                                                     {(void**)&a.stats, BT * sizeof(float2)},
                                                     {(void**)&a.dlogits, std::min(BT, DLOGITS_ROWS) * Vp * H},
                                                     {(void**)&a.att_delta, B * NH * T * F},
                                                     {(void**)&a.dresidual, BT * C * F},
                                                     {(void**)&a.dresidual_bf16, BT * C * H},
                                                     {(void**)&a.dbtc, BT * C * H},
                                                     {(void**)&a.dfch, BT * 4 * C * H},
                                                     {(void**)&a.dqkv, BT * 3 * C * H}};
    auto padded = [](size_t bytes) { return ceil_div(bytes, (size_t)256) * 256; };
    size_t total = 0;
    for (auto& [ptr, bytes] : layout) total += padded(bytes);
    void* memory = nullptr;
    if (cudaMalloc(&memory, total) != cudaSuccess) {
        cudaGetLastError(); // a failed allocation is not sticky: clear it so later launch checks pass
        size_t free_bytes = 0, total_bytes = 0;
        cudaMemGetInfo(&free_bytes, &total_bytes);
        return set_error(LLMC_ERR_ALLOC,
                         "out of device memory: bf16 activations for B=%d, T=%d need %.2f GiB%s, "
                         "%.2f GiB free",
                         m->max_B, m->max_T, total / (double)(1 << 30), recompute_gelu ? " (GELU recomputed)" : "",
                         free_bytes / (double)(1 << 30));
    }
    char* p = (char*)memory;
    for (auto& [ptr, bytes] : layout) {
        *ptr = p;
        p += padded(bytes);
    }
    m->acts_memory = memory;
    m->recompute_gelu = recompute_gelu;
    return LLMC_OK;
}

// views of the flat buffers, tensor by tensor
template <typename E>
void views(E** t, E* memory, const size_t* offsets) {
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) t[i] = memory + offsets[i];
}

} // namespace

int mixed_create(const llmc_config& config, int max_B, int max_T, const size_t* param_sizes, MixedModel** out) {
    MixedModel* m = new (std::nothrow) MixedModel();
    if (!m) return set_error(LLMC_ERR_ALLOC, "cannot allocate the mixed-precision model struct");
    m->config = config;
    m->max_B = max_B;
    m->max_T = max_T;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        m->offsets[i] = m->num_parameters;
        m->num_parameters += param_sizes[i];
    }
    m->gelu_fusion = env_flag("LLMC_GELU_FUSION", true);
    if (cudaMalloc(&m->params_bf16, m->num_parameters * sizeof(bf16)) != cudaSuccess) {
        cudaGetLastError();
        size_t n = m->num_parameters;
        delete m;
        return set_error(LLMC_ERR_ALLOC, "out of device memory for the bf16 copy of %zu parameters", n);
    }
    bool recompute = env_flag("LLMC_RECOMPUTE_GELU", false);
    int rc = allocate_activations(m, recompute);
    if (rc == LLMC_ERR_ALLOC && !recompute) { // tight memory: one (B,T,4C) GELU buffer instead of L
        clear_error();
        rc = allocate_activations(m, true);
    }
    if (rc != LLMC_OK) {
        mixed_free(m);
        return rc;
    }
    *out = m;
    return LLMC_OK;
}

void mixed_free(MixedModel* m) {
    if (!m) return;
    cudaFree(m->params_bf16);
    cudaFree(m->acts_memory);
    delete m;
}

bf16* mixed_params_bf16(MixedModel* m) { return m->params_bf16; }

const float* mixed_losses(const MixedModel* m) { return m->acts.losses; }

// The forward over tokens already on the device (targets NULL: no loss). params: the fp32 master weights.
int mixed_forward(MixedModel* m, const float* params, const int* inputs, const int* targets, int B, int T) {
    const llmc_config& cfg = m->config;
    int C = cfg.channels, NH = cfg.num_heads, L = cfg.num_layers, V = cfg.vocab_size, Vp = cfg.padded_vocab_size;
    size_t BT = (size_t)B * T, btc = BT * C, lse_size = (size_t)B * NH * T; // strides packed for this B, T
    size_t CC = (size_t)C * C;
    const float* p[NUM_PARAM_TENSORS];
    const bf16* w[NUM_PARAM_TENSORS];
    views(p, params, m->offsets);
    views(w, (const bf16*)m->params_bf16, m->offsets);
    Activations& a = m->acts;

    TRY(encoder_forward_gpu(a.encoded, inputs, p[WTE], p[WPE], B, T, C));
    for (int l = 0; l < L; l++) {
        const float* residual = l == 0 ? a.encoded : a.residual3 + (l - 1) * btc;
        bf16* ln1 = a.ln1 + l * btc;
        bf16* qkv = a.qkv + l * 3 * btc;
        bf16* atty = a.atty + l * btc;
        float* residual2 = a.residual2 + l * btc;
        bf16* ln2 = a.ln2 + l * btc;
        bf16* fch = a.fch + l * 4 * btc;
        bf16* fch_gelu = a.fch_gelu + (m->recompute_gelu ? 0 : l * 4 * btc);
        TRY(layernorm_forward_gpu(ln1, a.ln1_mean + l * BT, a.ln1_rstd + l * BT, residual, p[LN1W] + l * C,
                                  p[LN1B] + l * C, BT, C));
        TRY(matmul_forward_bf16_gpu(qkv, nullptr, ln1, w[QKVW] + l * 3 * CC, w[QKVB] + l * 3 * C, BT, C, 3 * C));
        TRY(attention_forward_bf16_gpu(atty, a.att_lse + l * lse_size, qkv, B, T, C, NH));
        // residual2 = residual + attproj, added by the GEMM itself, in fp32
        TRY(matmul_forward_bf16_residual_gpu(residual2, atty, w[ATTPROJW] + l * CC, p[ATTPROJB] + l * C, residual, BT,
                                             C, C));
        TRY(layernorm_forward_gpu(ln2, a.ln2_mean + l * BT, a.ln2_rstd + l * BT, residual2, p[LN2W] + l * C,
                                  p[LN2B] + l * C, BT, C));
        if (m->gelu_fusion) { // fch_gelu = gelu(fch), fch kept for the backward: one GEMM
            TRY(matmul_forward_bf16_gpu(fch_gelu, fch, ln2, w[FCW] + l * 4 * CC, w[FCB] + l * 4 * C, BT, C, 4 * C));
        } else {
            TRY(matmul_forward_bf16_gpu(fch, nullptr, ln2, w[FCW] + l * 4 * CC, w[FCB] + l * 4 * C, BT, C, 4 * C));
            TRY(gelu_forward_gpu(fch_gelu, (const bf16*)fch, 4 * btc));
        }
        // residual3 = residual2 + fcproj
        TRY(matmul_forward_bf16_residual_gpu(a.residual3 + l * btc, fch_gelu, w[FCPROJW] + l * 4 * CC,
                                             p[FCPROJB] + l * C, residual2, BT, 4 * C, C));
    }
    TRY(layernorm_forward_gpu(a.lnf, a.lnf_mean, a.lnf_rstd, a.residual3 + (L - 1) * btc, p[LNFW], p[LNFB], BT, C));
    TRY(matmul_forward_bf16_gpu(a.logits, nullptr, a.lnf, w[WTE], nullptr, BT, C, Vp)); // lm head tied to wte
    if (targets) TRY(classifier_forward_gpu(a.losses, a.stats, (const bf16*)a.logits, targets, BT, V, Vp));
    return LLMC_OK;
}

// The backward of the last forward (with targets), accumulating into the fp32 gradients.
int mixed_backward(MixedModel* m, const float* params, float* grads, const int* targets, const TokenBuckets* buckets,
                   int B, int T) {
    const llmc_config& cfg = m->config;
    int C = cfg.channels, NH = cfg.num_heads, L = cfg.num_layers, V = cfg.vocab_size, Vp = cfg.padded_vocab_size;
    size_t BT = (size_t)B * T, btc = BT * C, lse_size = (size_t)B * NH * T, CC = (size_t)C * C;
    const float* p[NUM_PARAM_TENSORS];
    const bf16* w[NUM_PARAM_TENSORS];
    float* g[NUM_PARAM_TENSORS];
    views(p, params, m->offsets);
    views(w, (const bf16*)m->params_bf16, m->offsets);
    views(g, grads, m->offsets);
    Activations& a = m->acts;

    // The lm head, DLOGITS_ROWS positions at a time: dlogits = (softmax - onehot) / (B*T) for a chunk, then
    // its share of dlnf and dwte. The logits stay intact for llmc_get_logits.
    for (size_t r = 0; r < BT; r += DLOGITS_ROWS) {
        size_t rows = std::min(DLOGITS_ROWS, BT - r);
        TRY(classifier_backward_gpu(a.dlogits, (const bf16*)a.logits + r * Vp, a.stats + r, targets + r,
                                    1.0f / (float)BT, rows, V, Vp));
        TRY(matmul_backward_dinp_bf16_gpu(a.dbtc + r * C, a.dlogits, w[WTE], nullptr, rows, C, Vp));
        TRY(matmul_backward_dweight_bf16_gpu(g[WTE], a.dlogits, a.lnf + r * C, rows, C, Vp));
    }
    CUDA_TRY(cudaMemset(a.dresidual, 0, btc * sizeof(float)));
    TRY(layernorm_backward_bf16_gpu(a.dresidual, a.dresidual_bf16, g[LNFW], g[LNFB], a.dbtc,
                                    a.residual3 + (L - 1) * btc, p[LNFW], a.lnf_mean, a.lnf_rstd, BT, C));
    for (int l = L - 1; l >= 0; l--) {
        const float* residual = l == 0 ? a.encoded : a.residual3 + (l - 1) * btc;
        const bf16* fch = a.fch + l * 4 * btc;
        bf16* fch_gelu = a.fch_gelu + (m->recompute_gelu ? 0 : l * 4 * btc);
        if (m->recompute_gelu) TRY(gelu_forward_gpu(fch_gelu, fch, 4 * btc));
        // residual3 = residual2 + fcproj: dresidual reaches both unchanged
        TRY(matmul_backward_dweight_bf16_gpu(g[FCPROJW] + l * 4 * CC, a.dresidual_bf16, fch_gelu, BT, 4 * C, C));
        TRY(column_sum_gpu(g[FCPROJB] + l * C, (const float*)a.dresidual, BT, (size_t)C));
        TRY(matmul_backward_dinp_bf16_gpu(a.dfch, a.dresidual_bf16, w[FCPROJW] + l * 4 * CC,
                                          m->gelu_fusion ? fch : nullptr, BT, 4 * C, C));
        if (!m->gelu_fusion) TRY(gelu_backward_gpu(a.dfch, fch, (const bf16*)a.dfch, 4 * btc, false));
        TRY(matmul_backward_dweight_bf16_gpu(g[FCW] + l * 4 * CC, a.dfch, a.ln2 + l * btc, BT, C, 4 * C));
        TRY(column_sum_gpu(g[FCB] + l * 4 * C, (const bf16*)a.dfch, BT, (size_t)4 * C));
        TRY(matmul_backward_dinp_bf16_gpu(a.dbtc, a.dfch, w[FCW] + l * 4 * CC, nullptr, BT, C, 4 * C));
        TRY(layernorm_backward_bf16_gpu(a.dresidual, a.dresidual_bf16, g[LN2W] + l * C, g[LN2B] + l * C, a.dbtc,
                                        a.residual2 + l * btc, p[LN2W] + l * C, a.ln2_mean + l * BT,
                                        a.ln2_rstd + l * BT, BT, C));
        // dresidual is now d residual2 = residual + attproj
        TRY(matmul_backward_dweight_bf16_gpu(g[ATTPROJW] + l * CC, a.dresidual_bf16, a.atty + l * btc, BT, C, C));
        TRY(column_sum_gpu(g[ATTPROJB] + l * C, (const float*)a.dresidual, BT, (size_t)C));
        TRY(matmul_backward_dinp_bf16_gpu(a.dbtc, a.dresidual_bf16, w[ATTPROJW] + l * CC, nullptr, BT, C, C));
        TRY(attention_backward_bf16_gpu(a.dqkv, a.att_delta, a.dbtc, a.qkv + l * 3 * btc, a.atty + l * btc,
                                        a.att_lse + l * lse_size, B, T, C, NH));
        TRY(matmul_backward_dweight_bf16_gpu(g[QKVW] + l * 3 * CC, a.dqkv, a.ln1 + l * btc, BT, C, 3 * C));
        TRY(column_sum_gpu(g[QKVB] + l * 3 * C, (const bf16*)a.dqkv, BT, (size_t)3 * C));
        TRY(matmul_backward_dinp_bf16_gpu(a.dbtc, a.dqkv, w[QKVW] + l * 3 * CC, nullptr, BT, C, 3 * C));
        TRY(layernorm_backward_bf16_gpu(a.dresidual, a.dresidual_bf16, g[LN1W] + l * C, g[LN1B] + l * C, a.dbtc,
                                        residual, p[LN1W] + l * C, a.ln1_mean + l * BT, a.ln1_rstd + l * BT, BT, C));
    }
    return encoder_backward_gpu(g[WTE], g[WPE], a.dresidual, buckets, B, T, C);
}

// n logits of the last forward as float: the bf16 values land in the upper half of dst and are widened in
// place, front to back (writing element i only overwrites bf16 values at indices <= i, already read)
int mixed_get_logits(const MixedModel* m, float* dst, size_t n) {
    uint16_t* halves = (uint16_t*)dst + n;
    CUDA_TRY(cudaMemcpy(halves, m->acts.logits, n * sizeof(bf16), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) {
        uint32_t bits = (uint32_t)halves[i] << 16;
        memcpy(dst + i, &bits, sizeof(bits));
    }
    return LLMC_OK;
}
