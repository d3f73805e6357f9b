/* A stand-in for llm.c's train_gpt2.c, for CI machines that cannot download llm.c.

It has llm.c's ABI, the part native/llmc_adapter.c builds against: the GPT2Config, ParameterTensors,
ActivationTensors and GPT2 structs with llm.c's fields, and llm.c's public functions with their
signatures (fill_in_parameter_sizes, malloc_and_point_parameters, fill_in_activation_sizes,
malloc_and_point_activations, gpt2_build_from_checkpoint, gpt2_forward, gpt2_zero_grad, gpt2_backward,
gpt2_update, gpt2_free), its conventions (exit() on bad input, B and T fixed by the first forward,
activation gradients zeroed only by gpt2_zero_grad, AdamW decaying every parameter, no clipping) and
main() behind #ifndef TESTING. It is NOT llm.c: the layers are our own CPU kernels (native/kernels.c,
#included below) with a plain-loop sgemm instead of BLAS, so passing the suite through this stand-in
proves the adapter and the harness, not llm.c. Point tools/validate_llmc.py at a real llm.c checkout
for that.

Deliberate bugs for the harness's self-test (tests/test_ports.py), off unless defined:
  STANDIN_BUG_ENCODER_OVERWRITE          encoder_backward overwrites dwte / dwpe rows instead of +=
  STANDIN_BUG_MATMUL_BACKWARD_OVERWRITE  matmul_backward overwrites dinp instead of +=
  STANDIN_BUG_ADAMW_NO_BIAS_CORRECTION   gpt2_update without AdamW's bias correction
and, at run time, the environment variable STANDIN_CRASH makes gpt2_forward end badly, as a broken port
would: segv (a NULL write), abort, exit (llm.c's exit(1)) or hang (it never returns).
*/
#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef OMP
#include <omp.h>
#endif
#include "llmc/utils.h"

// ----------------------------------------------------------------------------
// the layers: our CPU kernels, llm.c's signatures

// native/kernels.c calls this for every matmul; llm.c's CPU code has no BLAS, so neither has the stand-in.
// row-major C (M,N) = alpha op(A) op(B) + beta C, op = transpose when trans_* is set. The dot products
// accumulate in double, so the stand-in rounds about as a blocked BLAS does even over Vp = 50304 terms.
void llmc_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
                int ldb, float beta, float* C, int ldc) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            double sum = 0.0;
            for (int k = 0; k < K; k++) {
                float a = trans_a ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                float b = trans_b ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                sum += (double)a * b;
            }
            float* c = C + (size_t)i * ldc + j;
            *c = (float)(alpha * sum) + (beta == 0.0f ? 0.0f : beta * *c);
        }
    }
}

#ifdef STANDIN_BUG_ENCODER_OVERWRITE
#define encoder_backward correct_encoder_backward
#endif
#ifdef STANDIN_BUG_MATMUL_BACKWARD_OVERWRITE
#define matmul_backward correct_matmul_backward
#endif
#include "../../native/kernels.c"

#ifdef STANDIN_BUG_ENCODER_OVERWRITE
#undef encoder_backward
void encoder_backward(float* dwte, float* dwpe, float* dout, int* inp, int B, int T, int C) {
    // the bug: the rows it touches start from zero, whatever they held (e.g. the lm head's dwte)
    for (int i = 0; i < B * T; i++) memset(dwte + (size_t)inp[i] * C, 0, C * sizeof(float));
    memset(dwpe, 0, (size_t)T * C * sizeof(float));
    correct_encoder_backward(dwte, dwpe, dout, inp, B, T, C);
}
#endif
#ifdef STANDIN_BUG_MATMUL_BACKWARD_OVERWRITE
#undef matmul_backward
void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int B, int T, int C, int OC) {
    // the bug: dinp = ... instead of dinp += ...
    memset(dinp, 0, (size_t)B * T * C * sizeof(float));
    correct_matmul_backward(dinp, dweight, dbias, dout, inp, weight, B, T, C, OC);
}
#endif

// ----------------------------------------------------------------------------
// GPT-2 model definition

typedef struct {
    int max_seq_len;       // max sequence length, e.g. 1024
    int vocab_size;        // vocab size, e.g. 50257
    int padded_vocab_size; // vocab size padded to a multiple of 128, e.g. 50304
    int num_layers;
    int num_heads;
    int channels;
} GPT2Config;

#define NUM_PARAMETER_TENSORS 16
typedef struct {
    float* wte;      // (Vp, C)
    float* wpe;      // (maxT, C)
    float* ln1w;     // (L, C)
    float* ln1b;     // (L, C)
    float* qkvw;     // (L, 3*C, C)
    float* qkvb;     // (L, 3*C)
    float* attprojw; // (L, C, C)
    float* attprojb; // (L, C)
    float* ln2w;     // (L, C)
    float* ln2b;     // (L, C)
    float* fcw;      // (L, 4*C, C)
    float* fcb;      // (L, 4*C)
    float* fcprojw;  // (L, C, 4*C)
    float* fcprojb;  // (L, C)
    float* lnfw;     // (C)
    float* lnfb;     // (C)
} ParameterTensors;

void fill_in_parameter_sizes(size_t* param_sizes, GPT2Config config) {
    size_t Vp = config.padded_vocab_size, C = config.channels, maxT = config.max_seq_len, L = config.num_layers;
    size_t sizes[NUM_PARAMETER_TENSORS] = {Vp * C,        maxT * C, L * C, L * C, L * 3 * C * C, L * 3 * C,
                                           L * C * C,     L * C,    L * C, L * C, L * 4 * C * C, L * 4 * C,
                                           L * C * 4 * C, L * C,    C,     C};
    memcpy(param_sizes, sizes, sizeof(sizes));
}

// one allocation for all the tensors, each pointing into it
float* malloc_and_point_parameters(ParameterTensors* params, size_t* param_sizes) {
    size_t num_parameters = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) num_parameters += param_sizes[i];
    float* params_memory = (float*)mallocCheck(num_parameters * sizeof(float));
    float** ptrs[] = {&params->wte,      &params->wpe,      &params->ln1w, &params->ln1b, &params->qkvw, &params->qkvb,
                      &params->attprojw, &params->attprojb, &params->ln2w, &params->ln2b, &params->fcw,  &params->fcb,
                      &params->fcprojw,  &params->fcprojb,  &params->lnfw, &params->lnfb};
    float* it = params_memory;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        *(ptrs[i]) = it;
        it += param_sizes[i];
    }
    return params_memory;
}

#define NUM_ACTIVATION_TENSORS 23
typedef struct {
    float* encoded;   // (B, T, C)
    float* ln1;       // (L, B, T, C)
    float* ln1_mean;  // (L, B, T)
    float* ln1_rstd;  // (L, B, T)
    float* qkv;       // (L, B, T, 3*C)
    float* atty;      // (L, B, T, C)
    float* preatt;    // (L, B, NH, T, T)
    float* att;       // (L, B, NH, T, T)
    float* attproj;   // (L, B, T, C)
    float* residual2; // (L, B, T, C)
    float* ln2;       // (L, B, T, C)
    float* ln2_mean;  // (L, B, T)
    float* ln2_rstd;  // (L, B, T)
    float* fch;       // (L, B, T, 4*C)
    float* fch_gelu;  // (L, B, T, 4*C)
    float* fcproj;    // (L, B, T, C)
    float* residual3; // (L, B, T, C)
    float* lnf;       // (B, T, C)
    float* lnf_mean;  // (B, T)
    float* lnf_rstd;  // (B, T)
    float* logits;    // (B, T, Vp)
    float* probs;     // (B, T, Vp)
    float* losses;    // (B, T)
} ActivationTensors;

void fill_in_activation_sizes(size_t* act_sizes, GPT2Config config, int B, int T) {
    size_t C = config.channels, NH = config.num_heads, L = config.num_layers, Vp = config.padded_vocab_size;
    size_t BT = (size_t)B * T;
    size_t sizes[NUM_ACTIVATION_TENSORS] = {BT * C,
                                            L * BT * C,
                                            L * BT,
                                            L * BT,
                                            L * BT * 3 * C,
                                            L * BT * C,
                                            L * B * NH * T * T,
                                            L * B * NH * T * T,
                                            L * BT * C,
                                            L * BT * C,
                                            L * BT * C,
                                            L * BT,
                                            L * BT,
                                            L * BT * 4 * C,
                                            L * BT * 4 * C,
                                            L * BT * C,
                                            L * BT * C,
                                            BT * C,
                                            BT,
                                            BT,
                                            BT * Vp,
                                            BT * Vp,
                                            BT};
    memcpy(act_sizes, sizes, sizeof(sizes));
}

float* malloc_and_point_activations(ActivationTensors* acts, size_t* act_sizes) {
    size_t num_activations = 0;
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) num_activations += act_sizes[i];
    float* acts_memory = (float*)mallocCheck(num_activations * sizeof(float));
    float** ptrs[] = {&acts->encoded, &acts->ln1,       &acts->ln1_mean, &acts->ln1_rstd, &acts->qkv,
                      &acts->atty,    &acts->preatt,    &acts->att,      &acts->attproj,  &acts->residual2,
                      &acts->ln2,     &acts->ln2_mean,  &acts->ln2_rstd, &acts->fch,      &acts->fch_gelu,
                      &acts->fcproj,  &acts->residual3, &acts->lnf,      &acts->lnf_mean, &acts->lnf_rstd,
                      &acts->logits,  &acts->probs,     &acts->losses};
    float* it = acts_memory;
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) {
        *(ptrs[i]) = it;
        it += act_sizes[i];
    }
    return acts_memory;
}

typedef struct {
    GPT2Config config;
    ParameterTensors params; // the weights, pointing into params_memory
    size_t param_sizes[NUM_PARAMETER_TENSORS];
    float* params_memory;
    size_t num_parameters;
    ParameterTensors grads; // gradients of the weights
    float* grads_memory;
    float* m_memory; // AdamW state
    float* v_memory;
    ActivationTensors acts;
    size_t act_sizes[NUM_ACTIVATION_TENSORS];
    float* acts_memory;
    size_t num_activations;
    ActivationTensors grads_acts; // gradients of the activations
    float* grads_acts_memory;
    int batch_size; // B and T of the activations, fixed by the first forward
    int seq_len;
    int* inputs; // the last forward's tokens
    int* targets;
    float mean_loss; // -1.0f: the last forward had no targets
} GPT2;

void gpt2_build_from_checkpoint(GPT2* model, const char* checkpoint_path) {
    FILE* model_file = fopenCheck(checkpoint_path, "rb");
    int model_header[256];
    freadCheck(model_header, sizeof(int), 256, model_file);
    if (model_header[0] != 20240326) {
        printf("Bad magic model file\n");
        exit(1);
    }
    if (model_header[1] != 3) {
        printf("Bad version in model file\n");
        exit(1);
    }
    model->config.max_seq_len = model_header[2];
    model->config.vocab_size = model_header[3];
    model->config.num_layers = model_header[4];
    model->config.num_heads = model_header[5];
    model->config.channels = model_header[6];
    model->config.padded_vocab_size = model_header[7];

    fill_in_parameter_sizes(model->param_sizes, model->config);
    model->num_parameters = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) model->num_parameters += model->param_sizes[i];
    model->params_memory = malloc_and_point_parameters(&model->params, model->param_sizes);
    freadCheck(model->params_memory, sizeof(float), model->num_parameters, model_file);
    fcloseCheck(model_file);

    model->acts_memory = NULL;
    model->grads_memory = NULL;
    model->m_memory = NULL;
    model->v_memory = NULL;
    model->grads_acts_memory = NULL;
    model->inputs = NULL;
    model->targets = NULL;
    model->batch_size = 0;
    model->seq_len = 0;
    model->mean_loss = -1.0f;
}

static void standin_crash(void) {
    const char* how = getenv("STANDIN_CRASH");
    if (how == NULL) return;
    volatile int* volatile nowhere = NULL; // the compiler cannot see it is NULL, so the write stays
    if (strcmp(how, "segv") == 0) *nowhere = 0;
    if (strcmp(how, "abort") == 0) abort();
    if (strcmp(how, "exit") == 0) {
        printf("Error: STANDIN_CRASH=exit\n");
        exit(1);
    }
    if (strcmp(how, "hang") == 0)
        for (volatile int forever = 1; forever;) {}
}

void gpt2_forward(GPT2* model, int* inputs, int* targets, size_t B, size_t T) {
    standin_crash();
    if (model->params_memory == NULL) {
        printf("Error: model was not initialized properly.\n");
        exit(1);
    }
    size_t V = model->config.vocab_size, Vp = model->config.padded_vocab_size;
    size_t L = model->config.num_layers, NH = model->config.num_heads, C = model->config.channels;
    for (size_t i = 0; i < B * T; i++) {
        assert(0 <= inputs[i] && inputs[i] < (int)V);
        if (targets != NULL) assert(0 <= targets[i] && targets[i] < (int)V);
    }
    if (model->acts_memory == NULL) { // lazily, for this B and T only
        model->batch_size = B;
        model->seq_len = T;
        fill_in_activation_sizes(model->act_sizes, model->config, B, T);
        model->num_activations = 0;
        for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) model->num_activations += model->act_sizes[i];
        model->acts_memory = malloc_and_point_activations(&model->acts, model->act_sizes);
        model->inputs = (int*)mallocCheck(B * T * sizeof(int));
        model->targets = (int*)mallocCheck(B * T * sizeof(int));
    } else if (B != (size_t)model->batch_size || T != (size_t)model->seq_len) {
        printf("Model: B=%d T=%d, Desired: B=%d T=%d\n", model->batch_size, model->seq_len, (int)B, (int)T);
        exit(EXIT_FAILURE);
    }
    memcpy(model->inputs, inputs, B * T * sizeof(int));
    if (targets != NULL) memcpy(model->targets, targets, B * T * sizeof(int));

    ParameterTensors p = model->params;
    ActivationTensors a = model->acts;
    size_t BTC = B * T * C;
    encoder_forward(a.encoded, inputs, p.wte, p.wpe, B, T, C);
    for (size_t l = 0; l < L; l++) {
        float* residual = l == 0 ? a.encoded : a.residual3 + (l - 1) * BTC;
        float* l_ln1 = a.ln1 + l * BTC;
        float* l_ln1_mean = a.ln1_mean + l * B * T;
        float* l_ln1_rstd = a.ln1_rstd + l * B * T;
        float* l_qkv = a.qkv + l * 3 * BTC;
        float* l_atty = a.atty + l * BTC;
        float* l_preatt = a.preatt + l * B * NH * T * T;
        float* l_att = a.att + l * B * NH * T * T;
        float* l_attproj = a.attproj + l * BTC;
        float* l_residual2 = a.residual2 + l * BTC;
        float* l_ln2 = a.ln2 + l * BTC;
        float* l_ln2_mean = a.ln2_mean + l * B * T;
        float* l_ln2_rstd = a.ln2_rstd + l * B * T;
        float* l_fch = a.fch + l * 4 * BTC;
        float* l_fch_gelu = a.fch_gelu + l * 4 * BTC;
        float* l_fcproj = a.fcproj + l * BTC;
        float* l_residual3 = a.residual3 + l * BTC;

        layernorm_forward(l_ln1, l_ln1_mean, l_ln1_rstd, residual, p.ln1w + l * C, p.ln1b + l * C, B, T, C);
        matmul_forward(l_qkv, l_ln1, p.qkvw + l * 3 * C * C, p.qkvb + l * 3 * C, B, T, C, 3 * C);
        attention_forward(l_atty, l_preatt, l_att, l_qkv, B, T, C, NH);
        matmul_forward(l_attproj, l_atty, p.attprojw + l * C * C, p.attprojb + l * C, B, T, C, C);
        residual_forward(l_residual2, residual, l_attproj, BTC);
        layernorm_forward(l_ln2, l_ln2_mean, l_ln2_rstd, l_residual2, p.ln2w + l * C, p.ln2b + l * C, B, T, C);
        matmul_forward(l_fch, l_ln2, p.fcw + l * 4 * C * C, p.fcb + l * 4 * C, B, T, C, 4 * C);
        gelu_forward(l_fch_gelu, l_fch, 4 * BTC);
        matmul_forward(l_fcproj, l_fch_gelu, p.fcprojw + l * C * 4 * C, p.fcprojb + l * C, B, T, 4 * C, C);
        residual_forward(l_residual3, l_residual2, l_fcproj, BTC);
    }
    float* residual = a.residual3 + (L - 1) * BTC;
    layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, residual, p.lnfw, p.lnfb, B, T, C);
    matmul_forward(a.logits, a.lnf, p.wte, NULL, B, T, C, Vp);
    softmax_forward(a.probs, a.logits, B, T, V, Vp);

    if (targets != NULL) {
        crossentropy_forward(a.losses, a.probs, targets, B, T, Vp);
        float mean_loss = 0.0f;
        for (size_t i = 0; i < B * T; i++) mean_loss += a.losses[i];
        model->mean_loss = mean_loss / (B * T);
    } else {
        model->mean_loss = -1.0f;
    }
}

void gpt2_zero_grad(GPT2* model) {
    if (model->grads_memory != NULL) memset(model->grads_memory, 0, model->num_parameters * sizeof(float));
    if (model->grads_acts_memory != NULL) memset(model->grads_acts_memory, 0, model->num_activations * sizeof(float));
}

void gpt2_backward(GPT2* model) {
    if (model->mean_loss == -1.0f) {
        printf("Error: must forward with targets before backward\n");
        exit(1);
    }
    if (model->grads_memory == NULL) {
        model->grads_memory = malloc_and_point_parameters(&model->grads, model->param_sizes);
        model->grads_acts_memory = malloc_and_point_activations(&model->grads_acts, model->act_sizes);
        gpt2_zero_grad(model);
    }
    size_t B = model->batch_size, T = model->seq_len;
    size_t V = model->config.vocab_size, Vp = model->config.padded_vocab_size;
    size_t L = model->config.num_layers, NH = model->config.num_heads, C = model->config.channels;
    size_t BTC = B * T * C;
    ParameterTensors p = model->params, g = model->grads;
    ActivationTensors a = model->acts, da = model->grads_acts;

    // the mean over B*T positions: every position's loss gets 1/(B*T)
    float dloss_mean = 1.0f / (B * T);
    for (size_t i = 0; i < B * T; i++) da.losses[i] = dloss_mean;
    crossentropy_softmax_backward(da.logits, da.losses, a.probs, model->targets, B, T, V, Vp);
    matmul_backward(da.lnf, g.wte, NULL, da.logits, a.lnf, p.wte, B, T, C, Vp);
    float* residual = a.residual3 + (L - 1) * BTC;
    float* dresidual = da.residual3 + (L - 1) * BTC;
    layernorm_backward(dresidual, g.lnfw, g.lnfb, da.lnf, residual, p.lnfw, a.lnf_mean, a.lnf_rstd, B, T, C);

    for (size_t l = L; l-- > 0;) {
        residual = l == 0 ? a.encoded : a.residual3 + (l - 1) * BTC;
        dresidual = l == 0 ? da.encoded : da.residual3 + (l - 1) * BTC;
        float* dl_residual2 = da.residual2 + l * BTC;
        float* dl_fcproj = da.fcproj + l * BTC;
        float* dl_fch_gelu = da.fch_gelu + l * 4 * BTC;
        float* dl_fch = da.fch + l * 4 * BTC;
        float* dl_ln2 = da.ln2 + l * BTC;
        float* dl_attproj = da.attproj + l * BTC;
        float* dl_atty = da.atty + l * BTC;
        float* dl_qkv = da.qkv + l * 3 * BTC;
        float* dl_ln1 = da.ln1 + l * BTC;
        float* dl_preatt = da.preatt + l * B * NH * T * T;
        float* dl_att = da.att + l * B * NH * T * T;

        residual_backward(dl_residual2, dl_fcproj, da.residual3 + l * BTC, BTC);
        matmul_backward(dl_fch_gelu, g.fcprojw + l * C * 4 * C, g.fcprojb + l * C, dl_fcproj, a.fch_gelu + l * 4 * BTC,
                        p.fcprojw + l * C * 4 * C, B, T, 4 * C, C);
        gelu_backward(dl_fch, a.fch + l * 4 * BTC, dl_fch_gelu, 4 * BTC);
        matmul_backward(dl_ln2, g.fcw + l * 4 * C * C, g.fcb + l * 4 * C, dl_fch, a.ln2 + l * BTC,
                        p.fcw + l * 4 * C * C, B, T, C, 4 * C);
        layernorm_backward(dl_residual2, g.ln2w + l * C, g.ln2b + l * C, dl_ln2, a.residual2 + l * BTC, p.ln2w + l * C,
                           a.ln2_mean + l * B * T, a.ln2_rstd + l * B * T, B, T, C);
        residual_backward(dresidual, dl_attproj, dl_residual2, BTC);
        matmul_backward(dl_atty, g.attprojw + l * C * C, g.attprojb + l * C, dl_attproj, a.atty + l * BTC,
                        p.attprojw + l * C * C, B, T, C, C);
        attention_backward(dl_qkv, dl_preatt, dl_att, dl_atty, a.qkv + l * 3 * BTC, a.att + l * B * NH * T * T, B, T, C,
                           NH);
        matmul_backward(dl_ln1, g.qkvw + l * 3 * C * C, g.qkvb + l * 3 * C, dl_qkv, a.ln1 + l * BTC,
                        p.qkvw + l * 3 * C * C, B, T, C, 3 * C);
        layernorm_backward(dresidual, g.ln1w + l * C, g.ln1b + l * C, dl_ln1, residual, p.ln1w + l * C,
                           a.ln1_mean + l * B * T, a.ln1_rstd + l * B * T, B, T, C);
    }
    encoder_backward(g.wte, g.wpe, da.encoded, model->inputs, B, T, C);
}

// AdamW as llm.c's CPU code has it: weight decay on every parameter, no clipping
void gpt2_update(GPT2* model, float learning_rate, float beta1, float beta2, float eps, float weight_decay, int t) {
    if (model->m_memory == NULL) {
        model->m_memory = (float*)calloc(model->num_parameters, sizeof(float));
        model->v_memory = (float*)calloc(model->num_parameters, sizeof(float));
    }
    for (size_t i = 0; i < model->num_parameters; i++) {
        float param = model->params_memory[i];
        float grad = model->grads_memory[i];
        float m = beta1 * model->m_memory[i] + (1.0f - beta1) * grad;
        float v = beta2 * model->v_memory[i] + (1.0f - beta2) * grad * grad;
#ifdef STANDIN_BUG_ADAMW_NO_BIAS_CORRECTION
        float m_hat = m, v_hat = v;
#else
        float m_hat = m / (1.0f - powf(beta1, t));
        float v_hat = v / (1.0f - powf(beta2, t));
#endif
        model->m_memory[i] = m;
        model->v_memory[i] = v;
        model->params_memory[i] -= learning_rate * (m_hat / (sqrtf(v_hat) + eps) + weight_decay * param);
    }
}

void gpt2_free(GPT2* model) {
    free(model->params_memory);
    free(model->grads_memory);
    free(model->m_memory);
    free(model->v_memory);
    free(model->acts_memory);
    free(model->grads_acts_memory);
    free(model->inputs);
    free(model->targets);
}

#ifndef TESTING
// a few AdamW steps on one fixed batch of gpt2_124M.bin, printing the losses (llm.c's main also samples
// and reads token files; the stand-in has no data loader)
int main(void) {
    GPT2 model;
    gpt2_build_from_checkpoint(&model, "gpt2_124M.bin");
    int B = 4, T = 64 < model.config.max_seq_len ? 64 : model.config.max_seq_len;
    int* tokens = (int*)mallocCheck((B * T + 1) * sizeof(int));
    for (int i = 0; i < B * T + 1; i++) tokens[i] = (i * 7919) % model.config.vocab_size;
    for (int step = 0; step < 10; step++) {
        gpt2_forward(&model, tokens, tokens + 1, B, T);
        gpt2_zero_grad(&model);
        gpt2_backward(&model);
        gpt2_update(&model, 1e-4f, 0.9f, 0.999f, 1e-8f, 0.0f, step + 1);
        printf("step %d: train loss %f\n", step, model.mean_loss);
    }
    free(tokens);
    gpt2_free(&model);
    return 0;
}
#endif
