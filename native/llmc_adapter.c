/* libllmc's model API (llmc.h) on top of llm.c's own train_gpt2.c, so the suite can judge llm.c itself.
 *
 * Built by tools/validate_llmc.py against an llm.c checkout (or the stand-in, conformance/standin_llmc):
 *     cc -O2 -fPIC -shared -fopenmp -DOMP -I native -I LLMC_DIR native/llmc_adapter.c -o libllmc_llmc.so \
 *        -lm -Wl,-z,nodelete
 * The library exports llm.c's layer kernels unchanged (train_gpt2.c has no static functions) and the
 * llmc_* model API below, and is driven as the backend "lib:PATH".
 *
 * llm.c ends the process (exit, assert) on bad input, so every argument is checked here first and
 * reported with an error code instead. What llm.c cannot do is LLMC_ERR_UNSUPPORTED: AdamW with weight
 * decay on 2-D tensors only, gradient clipping, TF32. Where the adapter can supply what llm.c lacks
 * without touching its math, it does:
 *   - a model from parameters (llm.c only reads checkpoints): built with llm.c's own allocators;
 *   - a new B or T after the first forward (llm.c exits): the activations are freed and llm.c
 *     allocates them again for the new shape;
 *   - backward twice without zero_grad: llm.c zeroes the activation gradients only in gpt2_zero_grad,
 *     so a second backward would add the first one's again; the adapter zeroes them before each backward,
 *     which leaves the parameter gradients accumulating as the ABI says;
 *   - the gradient's global norm, which gpt2_update does not compute: summed here in double.
 */
#include "llmc.h"
#ifndef TESTING
#define TESTING           /* leaves out train_gpt2.c's main() */
#endif
#include "train_gpt2.c"

#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/stat.h>

#define ADAPTER_MODEL_MAGIC 20240326
#define ADAPTER_MODEL_VERSION 3     /* train_gpt2.c reads fp32 checkpoints only */

struct llmc_model {
    GPT2 gpt;
    int max_B, max_T;
};

/* ----------------------------------------------------------------------------- errors */
static __thread char adapter_error[512] = "";
static __thread int adapter_error_code = LLMC_OK;

static int adapter_fail(int code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static int adapter_fail(int code, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(adapter_error, sizeof(adapter_error), fmt, ap);
    va_end(ap);
    adapter_error_code = code;
    return code;
}

static int adapter_ok(void) {
    adapter_error[0] = '\0';
    adapter_error_code = LLMC_OK;
    return LLMC_OK;
}

const char* llmc_last_error(void) { return adapter_error; }
int llmc_last_error_code(void) { return adapter_error_code; }

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

int llmc_init(void) { return adapter_ok(); }

int llmc_set_num_threads(int n) {
    if (n < 1) return adapter_fail(LLMC_ERR_ARGUMENT, "set_num_threads: n = %d, must be >= 1", n);
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    return adapter_ok();
}

int llmc_set_precision(int mode) {
    if (mode == 0) return adapter_ok();
    if (mode == 1) return adapter_fail(LLMC_ERR_UNSUPPORTED, "set_precision: llm.c's CPU code has no TF32 mode");
    if (mode == 2) return adapter_fail(LLMC_ERR_UNSUPPORTED, "set_precision: llm.c's CPU code has no bf16 mode");
    return adapter_fail(LLMC_ERR_ARGUMENT, "set_precision: mode %d, expected 0 (fp32), 1 (tf32) or 2 (bf16)", mode);
}

/* ----------------------------------------------------------------------------- model */
static int check_config(const llmc_config* c, const char* where) {
    const int fields[6] = {c->max_seq_len, c->vocab_size, c->padded_vocab_size, c->num_layers, c->num_heads,
                           c->channels};
    const char* names[6] = {"max_seq_len", "vocab_size", "padded_vocab_size", "num_layers", "num_heads", "channels"};
    /* libllmc's bounds (native/model.c llmc_check_config): every size product stays far from overflow */
    const int maxima[6] = {1 << 16, 1 << 24, 1 << 24, 1 << 12, 1 << 12, 1 << 16};
    for (int i = 0; i < 6; i++) {
        if (fields[i] <= 0 || fields[i] > maxima[i])
            return adapter_fail(LLMC_ERR_FORMAT, "%s: %s = %d, must lie in [1, %d]", where, names[i], fields[i],
                                maxima[i]);
    }
    if (c->channels % c->num_heads)
        return adapter_fail(LLMC_ERR_FORMAT, "%s: channels (%d) not divisible by num_heads (%d)", where, c->channels,
                            c->num_heads);
    if (c->padded_vocab_size < c->vocab_size)
        return adapter_fail(LLMC_ERR_FORMAT, "%s: padded_vocab_size (%d) < vocab_size (%d)", where,
                            c->padded_vocab_size, c->vocab_size);
    return LLMC_OK;
}

static size_t num_parameters_of(const llmc_config* c) {
    GPT2Config config = {0};
    config.max_seq_len = c->max_seq_len;
    config.vocab_size = c->vocab_size;
    config.padded_vocab_size = c->padded_vocab_size;
    config.num_layers = c->num_layers;
    config.num_heads = c->num_heads;
    config.channels = c->channels;
    size_t sizes[NUM_PARAMETER_TENSORS], n = 0;
    fill_in_parameter_sizes(sizes, config);
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) n += sizes[i];
    return n;
}

static int check_sizes(const llmc_config* c, int max_B, int max_T, const char* where) {
    if (max_B <= 0 || max_T <= 0)
        return adapter_fail(LLMC_ERR_ARGUMENT, "%s: max_B = %d, max_T = %d must be positive", where, max_B, max_T);
    if (max_T > c->max_seq_len)
        return adapter_fail(LLMC_ERR_ARGUMENT, "%s: max_T = %d exceeds the model's max_seq_len %d", where, max_T,
                            c->max_seq_len);
    /* llm.c indexes activations with int: B*T*Vp (logits), B*NH*T*T (attention), B*T*4C must fit.
       What no check here can prevent: llm.c's mallocCheck ends the process when memory runs out. */
    const double tokens = (double)max_B * max_T;
    if (tokens * c->padded_vocab_size > INT_MAX || tokens * max_T * c->num_heads > INT_MAX ||
        tokens * 4.0 * c->channels > INT_MAX)
        return adapter_fail(LLMC_ERR_ARGUMENT, "%s: max_B = %d x max_T = %d is too large for llm.c's int offsets "
                            "(B*T*Vp, B*NH*T*T and B*T*4C must stay below 2^31)", where, max_B, max_T);
    return LLMC_OK;
}

int llmc_model_from_checkpoint(const char* path, int max_B, int max_T, llmc_model** out) {
    if (path == NULL || out == NULL) return adapter_fail(LLMC_ERR_ARGUMENT, "model_from_checkpoint: NULL argument");
    *out = NULL;
    FILE* f = fopen(path, "rb");
    if (f == NULL) return adapter_fail(LLMC_ERR_FILE, "checkpoint '%s': cannot open", path);
    int32_t header[256];
    size_t got = fread(header, sizeof(int32_t), 256, f);
    fclose(f);
    if (got != 256) return adapter_fail(LLMC_ERR_FORMAT, "checkpoint '%s': shorter than its 1024-byte header", path);
    if (header[0] != ADAPTER_MODEL_MAGIC)
        return adapter_fail(LLMC_ERR_FORMAT, "checkpoint '%s': header[0] magic is %d, expected %d", path, header[0],
                            ADAPTER_MODEL_MAGIC);
    if (header[1] != ADAPTER_MODEL_VERSION)
        return adapter_fail(header[1] == 5 ? LLMC_ERR_UNSUPPORTED : LLMC_ERR_FORMAT,
                            "checkpoint '%s': header[1] version is %d, llm.c's train_gpt2.c reads only %d (fp32)",
                            path, header[1], ADAPTER_MODEL_VERSION);
    llmc_config c = {header[2], header[3], header[7], header[4], header[5], header[6]};
    char where[300];
    snprintf(where, sizeof(where), "checkpoint '%s': header", path);
    int rc = check_config(&c, where);
    if (rc) return rc;
    struct stat st;
    size_t expected = 1024 + num_parameters_of(&c) * sizeof(float);
    if (stat(path, &st) != 0 || (size_t)st.st_size != expected)
        return adapter_fail(LLMC_ERR_FORMAT, "checkpoint '%s': file size is %lld bytes, the header's model needs %zu",
                            path, (long long)st.st_size, expected);
    if ((rc = check_sizes(&c, max_B, max_T, "model_from_checkpoint"))) return rc;

    llmc_model* model = calloc(1, sizeof(llmc_model));
    if (model == NULL) return adapter_fail(LLMC_ERR_ALLOC, "model_from_checkpoint: out of memory");
    gpt2_build_from_checkpoint(&model->gpt, path);
    model->max_B = max_B;
    model->max_T = max_T;
    *out = model;
    return adapter_ok();
}

int llmc_model_from_params(const llmc_config* config, const float* params, int max_B, int max_T,
                           llmc_model** out) {
    if (config == NULL || params == NULL || out == NULL)
        return adapter_fail(LLMC_ERR_ARGUMENT, "model_from_params: NULL argument");
    *out = NULL;
    int rc = check_config(config, "model_from_params: config");
    if (rc) return rc;
    if ((rc = check_sizes(config, max_B, max_T, "model_from_params"))) return rc;
    llmc_model* model = calloc(1, sizeof(llmc_model));   // every pointer NULL, B = T = 0: what llm.c's loader leaves
    if (model == NULL) return adapter_fail(LLMC_ERR_ALLOC, "model_from_params: out of memory");
    GPT2* gpt = &model->gpt;
    gpt->config.max_seq_len = config->max_seq_len;
    gpt->config.vocab_size = config->vocab_size;
    gpt->config.padded_vocab_size = config->padded_vocab_size;
    gpt->config.num_layers = config->num_layers;
    gpt->config.num_heads = config->num_heads;
    gpt->config.channels = config->channels;
    fill_in_parameter_sizes(gpt->param_sizes, gpt->config);
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) gpt->num_parameters += gpt->param_sizes[i];
    gpt->params_memory = malloc_and_point_parameters(&gpt->params, gpt->param_sizes);
    memcpy(gpt->params_memory, params, gpt->num_parameters * sizeof(float));
    gpt->mean_loss = -1.0f;
    model->max_B = max_B;
    model->max_T = max_T;
    *out = model;
    return adapter_ok();
}

void llmc_model_free(llmc_model* model) {
    if (model == NULL) return;
    gpt2_free(&model->gpt);
    free(model);
}

int llmc_model_config(const llmc_model* model, llmc_config* out) {
    if (model == NULL || out == NULL) return adapter_fail(LLMC_ERR_ARGUMENT, "model_config: NULL argument");
    const GPT2Config* c = &model->gpt.config;
    out->max_seq_len = c->max_seq_len;
    out->vocab_size = c->vocab_size;
    out->padded_vocab_size = c->padded_vocab_size;
    out->num_layers = c->num_layers;
    out->num_heads = c->num_heads;
    out->channels = c->channels;
    return adapter_ok();
}

size_t llmc_model_num_parameters(const llmc_model* model) { return model == NULL ? 0 : model->gpt.num_parameters; }

static int check_tokens(const int* tokens, int n, int V, const char* name) {
    for (int i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= V)
            return adapter_fail(LLMC_ERR_TOKEN, "forward: %s[%d] = %d is outside [0, %d)", name, i, tokens[i], V);
    }
    return LLMC_OK;
}

int llmc_forward(llmc_model* model, const int* inputs, const int* targets, int B, int T, float* mean_loss) {
    if (model == NULL || inputs == NULL) return adapter_fail(LLMC_ERR_ARGUMENT, "forward: NULL model or inputs");
    if (B <= 0 || T <= 0 || B > model->max_B || T > model->max_T)
        return adapter_fail(LLMC_ERR_ARGUMENT, "forward: B = %d, T = %d outside the model's max_B = %d, max_T = %d",
                            B, T, model->max_B, model->max_T);
    GPT2* gpt = &model->gpt;
    int rc = check_tokens(inputs, B * T, gpt->config.vocab_size, "inputs");
    if (rc) return rc;
    if (targets != NULL && (rc = check_tokens(targets, B * T, gpt->config.vocab_size, "targets"))) return rc;
    int reshaped = gpt->acts_memory != NULL && (B != gpt->batch_size || T != gpt->seq_len);
    if (reshaped) {   // llm.c would exit: let it allocate the activations again for the new shape
        free(gpt->acts_memory);
        free(gpt->grads_acts_memory);
        free(gpt->inputs);
        free(gpt->targets);
        gpt->acts_memory = gpt->grads_acts_memory = NULL;
        gpt->inputs = gpt->targets = NULL;
    }
    gpt2_forward(gpt, (int*)inputs, (int*)targets, B, T);
    if (reshaped && gpt->grads_memory != NULL) {   // gpt2_backward allocates these only with grads_memory
        gpt->grads_acts_memory = malloc_and_point_activations(&gpt->grads_acts, gpt->act_sizes);
        memset(gpt->grads_acts_memory, 0, gpt->num_activations * sizeof(float));
    }
    if (mean_loss != NULL) *mean_loss = targets != NULL ? gpt->mean_loss : -1.0f;
    return adapter_ok();
}

int llmc_zero_grad(llmc_model* model) {
    if (model == NULL) return adapter_fail(LLMC_ERR_ARGUMENT, "zero_grad: NULL model");
    gpt2_zero_grad(&model->gpt);
    return adapter_ok();
}

int llmc_backward(llmc_model* model) {
    if (model == NULL) return adapter_fail(LLMC_ERR_ARGUMENT, "backward: NULL model");
    GPT2* gpt = &model->gpt;
    if (gpt->acts_memory == NULL || gpt->mean_loss == -1.0f)
        return adapter_fail(LLMC_ERR_STATE, "backward: needs a forward with targets first");
    if (gpt->grads_acts_memory != NULL) memset(gpt->grads_acts_memory, 0, gpt->num_activations * sizeof(float));
    gpt2_backward(gpt);
    return adapter_ok();
}

int llmc_update(llmc_model* model, const llmc_adamw* opt, int t, float* grad_norm) {
    if (model == NULL || opt == NULL) return adapter_fail(LLMC_ERR_ARGUMENT, "update: NULL argument");
    if (t < 1) return adapter_fail(LLMC_ERR_ARGUMENT, "update: step t = %d, must be >= 1", t);
    if (!opt->decay_all)
        return adapter_fail(LLMC_ERR_UNSUPPORTED, "update: llm.c's gpt2_update decays every parameter (decay_all = 1)");
    if (opt->grad_clip > 0.0f)
        return adapter_fail(LLMC_ERR_UNSUPPORTED, "update: llm.c's gpt2_update does not clip gradients");
    GPT2* gpt = &model->gpt;
    if (gpt->grads_memory == NULL) return adapter_fail(LLMC_ERR_STATE, "update: needs a backward first");
    double sum = 0.0;
    for (size_t i = 0; i < gpt->num_parameters; i++) sum += (double)gpt->grads_memory[i] * gpt->grads_memory[i];
    gpt2_update(gpt, opt->learning_rate, opt->beta1, opt->beta2, opt->eps, opt->weight_decay, t);
    if (grad_norm != NULL) *grad_norm = (float)sqrt(sum);
    return adapter_ok();
}

/* ----------------------------------------------------------------------------- copies */
static int copy_out(const float* src, float* dst, size_t n, const char* what) {
    if (dst == NULL) return adapter_fail(LLMC_ERR_ARGUMENT, "%s: NULL destination", what);
    if (src == NULL) memset(dst, 0, n * sizeof(float));   // not allocated yet by llm.c: still all zero
    else memcpy(dst, src, n * sizeof(float));
    return adapter_ok();
}

int llmc_get_params(const llmc_model* model, float* dst) {
    if (model == NULL) return adapter_fail(LLMC_ERR_ARGUMENT, "get_params: NULL model");
    return copy_out(model->gpt.params_memory, dst, model->gpt.num_parameters, "get_params");
}

int llmc_set_params(llmc_model* model, const float* src) {
    if (model == NULL || src == NULL) return adapter_fail(LLMC_ERR_ARGUMENT, "set_params: NULL argument");
    memcpy(model->gpt.params_memory, src, model->gpt.num_parameters * sizeof(float));
    return adapter_ok();
}

int llmc_get_grads(const llmc_model* model, float* dst) {
    if (model == NULL) return adapter_fail(LLMC_ERR_ARGUMENT, "get_grads: NULL model");
    return copy_out(model->gpt.grads_memory, dst, model->gpt.num_parameters, "get_grads");
}

int llmc_get_logits(const llmc_model* model, float* dst) {
    if (model == NULL) return adapter_fail(LLMC_ERR_ARGUMENT, "get_logits: NULL model");
    const GPT2* gpt = &model->gpt;
    if (gpt->acts_memory == NULL) return adapter_fail(LLMC_ERR_STATE, "get_logits: no forward yet");
    size_t n = (size_t)gpt->batch_size * gpt->seq_len * gpt->config.padded_vocab_size;
    return copy_out(gpt->acts.logits, dst, n, "get_logits");
}

int llmc_get_optimizer_state(const llmc_model* model, float* m, float* v) {
    if (model == NULL) return adapter_fail(LLMC_ERR_ARGUMENT, "get_optimizer_state: NULL model");
    int rc = copy_out(model->gpt.m_memory, m, model->gpt.num_parameters, "get_optimizer_state");
    if (rc) return rc;
    return copy_out(model->gpt.v_memory, v, model->gpt.num_parameters, "get_optimizer_state");
}

int llmc_set_optimizer_state(llmc_model* model, const float* m, const float* v) {
    if (model == NULL || m == NULL || v == NULL)
        return adapter_fail(LLMC_ERR_ARGUMENT, "set_optimizer_state: NULL argument");
    GPT2* gpt = &model->gpt;
    if (gpt->m_memory == NULL) {   // gpt2_update allocates them lazily, and keeps them once there
        gpt->m_memory = calloc(gpt->num_parameters, sizeof(float));
        gpt->v_memory = calloc(gpt->num_parameters, sizeof(float));
        if (gpt->m_memory == NULL || gpt->v_memory == NULL)
            return adapter_fail(LLMC_ERR_ALLOC, "set_optimizer_state: out of memory");
    }
    memcpy(gpt->m_memory, m, gpt->num_parameters * sizeof(float));
    memcpy(gpt->v_memory, v, gpt->num_parameters * sizeof(float));
    return adapter_ok();
}
