/* libllmc's model API (llmc.h) on top of llm.c's train_gpt2_fp32.cu, its fp32 CUDA program (cuBLAS with TF32
 * tensor-core math where the device has it, as its main() sets up), so the suite can judge it. Its bf16
 * sibling is llmc_adapter_cuda.cu; what the two share is llmc_adapter_cuda.cuh, and libllmc's host C core
 * (native/core: the error state, the argument checks, the checkpoint reader).
 *
 * Built by tools/validate_llmc.py --cuda against an llm.c checkout (or the CUDA stand-in in tests/standin_llmc):
 *     cc -std=gnu11 -O2 -fPIC -c native/core/{checkpoint,checks,errors}.c
 *     nvcc -O3 --use_fast_math -std=c++17 -shared -Xcompiler -fPIC,-fvisibility=hidden -I native -I LLMC_DIR \
 *          native/llmc_adapter_cuda_fp32.cu checkpoint.o checks.o errors.o -o libllmc_llmc_cuda_fp32.so -lcublas
 * and driven as the backend "lib:PATH", judged under the tf32 precision class (llmc_set_precision(1), llm.c's
 * default; mode 0 is the same program with cuBLAS's default fp32 math, test_gpt2_fp32.cu's setting).
 *
 * train_gpt2_fp32.cu has the CPU train_gpt2.c's model API (gpt2_forward with optional targets, gpt2_zero_grad,
 * gpt2_backward, gpt2_update decaying every parameter and never clipping), so this adapter is
 * native/llmc_adapter.c's on the device. What it supplies, without touching llm.c's math:
 *   - a model from parameters, built with llm.c's own allocator (checkpoints are read by the core's reader,
 *     as in native/llmc_adapter.c: llm.c's exits on a bad file and checks neither its size nor its values);
 *   - the activations, allocated as gpt2_forward would allocate them, for each new B, T (llm.c exits on a
 *     second shape), and zeroed: llm.c's attention reads the whole (T,T) matrix but its softmax writes only
 *     the causal triangle, so it relies on fresh device memory being zero, as it is in a new process (the
 *     bf16 train_gpt2.cu memsets it for this reason); in the harness's long-lived process freed memory comes
 *     back with old values in it;
 *   - logits alongside a loss: a forward with targets overwrites the logits with their gradient (its fused
 *     classifier), so the adapter runs gpt2_forward without targets, keeps the logits, then with them;
 *   - the activation gradients zeroed before each backward (llm.c zeroes them in gpt2_zero_grad only;
 *     its residual stream's gradient accumulates), so a second backward adds to the parameter
 *     gradients as llmc.h says;
 *   - the gradient's global norm, which gpt2_update does not compute: summed in double on the host.
 * What llm.c cannot do is LLMC_ERR_UNSUPPORTED: bf16 (mode 2), weight decay on the 2-D tensors only,
 * gradient clipping, v5 (bf16) checkpoints, shapes its kernels do not handle (below).
 */
#define LLMC_TRAIN_SOURCE "train_gpt2_fp32.cu"
#include "llmc_adapter_cuda.cuh"

/* matmul_forward_kernel4 computes 128 x 128 output tiles (rows B*T, columns OC) with no bounds checks,
 * stepping through the inner dimension 32 at a time: B*T, C (OC = C, 3C, 4C; inner C, 4C) and Vp (the lm
 * head's OC) must be multiples of 128, as they are in llm.c's GPT-2 runs (Vp 50304, C 768, B*T 4 x 1024). */
#define MATMUL_TILE 128

struct llmc_abi::llmc_model {
    GPT2 gpt;
    int max_B, max_T;
    int B, T;                         // the last forward's; 0 before the first
    bool forward_has_targets;         // the last forward had targets and no backward has consumed it since
    bool backward_done;               // a backward has run: update has gradients
    std::vector<int> inputs, targets; // the last forward's tokens (gpt2_forward takes int*)
    float* logits;                    // (max_B, max_T, Vp) device copy of the last forward's logits
};

static char build_info[512] =
    "llm.c train_gpt2_fp32.cu (-DTESTING; fp32, cuBLAS TF32 math in mode 1) through "
    "native/llmc_adapter_cuda_fp32.cu, nvcc " LLMC_STRINGIFY(__CUDACC_VER_MAJOR__) "." LLMC_STRINGIFY(
        __CUDACC_VER_MINOR__) ", llm.c source " LLMC_SOURCE_ID;
static bool initialized = false;
static cudaDeviceProp device;
static int precision_mode = -1; // -1 until set: llm.c's main() default, TF32 where the device has it (sm_80+)

/* ----------------------------------------------------------------------------- library */
LLMC_API const char* llmc_backend_name(void) { return "llm.c-cuda-fp32"; }
LLMC_API const char* llmc_build_info(void) { return build_info; }

/* train_gpt2_fp32.cu's main(): TF32 is both the compute type and cuBLAS's math mode on its handle */
static void apply_precision(void) {
    const bool tf32 = precision_mode == 1;
    cublas_compute_type = tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    cublasCheck(cublasSetMathMode(cublas_handle, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
}

LLMC_API int llmc_init(void) {
    if (initialized) return llmc_ok();
    int rc = require_device("init");
    if (rc) return rc;
    return guarded("init", [] {
        adapter_cuda(cudaSetDevice(0));
        adapter_cuda(cudaGetDeviceProperties(&device, 0));
        cublasCheck(cublasCreate(&cublas_handle));
        if (precision_mode < 0 || device.major < 8) precision_mode = device.major >= 8 ? 1 : 0;
        apply_precision();
        int version = 0;
        cublasCheck(cublasGetVersion(cublas_handle, &version));
        size_t used = strlen(build_info);
        snprintf(build_info + used, sizeof(build_info) - used, ", cuBLAS %d, %s (sm_%d%d, %d SMs)", version,
                 device.name, device.major, device.minor, device.multiProcessorCount);
        initialized = true;
        return llmc_ok();
    });
}

LLMC_API int llmc_set_precision(int mode) {
    if (mode == 2)
        return llmc_fail(LLMC_ERR_UNSUPPORTED,
                         "set_precision: llm.c's train_gpt2_fp32.cu computes in fp32 (mode 0) "
                         "or with TF32 matmuls (mode 1); its bf16 program is train_gpt2.cu (llmc_adapter_cuda.cu)");
    if (mode != 0 && mode != 1)
        return llmc_fail(LLMC_ERR_ARGUMENT, "set_precision: mode %d, expected 0 (fp32) or 1 (tf32)", mode);
    if (mode == 1 && initialized && device.major < 8)
        return llmc_fail(LLMC_ERR_UNSUPPORTED, "set_precision: %s (sm_%d%d) has no TF32", device.name, device.major,
                         device.minor);
    precision_mode = mode;
    if (!initialized) return llmc_ok();
    return guarded("set_precision", [] {
        apply_precision();
        return llmc_ok();
    });
}

/* ----------------------------------------------------------------------------- model */
static int check_llmc_config(const llmc_config* c, const char* where) {
    if (c->channels % MATMUL_TILE || c->padded_vocab_size % MATMUL_TILE)
        return llmc_fail(LLMC_ERR_UNSUPPORTED,
                         "%s: llm.c's train_gpt2_fp32.cu needs channels (%d) and "
                         "padded_vocab_size (%d) to be multiples of %d (matmul_forward_kernel4's unchecked tiles)",
                         where, c->channels, c->padded_vocab_size, MATMUL_TILE);
    const double C = c->channels;
    const double sizes[3] = {(double)c->padded_vocab_size * C, 4.0 * c->num_layers * C * C,
                             (double)llmc_num_parameters(c)};
    for (double size : sizes) {
        if (size > INT_MAX)
            return llmc_fail(LLMC_ERR_UNSUPPORTED,
                             "%s: %.0f parameters in one tensor or in all; llm.c's "
                             "fill_in_parameter_sizes and AdamW kernel count them in int",
                             where, size);
    }
    return LLMC_OK;
}

/* Bytes the model needs on the device when trained at max_B x max_T: weights, gradients, AdamW state,
 * activations and their gradients, the adapter's logits copy. */
static size_t device_bytes(const llmc_config* c, GPT2Config config, int max_B, int max_T) {
    size_t acts[NUM_ACTIVATION_TENSORS], grad_acts[NUM_BACKWARD_TENSORS];
    fill_in_activation_sizes(acts, max_B, max_T, config);
    config.num_layers = 1; // gpt2_backward keeps one layer's activation gradients
    fill_in_grad_act_sizes(grad_acts, max_B, max_T, config);
    size_t floats = 4 * llmc_num_parameters(c) + (size_t)max_B * max_T * c->padded_vocab_size;
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) floats += acts[i];
    for (int i = 0; i < NUM_BACKWARD_TENSORS; i++) floats += grad_acts[i];
    return floats * sizeof(float) + (size_t)max_B * max_T * 2 * sizeof(int);
}

/* Frees the activations and everything else gpt2_forward sized for one B, T (with the activation
 * gradients that gpt2_backward sized for it). Errors are ignored: after a CUDA error the memory goes with
 * the context. */
static void free_activations(GPT2* gpt) {
    cudaFree(gpt->acts_memory);
    cudaFree(gpt->grads_acts_memory);
    cudaFree(gpt->inputs);
    cudaFree(gpt->targets);
    cudaFreeHost(gpt->cpu_losses);
    gpt->acts_memory = gpt->grads_acts_memory = NULL;
    gpt->inputs = gpt->targets = NULL;
    gpt->cpu_losses = NULL;
    gpt->batch_size = gpt->seq_len = 0;
}

/* What gpt2_forward allocates on its first call (and gpt2_backward on its first, once gradients exist),
 * for B, T, zeroed (see the top of this file). */
static void allocate_activations(GPT2* gpt, int B, int T) {
    free_activations(gpt);
    gpt->batch_size = B;
    gpt->seq_len = T;
    fill_in_activation_sizes(gpt->act_sizes, B, T, gpt->config);
    gpt->num_activations = 0;
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) gpt->num_activations += gpt->act_sizes[i];
    gpt->acts_memory = malloc_and_point_activations(&gpt->acts, gpt->act_sizes);
    adapter_cuda(cudaMemset(gpt->acts_memory, 0, gpt->num_activations * sizeof(float)));
    adapter_cuda(cudaMalloc((void**)&gpt->inputs, (size_t)B * T * sizeof(int)));
    adapter_cuda(cudaMalloc((void**)&gpt->targets, (size_t)B * T * sizeof(int)));
    adapter_cuda(cudaMallocHost((void**)&gpt->cpu_losses, (size_t)B * T * sizeof(float)));
    if (gpt->grads_memory != NULL) {
        size_t sizes[NUM_BACKWARD_TENSORS];
        GPT2Config one_layer = gpt->config;
        one_layer.num_layers = 1;
        fill_in_grad_act_sizes(sizes, B, T, one_layer);
        gpt->grads_acts_memory = malloc_and_point_backward(&gpt->grads_acts, sizes);
        gpt->num_grad_acts = 0;
        for (int i = 0; i < NUM_BACKWARD_TENSORS; i++) gpt->num_grad_acts += sizes[i];
        adapter_cuda(cudaMemset(gpt->grads_acts_memory, 0, gpt->num_grad_acts * sizeof(float)));
    }
}

static void release(llmc_model* model) {
    try {
        gpt2_free(&model->gpt);
    } catch (const LlmcExit&) {}
    cudaFree(model->logits);
    delete model;
}

/* A model of config c from params (fp32, llm.c's order), built as gpt2_build_from_checkpoint builds one. */
static int create_model(const llmc_config* c, const float* params, int max_B, int max_T, llmc_model** out,
                        const char* what) {
    int rc = llmc_check_model_size(c, max_B, max_T);
    if (rc == LLMC_OK) rc = check_llmc_sizes(c, max_B, max_T, c->num_layers, what);
    if (rc == LLMC_OK) rc = check_llmc_config(c, what);
    if (rc == LLMC_OK) rc = llmc_init();
    if (rc) return rc;
    llmc_model* model = new (std::nothrow) llmc_model();
    if (model == NULL) return llmc_fail(LLMC_ERR_ALLOC, "%s: out of host memory", what);
    GPT2* gpt = &model->gpt;
    rc = guarded(what, [&] {
        gpt->config.max_seq_len = c->max_seq_len;
        gpt->config.vocab_size = c->vocab_size;
        gpt->config.padded_vocab_size = c->padded_vocab_size;
        gpt->config.num_layers = c->num_layers;
        gpt->config.num_heads = c->num_heads;
        gpt->config.channels = c->channels;
        int fits = check_device_memory(device_bytes(c, gpt->config, max_B, max_T), max_B, max_T, what);
        if (fits != LLMC_OK) return fits;
        fill_in_parameter_sizes(gpt->param_sizes, gpt->config);
        gpt->num_parameters = llmc_num_parameters(c);
        gpt->params_memory = malloc_and_point_parameters(&gpt->params, gpt->param_sizes, 1);
        adapter_cuda(
            cudaMemcpy(gpt->params_memory, params, gpt->num_parameters * sizeof(float), cudaMemcpyHostToDevice));
        gpt->mean_loss = -1.0f; // the rest of what gpt2_build_from_checkpoint sets is zero / NULL
        size_t logits = (size_t)max_B * max_T * c->padded_vocab_size;
        adapter_cuda(cudaMalloc((void**)&model->logits, logits * sizeof(float)));
        model->max_B = max_B;
        model->max_T = max_T;
        return llmc_ok();
    });
    if (rc) {
        release(model);
        return rc;
    }
    *out = model;
    return LLMC_OK;
}

LLMC_API int llmc_model_from_params(const llmc_config* config, const float* params, int max_B, int max_T,
                                    llmc_model** out) {
    if (config == NULL || params == NULL || out == NULL)
        return llmc_fail(LLMC_ERR_ARGUMENT, "model_from_params: NULL argument");
    *out = NULL;
    int rc = llmc_check_config(config, NULL);
    if (rc) return rc;
    return create_model(config, params, max_B, max_T, out, "model_from_params");
}

/* Read by the core's reader (llm.c's gpt2_build_from_checkpoint exits on a bad file and checks neither
 * its size nor its values), version 3 only: train_gpt2_fp32.cu reads no other. */
LLMC_API int llmc_model_from_checkpoint(const char* path, int max_B, int max_T, llmc_model** out) {
    if (path == NULL || out == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "model_from_checkpoint: NULL argument");
    *out = NULL;
    llmc_checkpoint ck;
    int rc = llmc_checkpoint_open(path, &ck);
    if (rc) return rc;
    if (ck.version != 3) {
        llmc_checkpoint_close(&ck);
        return llmc_fail(LLMC_ERR_UNSUPPORTED,
                         "checkpoint '%s': version %d (bf16); llm.c's train_gpt2_fp32.cu reads "
                         "only version 3 (fp32)",
                         path, ck.version);
    }
    std::vector<float> params;
    if ((rc = read_checkpoint_params(&ck, path, &params))) return rc;
    return create_model(&ck.config, params.data(), max_B, max_T, out, "model_from_checkpoint");
}

LLMC_API void llmc_model_free(llmc_model* model) {
    if (model != NULL) release(model);
}

LLMC_API int llmc_model_config(const llmc_model* model, llmc_config* out) { return model_config(model, out); }

LLMC_API size_t llmc_model_num_parameters(const llmc_model* model) {
    return model == NULL ? 0 : model->gpt.num_parameters;
}

/* ----------------------------------------------------------------------------- training */
LLMC_API int llmc_forward(llmc_model* model, const int* inputs, const int* targets, int B, int T, float* mean_loss) {
    int rc = check_forward(model, inputs, targets, B, T);
    if (rc) return rc;
    GPT2* gpt = &model->gpt;
    const GPT2Config* c = &gpt->config;
    if (B * T % MATMUL_TILE)
        return llmc_fail(LLMC_ERR_UNSUPPORTED,
                         "forward: B*T = %d; llm.c's matmul_forward_kernel4 needs a multiple of "
                         "%d (its unchecked row tiles)",
                         B * T, MATMUL_TILE);
    rc = guarded("forward", [&] {
        if (gpt->acts_memory == NULL || B != gpt->batch_size || T != gpt->seq_len) allocate_activations(gpt, B, T);
        model->inputs.assign(inputs, inputs + (size_t)B * T);
        gpt2_forward(gpt, model->inputs.data(), NULL, B, T);
        size_t logits = (size_t)B * T * c->padded_vocab_size;
        adapter_cuda(cudaMemcpy(model->logits, gpt->acts.output, logits * sizeof(float), cudaMemcpyDeviceToDevice));
        if (targets != NULL) {
            model->targets.assign(targets, targets + (size_t)B * T);
            gpt2_forward(gpt, model->inputs.data(), model->targets.data(), B, T);
        }
        model->B = B;
        model->T = T;
        model->forward_has_targets = targets != NULL;
        if (mean_loss != NULL) *mean_loss = gpt->mean_loss;
        return llmc_ok();
    });
    if (rc) { // whatever was allocated, or is half done, gets allocated again by the next forward
        free_activations(gpt);
        model->T = 0;
        model->forward_has_targets = false;
    }
    return rc;
}

LLMC_API int llmc_zero_grad(llmc_model* model) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "zero_grad: NULL model");
    return guarded("zero_grad", [&] {
        gpt2_zero_grad(&model->gpt);
        return llmc_ok();
    });
}

LLMC_API int llmc_backward(llmc_model* model) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "backward: NULL model");
    if (!model->forward_has_targets)
        return llmc_fail(LLMC_ERR_STATE,
                         "backward: needs a forward with targets first (llm.c's backward uses up "
                         "its forward's activations: one backward per forward)");
    GPT2* gpt = &model->gpt;
    model->forward_has_targets = false; // consumed, whether or not the backward succeeds
    return guarded("backward", [&] {
        if (gpt->grads_acts_memory != NULL)
            adapter_cuda(cudaMemset(gpt->grads_acts_memory, 0, gpt->num_grad_acts * sizeof(float)));
        gpt2_backward(gpt);
        model->backward_done = true;
        return llmc_ok();
    });
}

LLMC_API int llmc_update(llmc_model* model, const llmc_adamw* opt, int t, float* grad_norm) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "update: NULL model");
    int rc = llmc_check_update(opt, t);
    if (rc) return rc;
    if (!opt->decay_all && opt->weight_decay != 0.0f)
        return llmc_fail(LLMC_ERR_UNSUPPORTED,
                         "update: llm.c's train_gpt2_fp32.cu gpt2_update decays every "
                         "parameter (decay_all = 1)");
    if (opt->grad_clip > 0.0f)
        return llmc_fail(LLMC_ERR_UNSUPPORTED,
                         "update: llm.c's train_gpt2_fp32.cu gpt2_update does not clip "
                         "gradients");
    if (!model->backward_done) return llmc_fail(LLMC_ERR_STATE, "update: needs a backward first");
    GPT2* gpt = &model->gpt;
    return guarded("update", [&] {
        std::vector<float> grads(gpt->num_parameters);
        adapter_cuda(cudaMemcpy(grads.data(), gpt->grads_memory, grads.size() * sizeof(float), cudaMemcpyDeviceToHost));
        double sum = 0.0;
        for (float g : grads) sum += (double)g * g;
        gpt2_update(gpt, opt->learning_rate, opt->beta1, opt->beta2, opt->eps, opt->weight_decay, t);
        adapter_cuda(cudaDeviceSynchronize());
        if (grad_norm != NULL) *grad_norm = (float)sqrt(sum);
        return llmc_ok();
    });
}

/* ----------------------------------------------------------------------------- copies */
/* n floats from the device, or zeros where llm.c has not allocated src yet (its lazily allocated
 * gradients and AdamW state start at zero) */
static int copy_out(const float* src, float* dst, size_t n, const char* what) {
    if (dst == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "%s: NULL destination", what);
    return guarded(what, [&] {
        if (src == NULL)
            memset(dst, 0, n * sizeof(float));
        else
            adapter_cuda(cudaMemcpy(dst, src, n * sizeof(float), cudaMemcpyDeviceToHost));
        return llmc_ok();
    });
}

LLMC_API int llmc_get_params(const llmc_model* model, float* dst) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "get_params: NULL model");
    return copy_out(model->gpt.params_memory, dst, model->gpt.num_parameters, "get_params");
}

LLMC_API int llmc_set_params(llmc_model* model, const float* src) {
    if (model == NULL || src == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "set_params: NULL argument");
    return guarded("set_params", [&] {
        adapter_cuda(cudaMemcpy(model->gpt.params_memory, src, model->gpt.num_parameters * sizeof(float),
                                cudaMemcpyHostToDevice));
        return llmc_ok();
    });
}

LLMC_API int llmc_get_grads(const llmc_model* model, float* dst) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "get_grads: NULL model");
    return copy_out(model->gpt.grads_memory, dst, model->gpt.num_parameters, "get_grads");
}

LLMC_API int llmc_get_logits(const llmc_model* model, float* dst) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "get_logits: NULL model");
    if (model->T == 0) return llmc_fail(LLMC_ERR_STATE, "get_logits: no forward yet");
    size_t n = (size_t)model->B * model->T * model->gpt.config.padded_vocab_size;
    return copy_out(model->logits, dst, n, "get_logits");
}

LLMC_API int llmc_get_optimizer_state(const llmc_model* model, float* m, float* v) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "get_optimizer_state: NULL model");
    int rc = copy_out(model->gpt.m_memory, m, model->gpt.num_parameters, "get_optimizer_state");
    if (rc) return rc;
    return copy_out(model->gpt.v_memory, v, model->gpt.num_parameters, "get_optimizer_state");
}

LLMC_API int llmc_set_optimizer_state(llmc_model* model, const float* m, const float* v) {
    if (model == NULL || m == NULL || v == NULL)
        return llmc_fail(LLMC_ERR_ARGUMENT, "set_optimizer_state: NULL argument");
    GPT2* gpt = &model->gpt;
    const size_t bytes = gpt->num_parameters * sizeof(float);
    return guarded("set_optimizer_state", [&] {
        if (gpt->m_memory == NULL) { // gpt2_update allocates them lazily, both or neither, and keeps them
            float *m_memory, *v_memory;
            adapter_cuda(cudaMalloc((void**)&m_memory, bytes));
            if (cudaMalloc((void**)&v_memory, bytes) != cudaSuccess) {
                cudaFree(m_memory);
                throw LlmcExit{EXIT_FAILURE};
            }
            gpt->m_memory = m_memory;
            gpt->v_memory = v_memory;
        }
        adapter_cuda(cudaMemcpy(gpt->m_memory, m, bytes, cudaMemcpyHostToDevice));
        adapter_cuda(cudaMemcpy(gpt->v_memory, v, bytes, cudaMemcpyHostToDevice));
        return llmc_ok();
    });
}
