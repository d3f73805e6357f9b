/* What every library behind llmc.h checks the same way: configs, model sizes, forward arguments, AdamW
 * settings and thread counts; and the parameter layout they share (llm.c's 16 tensors). */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include "core.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* ----------------------------------------------------------------------------- parameters */
const char* const llmc_param_names[LLMC_NUM_PARAM_TENSORS] = {"wte",      "wpe",      "ln1w", "ln1b", "qkvw", "qkvb",
                                                              "attprojw", "attprojb", "ln2w", "ln2b", "fcw",  "fcb",
                                                              "fcprojw",  "fcprojb",  "lnfw", "lnfb"};

void llmc_param_sizes(const llmc_config* c, size_t sizes[LLMC_NUM_PARAM_TENSORS]) {
    size_t Vp = c->padded_vocab_size, maxT = c->max_seq_len, L = c->num_layers, C = c->channels;
    size_t s[LLMC_NUM_PARAM_TENSORS] = {
        Vp * C,        // wte
        maxT * C,      // wpe
        L * C,         // ln1w
        L * C,         // ln1b
        L * 3 * C * C, // qkvw
        L * 3 * C,     // qkvb
        L * C * C,     // attprojw
        L * C,         // attprojb
        L * C,         // ln2w
        L * C,         // ln2b
        L * 4 * C * C, // fcw
        L * 4 * C,     // fcb
        L * C * 4 * C, // fcprojw
        L * C,         // fcprojb
        C,             // lnfw
        C,             // lnfb
    };
    for (int i = 0; i < LLMC_NUM_PARAM_TENSORS; i++) sizes[i] = s[i];
}

size_t llmc_num_parameters(const llmc_config* c) {
    size_t sizes[LLMC_NUM_PARAM_TENSORS], n = 0;
    llmc_param_sizes(c, sizes);
    for (int i = 0; i < LLMC_NUM_PARAM_TENSORS; i++) n += sizes[i];
    return n;
}

float llmc_weight_decay(const llmc_adamw* opt, int tensor) {
    static const int is_2d[LLMC_NUM_PARAM_TENSORS] = {1, 1, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0};
    return opt->decay_all || is_2d[tensor] ? opt->weight_decay : 0.0f;
}

/* ----------------------------------------------------------------------------- config and sizes */
int llmc_check_config(const llmc_config* c, const char* path) {
    int code = path ? LLMC_ERR_FORMAT : LLMC_ERR_ARGUMENT;
    char where[640];
    if (path)
        snprintf(where, sizeof where, "checkpoint '%s': ", path);
    else
        snprintf(where, sizeof where, "llmc_model_from_params: ");
    /* the bounds keep every size product (L*4C*C, Vp*C, ...) far from overflowing size_t; the
     * activations' own bound is llmc_check_model_size's */
    struct {
        const char* name;
        int header_index;
        int value;
        int max;
    } fields[] = {
        {"max_seq_len", 2, c->max_seq_len, 1 << 16}, {"vocab_size", 3, c->vocab_size, 1 << 24},
        {"num_layers", 4, c->num_layers, 1 << 12},   {"num_heads", 5, c->num_heads, 1 << 12},
        {"channels", 6, c->channels, 1 << 16},       {"padded_vocab_size", 7, c->padded_vocab_size, 1 << 24},
    };
    enum { MAXT, V, L, NH, C, VP };
    char name[6][48];
    for (int i = 0; i < 6; i++) {
        if (path)
            snprintf(name[i], sizeof name[i], "header[%d] %s", fields[i].header_index, fields[i].name);
        else
            snprintf(name[i], sizeof name[i], "config.%s", fields[i].name);
    }
    for (int i = 0; i < 6; i++) {
        if (fields[i].value <= 0 || fields[i].value > fields[i].max)
            return llmc_fail(code, "%s%s = %d: must lie in [1, %d]", where, name[i], fields[i].value, fields[i].max);
    }
    if (c->channels % c->num_heads != 0)
        return llmc_fail(code, "%s%s = %d is not divisible by %s = %d", where, name[C], c->channels, name[NH],
                         c->num_heads);
    if (c->padded_vocab_size < c->vocab_size)
        return llmc_fail(code, "%s%s = %d is smaller than %s = %d", where, name[VP], c->padded_vocab_size, name[V],
                         c->vocab_size);
    return LLMC_OK;
}

int llmc_check_model_size(const llmc_config* c, int max_B, int max_T) {
    if (max_B <= 0 || max_T <= 0)
        return llmc_fail(LLMC_ERR_ARGUMENT, "max_B = %d, max_T = %d: both must be positive", max_B, max_T);
    if (max_T > c->max_seq_len)
        return llmc_fail(LLMC_ERR_ARGUMENT, "max_T = %d exceeds the model's max_seq_len = %d", max_T, c->max_seq_len);
    if ((double)max_B * max_T * 4.0 * c->channels > INT_MAX)
        return llmc_fail(LLMC_ERR_ARGUMENT,
                         "max_B = %d x max_T = %d tokens of %d channels is too large "
                         "(B*T*4C must stay below 2^31)",
                         max_B, max_T, c->channels);
    return LLMC_OK;
}

/* ----------------------------------------------------------------------------- call arguments */
static int check_tokens(const int* tokens, const char* name, int B, int T, int V) {
    for (size_t i = 0; i < (size_t)B * T; i++) {
        if (tokens[i] < 0 || tokens[i] >= V)
            return llmc_fail(LLMC_ERR_TOKEN, "llmc_forward: %s[%zu][%zu] = %d is outside [0, %d)", name, i / T, i % T,
                             tokens[i], V);
    }
    return LLMC_OK;
}

int llmc_check_forward(const int* inputs, const int* targets, int B, int T, int max_B, int max_T, int vocab_size) {
    if (inputs == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_forward: inputs must not be NULL");
    if (B <= 0 || T <= 0)
        return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_forward: B = %d, T = %d: both must be positive", B, T);
    if (B > max_B || T > max_T)
        return llmc_fail(LLMC_ERR_ARGUMENT,
                         "llmc_forward: B = %d, T = %d exceed the max_B = %d, max_T = %d the "
                         "model was sized for",
                         B, T, max_B, max_T);
    int rc = check_tokens(inputs, "inputs", B, T, vocab_size);
    if (rc == LLMC_OK && targets != NULL) rc = check_tokens(targets, "targets", B, T, vocab_size);
    return rc;
}

int llmc_check_update(const llmc_adamw* opt, int t) {
    if (opt == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_update: opt must not be NULL");
    if (t < 1) return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_update: t = %d, the step count starts at 1", t);
    struct {
        const char* name;
        float value;
    } settings[] = {
        {"learning_rate", opt->learning_rate}, {"beta1", opt->beta1},        {"beta2", opt->beta2}, {"eps", opt->eps},
        {"weight_decay", opt->weight_decay},   {"grad_clip", opt->grad_clip}};
    for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++) {
        if (!isfinite(settings[i].value))
            return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_update: %s = %g, must be finite", settings[i].name,
                             settings[i].value);
    }
    if (!(opt->beta1 >= 0.0f && opt->beta1 < 1.0f) || !(opt->beta2 >= 0.0f && opt->beta2 < 1.0f))
        return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_update: beta1 = %g, beta2 = %g: both must lie in [0, 1)", opt->beta1,
                         opt->beta2);
    if (!(opt->eps > 0.0f)) // m_hat / (sqrt(v_hat) + eps) divides by zero where a gradient is zero
        return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_update: eps = %g, must be positive", opt->eps);
    return LLMC_OK;
}

/* ----------------------------------------------------------------------------- llmc.h: threads */
/* With OpenMP (the CPU library, the llm.c adapter) the count of OpenMP threads, which the BLAS work runs
 * on too; clamped to 4 per processor and LLMC_MAX_THREADS at most: more only adds barrier waits, and
 * libgomp ends the process when it cannot create a thread (LLMC_THREADS=100000 did). The CUDA library,
 * built without OpenMP, checks n and ignores it. */
int llmc_set_num_threads(int n) {
    if (n < 1) return llmc_fail(LLMC_ERR_ARGUMENT, "llmc_set_num_threads: n = %d, must be at least 1", n);
#ifdef _OPENMP
    int procs = omp_get_num_procs(), limit = procs < LLMC_MAX_THREADS / 4 ? 4 * procs : LLMC_MAX_THREADS;
    omp_set_num_threads(n < limit ? n : limit);
#endif
    return llmc_ok();
}
