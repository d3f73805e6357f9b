/* GPT-2 model API of the CPU library: the 16 parameter tensors in one flat array (llm.c's order) with
 * its gradients and AdamW state beside it, activations sized once for max_B x max_T, and a forward,
 * backward and update that never end the process: every call returns LLMC_OK or an error code with
 * llmc_last_error() saying what was wrong.
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

#define STR_(x) #x
#define STR(x) STR_(x)
#ifndef LLMC_BLAS_INFO /* cpu.mk passes both: the BLAS it linked and the code-generation flags */
#define LLMC_BLAS_INFO "unknown BLAS"
#endif
#ifndef LLMC_ARCH_INFO
#define LLMC_ARCH_INFO "unknown arch flags"
#endif

const char* llmc_backend_name(void) { return "cpu"; }

const char* llmc_build_info(void) {
    return "libllmc cpu; gcc " __VERSION__ "; BLAS: " LLMC_BLAS_INFO "; OpenMP " STR(_OPENMP) "; " LLMC_ARCH_INFO;
}

int llmc_init(void) { return llmc_ok(); }

int llmc_set_precision(int mode) {
    if (mode == 0) return llmc_ok();
    if (mode == 1 || mode == 2)
        return llmc_fail(LLMC_ERR_UNSUPPORTED,
                         "llmc_set_precision: %s (mode %d) needs the CUDA library; the CPU "
                         "library is strict fp32 only",
                         mode == 1 ? "TF32" : "bf16", mode);
    return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_set_precision: mode = %d, must be 0 (fp32), 1 (TF32) or 2 (bf16)", mode);
}

/* ----------------------------------------------------------------------------- parameters */
/* the sizes, names and count of the 16 tensors are the core's (core/checks.c) */
enum { WTE, WPE, LN1W, LN1B, QKVW, QKVB, ATTPROJW, ATTPROJB, LN2W, LN2B, FCW, FCB, FCPROJW, FCPROJB, LNFW, LNFB };

/* The 16 tensors as pointers into one flat array (params or grads), llm.c's ParameterTensors. */
typedef struct {
    float *wte, *wpe, *ln1w, *ln1b, *qkvw, *qkvb, *attprojw, *attprojb;
    float *ln2w, *ln2b, *fcw, *fcb, *fcprojw, *fcprojb, *lnfw, *lnfb;
} param_tensors;

static param_tensors point_params(const llmc_config* c, float* base) {
    size_t sizes[LLMC_NUM_PARAM_TENSORS];
    llmc_param_sizes(c, sizes);
    param_tensors t;
    float** fields[LLMC_NUM_PARAM_TENSORS] = {&t.wte,      &t.wpe,      &t.ln1w, &t.ln1b, &t.qkvw, &t.qkvb,
                                              &t.attprojw, &t.attprojb, &t.ln2w, &t.ln2b, &t.fcw,  &t.fcb,
                                              &t.fcprojw,  &t.fcprojb,  &t.lnfw, &t.lnfb};
    for (int i = 0; i < LLMC_NUM_PARAM_TENSORS; i++) {
        *fields[i] = base;
        base += sizes[i];
    }
    return t;
}

/* ----------------------------------------------------------------------------- the model */
typedef struct {
    float* encoded;   // (B,T,C) wte + wpe
    float* ln1;       // (L,B,T,C)
    float* ln1_mean;  // (L,B,T)
    float* ln1_rstd;  // (L,B,T)
    float* qkv;       // (L,B,T,3C)
    float* atty;      // (L,B,T,C)
    float* att;       // (L,B,NH,T,T) softmax probabilities, read by the backward
    float* residual2; // (L,B,T,C)
    float* ln2;       // (L,B,T,C)
    float* ln2_mean;  // (L,B,T)
    float* ln2_rstd;  // (L,B,T)
    float* fch;       // (L,B,T,4C)
    float* fch_gelu;  // (B,T,4C) one layer's: the backward recomputes it from fch (saves 33 MB at d12 B4 T64)
    float* residual3; // (L,B,T,C)
    float* lnf;       // (B,T,C)
    float* lnf_mean;  // (B,T)
    float* lnf_rstd;  // (B,T)
    float* proj;      // (B,T,C) attproj or fcproj before its residual add, never needed again
    float* logits;    // (B,T,Vp)
    float* probs;     // (B,T,Vp) softmax after a forward with targets, turned into dlogits by the backward
    float* losses;    // (B,T)
    // backward scratch, one copy for all layers
    float* dresidual; // (B,T,C) the gradient running down the residual stream
    float* dln;       // (B,T,C) gradient of a layernorm's output
    float* datty;     // (B,T,C)
    float* dqkv;      // (B,T,3C)
    float* dfch;      // (B,T,4C)
    float* dfch_gelu; // (B,T,4C)
} activations;

struct llmc_model {
    llmc_config config;
    size_t param_sizes[LLMC_NUM_PARAM_TENSORS];
    size_t num_parameters;
    float* params; // each holds num_parameters floats in llm.c's order
    float* grads;
    float* m; // AdamW first moment; calloc'd, so untouched pages cost no memory before the first update
    float* v; // AdamW second moment
    int max_B, max_T;
    activations acts;
    float* acts_memory;
    int* inputs;  // (B,T) of the last forward
    int* targets; // (B,T), valid when has_targets
    int B, T;     // of the last forward; 0 before the first
    int has_targets;
    int backward_ready;     // a forward with targets happened and its probs are not yet consumed
    int matmul_grads_stale; // zero_grad left the matmul weights' gradients for the next backward to overwrite
    float mean_loss;
};

/* Points the activation tensors into base (NULL: only counts); returns the number of floats. */
static size_t layout_activations(llmc_model* model, float* base) {
    size_t L = model->config.num_layers, NH = model->config.num_heads, C = model->config.channels;
    size_t Vp = model->config.padded_vocab_size, BT = (size_t)model->max_B * model->max_T;
    size_t BNHTT = (size_t)model->max_B * NH * model->max_T * model->max_T;
    activations* a = &model->acts;
    struct {
        float** ptr;
        size_t size;
    } tensors[] = {
        {&a->encoded, BT * C},      {&a->ln1, L * BT * C},       {&a->ln1_mean, L * BT},
        {&a->ln1_rstd, L * BT},     {&a->qkv, L * BT * 3 * C},   {&a->atty, L * BT * C},
        {&a->att, L * BNHTT},       {&a->residual2, L * BT * C}, {&a->ln2, L * BT * C},
        {&a->ln2_mean, L * BT},     {&a->ln2_rstd, L * BT},      {&a->fch, L * BT * 4 * C},
        {&a->fch_gelu, BT * 4 * C}, {&a->residual3, L * BT * C}, {&a->lnf, BT * C},
        {&a->lnf_mean, BT},         {&a->lnf_rstd, BT},          {&a->proj, BT * C},
        {&a->logits, BT * Vp},      {&a->probs, BT * Vp},        {&a->losses, BT},
        {&a->dresidual, BT * C},    {&a->dln, BT * C},           {&a->datty, BT * C},
        {&a->dqkv, BT * 3 * C},     {&a->dfch, BT * 4 * C},      {&a->dfch_gelu, BT * 4 * C},
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof tensors / sizeof tensors[0]; i++) {
        *tensors[i].ptr = base ? base + total : NULL;
        total += tensors[i].size;
    }
    return total;
}

void llmc_model_free(llmc_model* model) {
    if (model == NULL) return;
    free(model->params);
    free(model->grads);
    free(model->m);
    free(model->v);
    free(model->acts_memory);
    free(model->inputs);
    free(model->targets);
    free(model);
}

/* Allocates everything for config; params are left for the caller to fill. */
static int model_alloc(const llmc_config* config, int max_B, int max_T, llmc_model** out) {
    int rc = llmc_check_model_size(config, max_B, max_T);
    if (rc != LLMC_OK) return rc;
    llmc_model* model = calloc(1, sizeof *model);
    if (model == NULL) return llmc_fail(LLMC_ERR_ALLOC, "out of memory allocating the model");
    model->config = *config;
    llmc_param_sizes(config, model->param_sizes);
    model->num_parameters = llmc_num_parameters(config);
    model->max_B = max_B;
    model->max_T = max_T;
    size_t n = model->num_parameters, num_acts = layout_activations(model, NULL);
    model->params = malloc(n * sizeof(float));
    model->grads = calloc(n, sizeof(float));
    model->m = calloc(n, sizeof(float));
    model->v = calloc(n, sizeof(float));
    model->acts_memory = calloc(num_acts, sizeof(float));
    model->inputs = calloc((size_t)max_B * max_T, sizeof(int));
    model->targets = calloc((size_t)max_B * max_T, sizeof(int));
    if (!model->params || !model->grads || !model->m || !model->v || !model->acts_memory || !model->inputs ||
        !model->targets) {
        llmc_model_free(model);
        return llmc_fail(LLMC_ERR_ALLOC,
                         "out of memory: %zu parameters (x4 for params, grads, m, v) and %zu "
                         "activation floats for max_B = %d, max_T = %d",
                         n, num_acts, max_B, max_T);
    }
    layout_activations(model, model->acts_memory);
    *out = model;
    return LLMC_OK;
}

int llmc_model_from_params(const llmc_config* config, const float* params, int max_B, int max_T, llmc_model** out) {
    if (config == NULL || params == NULL || out == NULL)
        return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_model_from_params: config, params and out must not be NULL");
    *out = NULL;
    int rc = llmc_check_config(config, NULL);
    if (rc != LLMC_OK) return rc;
    llmc_model* model;
    if ((rc = model_alloc(config, max_B, max_T, &model)) != LLMC_OK) return rc;
    memcpy(model->params, params, model->num_parameters * sizeof(float));
    *out = model;
    return llmc_ok();
}

int llmc_model_from_checkpoint(const char* path, int max_B, int max_T, llmc_model** out) {
    if (path == NULL || out == NULL)
        return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_model_from_checkpoint: path and out must not be NULL");
    *out = NULL;
    llmc_checkpoint ck;
    int rc = llmc_checkpoint_open(path, &ck);
    if (rc != LLMC_OK) return rc;
    llmc_model* model;
    if ((rc = model_alloc(&ck.config, max_B, max_T, &model)) != LLMC_OK) {
        llmc_checkpoint_close(&ck);
        return rc;
    }
    if ((rc = llmc_checkpoint_read(&ck, model->params)) != LLMC_OK) {
        llmc_model_free(model);
        return rc;
    }
    *out = model;
    return llmc_ok();
}

int llmc_model_config(const llmc_model* model, llmc_config* out) {
    if (model == NULL || out == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_model_config: NULL argument");
    *out = model->config;
    return llmc_ok();
}

size_t llmc_model_num_parameters(const llmc_model* model) { return model ? model->num_parameters : 0; }

/* ----------------------------------------------------------------------------- forward */
int llmc_forward(llmc_model* model, const int* inputs, const int* targets, int B, int T, float* mean_loss) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_forward: model must not be NULL");
    const llmc_config* c = &model->config;
    int rc = llmc_check_forward(inputs, targets, B, T, model->max_B, model->max_T, c->vocab_size);
    if (rc != LLMC_OK) return rc;

    int L = c->num_layers, NH = c->num_heads, C = c->channels, V = c->vocab_size, Vp = c->padded_vocab_size;
    size_t BTC = (size_t)B * T * C, lBT = (size_t)model->max_B * model->max_T; // layer stride in tokens
    size_t lBNHTT = (size_t)model->max_B * NH * model->max_T * model->max_T;
    memcpy(model->inputs, inputs, (size_t)B * T * sizeof(int));
    if (targets) memcpy(model->targets, targets, (size_t)B * T * sizeof(int));
    model->B = B;
    model->T = T;
    model->has_targets = targets != NULL;
    model->backward_ready = 0;

    param_tensors P = point_params(c, model->params);
    activations* a = &model->acts;

    encoder_forward(a->encoded, model->inputs, P.wte, P.wpe, B, T, C);
    for (int l = 0; l < L; l++) {
        float* residual = l == 0 ? a->encoded : a->residual3 + (l - 1) * lBT * C;
        float* ln1w = P.ln1w + l * C;
        float* ln1b = P.ln1b + l * C;
        float* qkvw = P.qkvw + (size_t)l * 3 * C * C;
        float* qkvb = P.qkvb + l * 3 * C;
        float* attprojw = P.attprojw + (size_t)l * C * C;
        float* attprojb = P.attprojb + l * C;
        float* ln2w = P.ln2w + l * C;
        float* ln2b = P.ln2b + l * C;
        float* fcw = P.fcw + (size_t)l * 4 * C * C;
        float* fcb = P.fcb + l * 4 * C;
        float* fcprojw = P.fcprojw + (size_t)l * C * 4 * C;
        float* fcprojb = P.fcprojb + l * C;
        float* ln1 = a->ln1 + l * lBT * C;
        float* ln1_mean = a->ln1_mean + l * lBT;
        float* ln1_rstd = a->ln1_rstd + l * lBT;
        float* qkv = a->qkv + l * lBT * 3 * C;
        float* atty = a->atty + l * lBT * C;
        float* att = a->att + l * lBNHTT;
        float* residual2 = a->residual2 + l * lBT * C;
        float* ln2 = a->ln2 + l * lBT * C;
        float* ln2_mean = a->ln2_mean + l * lBT;
        float* ln2_rstd = a->ln2_rstd + l * lBT;
        float* fch = a->fch + l * lBT * 4 * C;
        float* residual3 = a->residual3 + l * lBT * C;

        layernorm_forward(ln1, ln1_mean, ln1_rstd, residual, ln1w, ln1b, B, T, C);
        matmul_forward(qkv, ln1, qkvw, qkvb, B, T, C, 3 * C);
        attention_forward(atty, NULL, att, qkv, B, T, C, NH);
        matmul_forward(a->proj, atty, attprojw, attprojb, B, T, C, C);
        residual_forward(residual2, residual, a->proj, (int)BTC);
        layernorm_forward(ln2, ln2_mean, ln2_rstd, residual2, ln2w, ln2b, B, T, C);
        matmul_forward(fch, ln2, fcw, fcb, B, T, C, 4 * C);
        gelu_forward(a->fch_gelu, fch, (int)(4 * BTC));
        matmul_forward(a->proj, a->fch_gelu, fcprojw, fcprojb, B, T, 4 * C, C);
        residual_forward(residual3, residual2, a->proj, (int)BTC);
    }
    float* residual = a->residual3 + (L - 1) * lBT * C;
    layernorm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, residual, P.lnfw, P.lnfb, B, T, C);
    matmul_forward(a->logits, a->lnf, P.wte, NULL, B, T, C, Vp); // lm head tied to wte, over all Vp rows

    model->mean_loss = -1.0f;
    if (targets != NULL) {
        softmax_crossentropy_forward(a->probs, a->losses, a->logits, model->targets, B, T, V, Vp);
        double sum = 0.0;
        for (int i = 0; i < B * T; i++) sum += a->losses[i];
        model->mean_loss = (float)(sum / (B * T));
        model->backward_ready = 1;
    }
    if (mean_loss) *mean_loss = model->mean_loss;
    return llmc_ok();
}

/* ----------------------------------------------------------------------------- backward */
/* Sets n floats to zero with all threads: the gradient buffer is 0.5 GB at GPT-2 124M. */
static void parallel_zero(float* x, size_t n) {
#pragma omp parallel
    {
        size_t nt = omp_get_num_threads(), k = omp_get_thread_num();
        size_t lo = n * k / nt, hi = n * (k + 1) / nt;
        memset(x + lo, 0, (hi - lo) * sizeof(float));
    }
}

/* The weights whose gradient a matmul backward produces (wte through the tied lm head). */
static int is_matmul_weight(int tensor) {
    return tensor == WTE || tensor == QKVW || tensor == ATTPROJW || tensor == FCW || tensor == FCPROJW;
}

/* Zeroes the gradients of the matmul weights (matmul_weights = 1) or of every other tensor (0). */
static void zero_grads(llmc_model* model, int matmul_weights) {
    size_t o = 0;
    for (int i = 0; i < LLMC_NUM_PARAM_TENSORS; i++) {
        if (is_matmul_weight(i) == matmul_weights) parallel_zero(model->grads + o, model->param_sizes[i]);
        o += model->param_sizes[i];
    }
}

/* The matmul weights' gradients (99% of them) are not zeroed here: the next backward writes them with
 * BLAS beta = 0, one pass through the cache instead of a 0.5 GB memset plus a read-modify-write.
 * Whatever reads the gradients before that backward zeroes them first (settle_grads). */
int llmc_zero_grad(llmc_model* model) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_zero_grad: model must not be NULL");
    zero_grads(model, 0);
    model->matmul_grads_stale = 1;
    return llmc_ok();
}

static void settle_grads(llmc_model* model) {
    if (model->matmul_grads_stale) zero_grads(model, 1);
    model->matmul_grads_stale = 0;
}

int llmc_backward(llmc_model* model) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_backward: model must not be NULL");
    if (!model->backward_ready)
        return llmc_fail(LLMC_ERR_STATE,
                         "llmc_backward needs a forward with targets first (each forward "
                         "with targets allows one backward)");
    model->backward_ready = 0; // the backward turns the probabilities into dlogits in place

    const llmc_config* c = &model->config;
    int B = model->B, T = model->T;
    int L = c->num_layers, NH = c->num_heads, C = c->channels, Vp = c->padded_vocab_size;
    size_t BTC = (size_t)B * T * C, lBT = (size_t)model->max_B * model->max_T;
    size_t lBNHTT = (size_t)model->max_B * NH * model->max_T * model->max_T;
    param_tensors P = point_params(c, model->params), G = point_params(c, model->grads);
    activations* a = &model->acts;

    // the loss is the mean over B*T positions
    crossentropy_softmax_backward_inplace(a->probs, 1.0f / (B * T), model->targets, B, T, Vp);
    float* dlogits = a->probs;
    float dw_beta = model->matmul_grads_stale ? 0.0f : 1.0f; // 0: overwrite what zero_grad left
    model->matmul_grads_stale = 0;
    matmul_backward_beta(a->dln, G.wte, NULL, dlogits, a->lnf, P.wte, B, T, C, Vp, 0.0f, dw_beta);
    memset(a->dresidual, 0, BTC * sizeof(float));
    layernorm_backward(a->dresidual, G.lnfw, G.lnfb, a->dln, a->residual3 + (L - 1) * lBT * C, P.lnfw, a->lnf_mean,
                       a->lnf_rstd, B, T, C);

    for (int l = L - 1; l >= 0; l--) {
        float* residual = l == 0 ? a->encoded : a->residual3 + (l - 1) * lBT * C;
        float* ln1 = a->ln1 + l * lBT * C;
        float* qkv = a->qkv + l * lBT * 3 * C;
        float* atty = a->atty + l * lBT * C;
        float* att = a->att + l * lBNHTT;
        float* residual2 = a->residual2 + l * lBT * C;
        float* ln2 = a->ln2 + l * lBT * C;
        float* fch = a->fch + l * lBT * 4 * C;

        // residual3 = residual2 + fcproj: dresidual reaches both unchanged
        gelu_forward(a->fch_gelu, fch, (int)(4 * BTC));
        matmul_backward_beta(a->dfch_gelu, G.fcprojw + (size_t)l * C * 4 * C, G.fcprojb + l * C, a->dresidual,
                             a->fch_gelu, P.fcprojw + (size_t)l * C * 4 * C, B, T, 4 * C, C, 0.0f, dw_beta);
        memset(a->dfch, 0, 4 * BTC * sizeof(float));
        gelu_backward(a->dfch, fch, a->dfch_gelu, (int)(4 * BTC));
        matmul_backward_beta(a->dln, G.fcw + (size_t)l * 4 * C * C, G.fcb + l * 4 * C, a->dfch, ln2,
                             P.fcw + (size_t)l * 4 * C * C, B, T, C, 4 * C, 0.0f, dw_beta);
        // += into dresidual: it becomes d residual2
        layernorm_backward(a->dresidual, G.ln2w + l * C, G.ln2b + l * C, a->dln, residual2, P.ln2w + l * C,
                           a->ln2_mean + l * lBT, a->ln2_rstd + l * lBT, B, T, C);
        // residual2 = residual + attproj
        matmul_backward_beta(a->datty, G.attprojw + (size_t)l * C * C, G.attprojb + l * C, a->dresidual, atty,
                             P.attprojw + (size_t)l * C * C, B, T, C, C, 0.0f, dw_beta);
        memset(a->dqkv, 0, 3 * BTC * sizeof(float));
        attention_backward(a->dqkv, NULL, NULL, a->datty, qkv, att, B, T, C, NH);
        matmul_backward_beta(a->dln, G.qkvw + (size_t)l * 3 * C * C, G.qkvb + l * 3 * C, a->dqkv, ln1,
                             P.qkvw + (size_t)l * 3 * C * C, B, T, C, 3 * C, 0.0f, dw_beta);
        // += into dresidual: it becomes d residual, this layer's input
        layernorm_backward(a->dresidual, G.ln1w + l * C, G.ln1b + l * C, a->dln, residual, P.ln1w + l * C,
                           a->ln1_mean + l * lBT, a->ln1_rstd + l * lBT, B, T, C);
    }
    encoder_backward(G.wte, G.wpe, a->dresidual, model->inputs, B, T, C);
    return llmc_ok();
}

/* ----------------------------------------------------------------------------- AdamW */
/* sum g^2 over [lo, hi) in double, in a fixed order */
static double sum_squares(const float* g, size_t lo, size_t hi) {
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (size_t i = lo; i < hi; i++) acc += (double)g[i] * g[i];
    return acc;
}

typedef struct {
    float lr, beta1, beta2, eps;
    float inv_bias1, inv_sqrt_bias2; // 1 / (1 - beta1^t), 1 / sqrt(1 - beta2^t)
    float grad_scale;                // clipping factor, 1 without
} adamw_step;

/* AdamW over elements [lo, hi) of one tensor; returns their sum of g^2 (before clipping). One pass
 * over p, g, m, v: at GPT-2 124M the step is bound by memory traffic. */
LLMC_HOT static double adamw_range(float* params, const float* grads, float* m, float* v, size_t lo, size_t hi,
                                   const adamw_step* s, float weight_decay) {
    float beta1 = s->beta1, beta2 = s->beta2, lr = s->lr, eps = s->eps, scale = s->grad_scale;
    float inv_bias1 = s->inv_bias1, inv_sqrt_bias2 = s->inv_sqrt_bias2;
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (size_t j = lo; j < hi; j++) {
        float g = grads[j];
        acc += (double)g * g;
        g *= scale;
        float mj = beta1 * m[j] + (1.0f - beta1) * g;
        float vj = beta2 * v[j] + (1.0f - beta2) * (g * g);
        // m_hat / (sqrt(v_hat) + eps), with the bias corrections as precomputed reciprocals
        float update = (mj * inv_bias1) / (sqrtf(vj) * inv_sqrt_bias2 + eps);
        params[j] -= lr * (update + weight_decay * params[j]);
        m[j] = mj;
        v[j] = vj;
    }
    return acc;
}

int llmc_update(llmc_model* model, const llmc_adamw* opt, int t, float* grad_norm) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_update: model must not be NULL");
    int rc = llmc_check_update(opt, t);
    if (rc != LLMC_OK) return rc;
    settle_grads(model);
    size_t n = model->num_parameters;
    adamw_step step = {.lr = opt->learning_rate,
                       .beta1 = opt->beta1,
                       .beta2 = opt->beta2,
                       .eps = opt->eps,
                       .inv_bias1 = (float)(1.0 / (1.0 - pow(opt->beta1, t))),
                       .inv_sqrt_bias2 = (float)(1.0 / sqrt(1.0 - pow(opt->beta2, t))),
                       .grad_scale = 1.0f};
    int clip = opt->grad_clip > 0.0f;
    // tensor boundaries, and the weight decay of each
    size_t end[LLMC_NUM_PARAM_TENSORS], o = 0;
    float wd[LLMC_NUM_PARAM_TENSORS];
    for (int i = 0; i < LLMC_NUM_PARAM_TENSORS; i++) {
        end[i] = (o += model->param_sizes[i]);
        wd[i] = llmc_weight_decay(opt, i);
    }
    // per-thread sums of squares, added in thread order: deterministic. Sized at the most threads
    // llmc_set_num_threads ever sets; num_threads holds the regions to it whoever set OpenMP's count.
    double partial[LLMC_MAX_THREADS] = {0.0};
    int nt = omp_get_max_threads() < LLMC_MAX_THREADS ? omp_get_max_threads() : LLMC_MAX_THREADS;
    double norm = 0.0;
    if (clip) { // clipping needs the norm before the update: one extra read of the gradients
#pragma omp parallel num_threads(nt)
        {
            size_t k = omp_get_thread_num(), nth = omp_get_num_threads();
            partial[k] = sum_squares(model->grads, n * k / nth, n * (k + 1) / nth);
        }
        for (int k = 0; k < nt; k++) norm += partial[k];
        norm = sqrt(norm);
        if (norm > opt->grad_clip) step.grad_scale = (float)(opt->grad_clip / norm);
    }
// without clipping the norm is summed in the same pass
#pragma omp parallel num_threads(nt)
    {
        size_t k = omp_get_thread_num(), nth = omp_get_num_threads();
        size_t lo = n * k / nth, hi = n * (k + 1) / nth;
        double acc = 0.0;
        for (int i = 0; i < LLMC_NUM_PARAM_TENSORS; i++) {
            size_t a = i == 0 ? 0 : end[i - 1], b = end[i];
            if (a < lo) a = lo;
            if (b > hi) b = hi;
            if (a < b) acc += adamw_range(model->params, model->grads, model->m, model->v, a, b, &step, wd[i]);
        }
        if (!clip) partial[k] = acc;
    }
    if (!clip) {
        for (int k = 0; k < nt; k++) norm += partial[k];
        norm = sqrt(norm);
    }
    if (grad_norm) *grad_norm = (float)norm;
    return llmc_ok();
}

/* ----------------------------------------------------------------------------- copies in and out */
static int copy_out(const llmc_model* model, const float* src, float* dst, const char* what) {
    if (model == NULL || dst == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "%s: model and dst must not be NULL", what);
    memcpy(dst, src, model->num_parameters * sizeof(float));
    return llmc_ok();
}

int llmc_get_params(const llmc_model* model, float* dst) {
    return copy_out(model, model ? model->params : NULL, dst, "llmc_get_params");
}

int llmc_save_checkpoint(const llmc_model* model, const char* path, int version) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_save_checkpoint: model is NULL");
    if (path == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_save_checkpoint: path is NULL");
    int rc = llmc_checkpoint_write(path, &model->config, model->params, version);
    return rc == LLMC_OK ? llmc_ok() : rc;
}

int llmc_get_grads(const llmc_model* model, float* dst) {
    if (model != NULL && model->matmul_grads_stale) settle_grads((llmc_model*)model); // logically const
    return copy_out(model, model ? model->grads : NULL, dst, "llmc_get_grads");
}

int llmc_set_params(llmc_model* model, const float* src) {
    if (model == NULL || src == NULL)
        return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_set_params: model and src must not be NULL");
    memcpy(model->params, src, model->num_parameters * sizeof(float));
    return llmc_ok();
}

int llmc_get_logits(const llmc_model* model, float* dst) {
    if (model == NULL || dst == NULL)
        return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_get_logits: model and dst must not be NULL");
    if (model->B == 0) return llmc_fail(LLMC_ERR_STATE, "llmc_get_logits: no forward has run yet");
    memcpy(dst, model->acts.logits, (size_t)model->B * model->T * model->config.padded_vocab_size * sizeof(float));
    return llmc_ok();
}

int llmc_get_optimizer_state(const llmc_model* model, float* m, float* v) {
    if (model == NULL || m == NULL || v == NULL)
        return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_get_optimizer_state: model, m and v must not be NULL");
    memcpy(m, model->m, model->num_parameters * sizeof(float));
    memcpy(v, model->v, model->num_parameters * sizeof(float));
    return llmc_ok();
}

int llmc_set_optimizer_state(llmc_model* model, const float* m, const float* v) {
    if (model == NULL || m == NULL || v == NULL)
        return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_set_optimizer_state: model, m and v must not be NULL");
    memcpy(model->m, m, model->num_parameters * sizeof(float));
    memcpy(model->v, v, model->num_parameters * sizeof(float));
    return llmc_ok();
}
