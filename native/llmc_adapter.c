/* libllmc's model API (llmc.h) on top of llm.c's own train_gpt2.c, so the suite can judge llm.c itself.
 *
 * Built by tools/validate_llmc.py against an llm.c checkout (or the stand-in, tests/standin_llmc),
 * with the host C core (native/core: errors, checks, the checkpoint reader) beside it:
 *     cc -O2 -fPIC -shared -fopenmp -DOMP -I native -I LLMC_DIR native/llmc_adapter.c \
 *        native/core/{checkpoint,checks,errors}.c -o libllmc_llmc.so -lm -Wl,-z,nodelete
 * The library exports llm.c's layer kernels unchanged (train_gpt2.c has no static functions) and the
 * llmc_* model API below, and is driven as the backend "lib:PATH".
 *
 * llm.c ends the process (exit, assert) on bad input, so every argument is checked here first, by the
 * same core checks as libllmc's, and reported with an error code instead. What llm.c cannot do is
 * LLMC_ERR_UNSUPPORTED: bf16 (version 5) checkpoints, AdamW with weight decay on 2-D tensors only,
 * gradient clipping, TF32. Where the adapter can supply what llm.c lacks without touching its math, it does:
 *   - models built with llm.c's own allocators, the parameters filled from the caller's array or read
 *     by the core's checkpoint reader (llm.c's gpt2_build_from_checkpoint exits on a bad file, and
 *     checks neither the file size nor the values);
 *   - a new B or T after the first forward (llm.c exits): the activations are freed and llm.c
 *     allocates them again for the new shape;
 *   - backward twice without zero_grad: llm.c zeroes the activation gradients only in gpt2_zero_grad,
 *     so a second backward would add the first one's again; the adapter zeroes them before each backward,
 *     which leaves the parameter gradients accumulating as the ABI says;
 *   - the gradient's global norm, which gpt2_update does not compute: summed here in double.
 */
#include "llmc.h"
#ifndef TESTING
#define TESTING /* leaves out train_gpt2.c's main() */
#endif
#include "train_gpt2.c"

#include <limits.h>
#include <stdint.h>
#include "core/core.h"

struct llmc_model {
    GPT2 gpt;
    int max_B, max_T;
};

/* ----------------------------------------------------------------------------- library */
const char* llmc_backend_name(void) { return "llm.c"; }

const char* llmc_build_info(void) {
    return "llm.c train_gpt2.c (-DTESTING) through native/llmc_adapter.c, compiler " __VERSION__
#ifdef _OPENMP
           ", OpenMP"
#else
           ", no OpenMP"
#endif
        ;
}

int llmc_init(void) { return llmc_ok(); }

int llmc_set_precision(int mode) {
    if (mode == 0) return llmc_ok();
    if (mode == 1) return llmc_fail(LLMC_ERR_UNSUPPORTED, "set_precision: llm.c's CPU code has no TF32 mode");
    if (mode == 2) return llmc_fail(LLMC_ERR_UNSUPPORTED, "set_precision: llm.c's CPU code has no bf16 mode");
    return llmc_fail(LLMC_ERR_ARGUMENT, "set_precision: mode %d, expected 0 (fp32), 1 (tf32) or 2 (bf16)", mode);
}

/* ----------------------------------------------------------------------------- model */
/* The core's bounds, then llm.c's own: it indexes activations with int, so B*T*Vp (logits), B*NH*T*T
 * (attention) and B*T*4C must fit. What no check here can prevent: llm.c's mallocCheck ends the process
 * when memory runs out. */
static int check_sizes(const llmc_config* c, int max_B, int max_T) {
    int rc = llmc_check_model_size(c, max_B, max_T);
    if (rc != LLMC_OK) return rc;
    const double tokens = (double)max_B * max_T;
    if (tokens * c->padded_vocab_size > INT_MAX || tokens * max_T * c->num_heads > INT_MAX)
        return llmc_fail(LLMC_ERR_ARGUMENT,
                         "max_B = %d x max_T = %d is too large for llm.c's int offsets "
                         "(B*T*Vp, B*NH*T*T and B*T*4C must stay below 2^31)",
                         max_B, max_T);
    return LLMC_OK;
}

/* A model of config c as llm.c's loader leaves one (no activations, gradients or optimizer state yet,
 * no loss), its parameters allocated by llm.c for the caller to fill. */
static llmc_model* new_model(const llmc_config* c, int max_B, int max_T) {
    llmc_model* model = calloc(1, sizeof(llmc_model)); // every pointer NULL, B = T = 0
    if (model == NULL) return NULL;
    GPT2* gpt = &model->gpt;
    gpt->config.max_seq_len = c->max_seq_len;
    gpt->config.vocab_size = c->vocab_size;
    gpt->config.padded_vocab_size = c->padded_vocab_size;
    gpt->config.num_layers = c->num_layers;
    gpt->config.num_heads = c->num_heads;
    gpt->config.channels = c->channels;
    fill_in_parameter_sizes(gpt->param_sizes, gpt->config);
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) gpt->num_parameters += gpt->param_sizes[i];
    gpt->params_memory = malloc_and_point_parameters(&gpt->params, gpt->param_sizes);
    gpt->mean_loss = -1.0f;
    model->max_B = max_B;
    model->max_T = max_T;
    return model;
}

int llmc_model_from_checkpoint(const char* path, int max_B, int max_T, llmc_model** out) {
    if (path == NULL || out == NULL)
        return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_model_from_checkpoint: path and out must not be NULL");
    *out = NULL;
    llmc_checkpoint ck;
    int rc = llmc_checkpoint_open(path, &ck);
    if (rc != LLMC_OK) return rc;
    if (ck.version != 3)
        rc = llmc_fail(LLMC_ERR_UNSUPPORTED,
                       "checkpoint '%s': header[1] version = %d, llm.c's train_gpt2.c reads "
                       "only 3 (fp32)",
                       path, ck.version);
    if (rc == LLMC_OK) rc = check_sizes(&ck.config, max_B, max_T);
    llmc_model* model = NULL;
    if (rc == LLMC_OK && (model = new_model(&ck.config, max_B, max_T)) == NULL)
        rc = llmc_fail(LLMC_ERR_ALLOC, "llmc_model_from_checkpoint: out of memory");
    if (rc != LLMC_OK) {
        llmc_checkpoint_close(&ck);
        return rc;
    }
    if ((rc = llmc_checkpoint_read(&ck, model->gpt.params_memory)) != LLMC_OK) {
        llmc_model_free(model);
        return rc;
    }
    *out = model;
    return llmc_ok();
}

int llmc_model_from_params(const llmc_config* config, const float* params, int max_B, int max_T, llmc_model** out) {
    if (config == NULL || params == NULL || out == NULL)
        return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_model_from_params: config, params and out must not be NULL");
    *out = NULL;
    int rc = llmc_check_config(config, NULL);
    if (rc == LLMC_OK) rc = check_sizes(config, max_B, max_T);
    if (rc != LLMC_OK) return rc;
    llmc_model* model = new_model(config, max_B, max_T);
    if (model == NULL) return llmc_fail(LLMC_ERR_ALLOC, "llmc_model_from_params: out of memory");
    memcpy(model->gpt.params_memory, params, model->gpt.num_parameters * sizeof(float));
    *out = model;
    return llmc_ok();
}

void llmc_model_free(llmc_model* model) {
    if (model == NULL) return;
    gpt2_free(&model->gpt);
    free(model);
}

int llmc_model_config(const llmc_model* model, llmc_config* out) {
    if (model == NULL || out == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "model_config: NULL argument");
    const GPT2Config* c = &model->gpt.config;
    out->max_seq_len = c->max_seq_len;
    out->vocab_size = c->vocab_size;
    out->padded_vocab_size = c->padded_vocab_size;
    out->num_layers = c->num_layers;
    out->num_heads = c->num_heads;
    out->channels = c->channels;
    return llmc_ok();
}

size_t llmc_model_num_parameters(const llmc_model* model) { return model == NULL ? 0 : model->gpt.num_parameters; }

int llmc_forward(llmc_model* model, const int* inputs, const int* targets, int B, int T, float* mean_loss) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_forward: model must not be NULL");
    GPT2* gpt = &model->gpt;
    int rc = llmc_check_forward(inputs, targets, B, T, model->max_B, model->max_T, gpt->config.vocab_size);
    if (rc != LLMC_OK) return rc;
    int reshaped = gpt->acts_memory != NULL && (B != gpt->batch_size || T != gpt->seq_len);
    if (reshaped) { // llm.c would exit: let it allocate the activations again for the new shape
        free(gpt->acts_memory);
        free(gpt->grads_acts_memory);
        free(gpt->inputs);
        free(gpt->targets);
        gpt->acts_memory = gpt->grads_acts_memory = NULL;
        gpt->inputs = gpt->targets = NULL;
    }
    gpt2_forward(gpt, (int*)inputs, (int*)targets, B, T);
    if (reshaped && gpt->grads_memory != NULL) { // gpt2_backward allocates these only with grads_memory
        gpt->grads_acts_memory = malloc_and_point_activations(&gpt->grads_acts, gpt->act_sizes);
        memset(gpt->grads_acts_memory, 0, gpt->num_activations * sizeof(float));
    }
    if (mean_loss != NULL) *mean_loss = targets != NULL ? gpt->mean_loss : -1.0f;
    return llmc_ok();
}

int llmc_zero_grad(llmc_model* model) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "zero_grad: NULL model");
    gpt2_zero_grad(&model->gpt);
    return llmc_ok();
}

int llmc_backward(llmc_model* model) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "backward: NULL model");
    GPT2* gpt = &model->gpt;
    if (gpt->acts_memory == NULL || gpt->mean_loss == -1.0f)
        return llmc_fail(LLMC_ERR_STATE, "backward: needs a forward with targets first");
    if (gpt->grads_acts_memory != NULL) memset(gpt->grads_acts_memory, 0, gpt->num_activations * sizeof(float));
    gpt2_backward(gpt);
    return llmc_ok();
}

int llmc_update(llmc_model* model, const llmc_adamw* opt, int t, float* grad_norm) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_update: model must not be NULL");
    int rc = llmc_check_update(opt, t);
    if (rc != LLMC_OK) return rc;
    if (!opt->decay_all)
        return llmc_fail(LLMC_ERR_UNSUPPORTED, "update: llm.c's gpt2_update decays every parameter (decay_all = 1)");
    if (opt->grad_clip > 0.0f)
        return llmc_fail(LLMC_ERR_UNSUPPORTED, "update: llm.c's gpt2_update does not clip gradients");
    GPT2* gpt = &model->gpt;
    if (gpt->grads_memory == NULL) return llmc_fail(LLMC_ERR_STATE, "update: needs a backward first");
    double sum = 0.0;
    for (size_t i = 0; i < gpt->num_parameters; i++) sum += (double)gpt->grads_memory[i] * gpt->grads_memory[i];
    gpt2_update(gpt, opt->learning_rate, opt->beta1, opt->beta2, opt->eps, opt->weight_decay, t);
    if (grad_norm != NULL) *grad_norm = (float)sqrt(sum);
    return llmc_ok();
}

/* ----------------------------------------------------------------------------- copies */
static int copy_out(const float* src, float* dst, size_t n, const char* what) {
    if (dst == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "%s: NULL destination", what);
    if (src == NULL)
        memset(dst, 0, n * sizeof(float)); // not allocated yet by llm.c: still all zero
    else
        memcpy(dst, src, n * sizeof(float));
    return llmc_ok();
}

int llmc_get_params(const llmc_model* model, float* dst) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "get_params: NULL model");
    return copy_out(model->gpt.params_memory, dst, model->gpt.num_parameters, "get_params");
}

int llmc_set_params(llmc_model* model, const float* src) {
    if (model == NULL || src == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "set_params: NULL argument");
    memcpy(model->gpt.params_memory, src, model->gpt.num_parameters * sizeof(float));
    return llmc_ok();
}

int llmc_get_grads(const llmc_model* model, float* dst) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "get_grads: NULL model");
    return copy_out(model->gpt.grads_memory, dst, model->gpt.num_parameters, "get_grads");
}

int llmc_get_logits(const llmc_model* model, float* dst) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "get_logits: NULL model");
    const GPT2* gpt = &model->gpt;
    if (gpt->acts_memory == NULL) return llmc_fail(LLMC_ERR_STATE, "get_logits: no forward yet");
    size_t n = (size_t)gpt->batch_size * gpt->seq_len * gpt->config.padded_vocab_size;
    return copy_out(gpt->acts.logits, dst, n, "get_logits");
}

int llmc_get_optimizer_state(const llmc_model* model, float* m, float* v) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "get_optimizer_state: NULL model");
    int rc = copy_out(model->gpt.m_memory, m, model->gpt.num_parameters, "get_optimizer_state");
    if (rc) return rc;
    return copy_out(model->gpt.v_memory, v, model->gpt.num_parameters, "get_optimizer_state");
}

int llmc_set_optimizer_state(llmc_model* model, const float* m, const float* v) {
    if (model == NULL || m == NULL || v == NULL)
        return llmc_fail(LLMC_ERR_ARGUMENT, "set_optimizer_state: NULL argument");
    GPT2* gpt = &model->gpt;
    if (gpt->m_memory == NULL) { // gpt2_update allocates them lazily, and keeps them once there
        gpt->m_memory = calloc(gpt->num_parameters, sizeof(float));
        gpt->v_memory = calloc(gpt->num_parameters, sizeof(float));
        if (gpt->m_memory == NULL || gpt->v_memory == NULL)
            return llmc_fail(LLMC_ERR_ALLOC, "set_optimizer_state: out of memory");
    }
    memcpy(gpt->m_memory, m, gpt->num_parameters * sizeof(float));
    memcpy(gpt->v_memory, v, gpt->num_parameters * sizeof(float));
    return llmc_ok();
}
