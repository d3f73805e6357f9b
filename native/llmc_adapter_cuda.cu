/* libllmc's model API (llmc.h) on top of llm.c's own train_gpt2.cu, bf16 mixed precision (llm.c's default
 * build), so the suite can judge llm.c's main CUDA program. Its fp32 sibling is llmc_adapter_cuda_fp32.cu;
 * what the two share (llm.c's exit() turned into error codes, llm.c's limits) is llmc_adapter_cuda.cuh; the
 * error state, the argument checks and the checkpoint reader are libllmc's host C core (native/core).
 *
 * Built by tools/validate_llmc.py --cuda against an llm.c checkout (or the CUDA stand-in in tests/standin_llmc):
 *     cc -std=gnu11 -O2 -fPIC -c native/core/{checkpoint,checks,errors}.c
 *     nvcc -O3 --use_fast_math -std=c++17 -DENABLE_BF16 -shared -Xcompiler -fPIC,-fvisibility=hidden \
 *          -I native -I LLMC_DIR native/llmc_adapter_cuda.cu checkpoint.o checks.o errors.o \
 *          -o libllmc_llmc_cuda_bf16.so -lcublas -lcublasLt
 * and driven as the backend "lib:PATH", judged under the bf16 precision class. It exports the llmc_* API
 * only: llm.c's CUDA kernels take device pointers, so none is one of llmc.h's host kernels.
 *
 * The model is llm.c's as its training loop runs it (gpt2_init_common's settings: fp32 master weights,
 * GELU recomputed in the backward, no cuBLASLt GELU fusion, stochastic rounding of the bf16 weights):
 *   forward with targets   gpt2_validate (forward, then the fused classifier's loss without its gradient)
 *   forward without        gpt2_forward
 *   backward               gpt2_backward_and_reduce(inputs, targets, grad_accum_steps 1, micro_step 0)
 *   update                 gpt2_calculate_grad_norm, then gpt2_update with grad_scale = clip / norm where
 *                          the norm exceeds the clip (llm.c's main), weight decay on the 2-D tensors only.
 * What the adapter supplies, without touching llm.c's math:
 *   - a model from fp32 parameters: its bf16 weights are rounded to nearest even (what llm.c's
 *     train_gpt2.py does writing gpt2_124M_bf16.bin) and its fp32 master weights are the parameters
 *     themselves (what llm.c's load_state restores); a checkpoint is read by the core's reader, so a v5
 *     one gives the weights llm.c reads and master weights that are their exact widening (what
 *     gpt2_update's first call would make of them), and a v3 (fp32) one, which llm.c's bf16 build
 *     refuses with exit(), is rounded as above;
 *   - B, T below the sizes the activations were allocated for, in forward and backward alike: llm.c's
 *     passes are sized by model->batch_size / seq_len, so these are set to the forward's B and T, and the
 *     attention buffer is zeroed when T changes (llm.c zeroes it where T differs from seq_len: its
 *     softmax writes only the causal triangle);
 *   - logits that outlive the backward: llm.c turns them into their gradient in place and reuses the
 *     buffer as scratch, so every forward's (B,T,Vp) logits are copied aside on the device;
 *   - parameters read from the fp32 master weights, gradients and logits widened from bf16.
 * What llm.c cannot do is LLMC_ERR_UNSUPPORTED, with the reason: precision modes other than bf16;
 * weight decay on every tensor (decay_all = 1 with weight_decay != 0); a second backward that
 * accumulates into gradients not zeroed since the last (llm.c accumulates only over the micro-steps of
 * one batch, scaling the loss by 1 / grad_accum_steps); shapes llm.c's kernels do not handle (below), and
 * small-vocabulary models on which llm.c's reductions would overrun its scratch buffer (check_llmc_scratch).
 */
#define LLMC_TRAIN_SOURCE "train_gpt2.cu"
#include "llmc_adapter_cuda.cuh"

/* llm.c's kernels load 8 bf16 values at a time (x128) and assume the shapes llm.c trains. */
#define X128_ELEMS 8           /* x128::size for bf16 */
#define GELU_ELEMS (512 * 8)   /* gelu_forward: N % (block_size * x128::size) == 0 */
#define MAX_TOKEN_ID (1 << 20) /* encoder_backward packs token ids into 20 bits */

struct llmc_abi::llmc_model {
    GPT2 gpt;
    int max_B, max_T;                 // what the activations were allocated for
    int B, T;                         // the last forward's; 0 before the first
    bool forward_has_targets;         // the last forward had targets and no backward has consumed it since
    bool grads_zero;                  // no backward since the gradients were last zeroed
    bool backward_done;               // a backward has run: update has gradients
    std::vector<int> inputs, targets; // the last forward's tokens: llm.c's backward takes them from the host
    floatX* logits;                   // (max_B, max_T, Vp) device copy of the last forward's logits
};

static char build_info[512] =
    "llm.c train_gpt2.cu (-DTESTING -DENABLE_BF16: bf16 weights and activations, fp32 "
    "master weights and AdamW state) through native/llmc_adapter_cuda.cu, nvcc " LLMC_STRINGIFY(
        __CUDACC_VER_MAJOR__) "." LLMC_STRINGIFY(__CUDACC_VER_MINOR__) ", llm.c source " LLMC_SOURCE_ID;
static bool initialized = false;
static cudaDeviceProp device; // llm.c sizes its reductions' grids by the device (deviceProp)

/* ----------------------------------------------------------------------------- library */
LLMC_API const char* llmc_backend_name(void) { return "llm.c-cuda-bf16"; }
LLMC_API const char* llmc_build_info(void) { return build_info; }

LLMC_API int llmc_init(void) {
    if (initialized) return llmc_ok();
    int rc = require_device("init");
    if (rc) return rc;
    return guarded("init", [] {
        char none[] = ""; // server, file system and init method: unused without MULTI_GPU
        multi_gpu_config = multi_gpu_config_init(1, 0, 1, none, none, none);
        common_start(true, false); // device 0, main_stream, cuBLASLt handle and workspace
        adapter_cuda(cudaGetDeviceProperties(&device, 0));
        size_t used = strlen(build_info);
        snprintf(build_info + used, sizeof(build_info) - used, ", cuBLASLt %zu, %s (sm_%d%d, %d SMs)",
                 cublasLtGetVersion(), device.name, device.major, device.minor, device.multiProcessorCount);
        initialized = true;
        return llmc_ok();
    });
}

LLMC_API int llmc_set_precision(int mode) {
    if (mode == 2) return llmc_ok();
    if (mode == 0 || mode == 1)
        return llmc_fail(LLMC_ERR_UNSUPPORTED,
                         "set_precision: llm.c's train_gpt2.cu is built for bf16 (mode 2); "
                         "its fp32 / TF32 program is train_gpt2_fp32.cu (llmc_adapter_cuda_fp32.cu)");
    return llmc_fail(LLMC_ERR_ARGUMENT, "set_precision: mode %d, expected 2 (bf16)", mode);
}

/* ----------------------------------------------------------------------------- host <-> device */
/* llm.c's one model at a time: its ZeRO bookkeeping (single GPU: stage 0) sizes the optimizer's shard
 * from a global; set_zero_configs(&multi_gpu_config, 0, n) does this, printing a banner each time. */
static void select_model(llmc_model* model) {
    multi_gpu_config.zero_stage = 0;
    multi_gpu_config.shard_num_parameters = model->gpt.num_parameters;
}

static void copy_widened(float* dst, const floatX* device_src, size_t n) {
    std::vector<floatX> host(n);
    adapter_cuda(cudaMemcpy(host.data(), device_src, n * sizeof(floatX), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) dst[i] = __bfloat162float(host[i]);
}

/* params -> the bf16 weights (rounded to nearest even) and the fp32 master weights (exact) */
static void write_params(GPT2* gpt, const float* params) {
    const size_t n = gpt->num_parameters;
    std::vector<floatX> rounded(n);
    for (size_t i = 0; i < n; i++) rounded[i] = __float2bfloat16_rn(params[i]);
    adapter_cuda(cudaMemcpy(gpt->params_memory, rounded.data(), n * sizeof(floatX), cudaMemcpyHostToDevice));
    adapter_cuda(cudaMemcpy(gpt->master_weights, params, n * sizeof(float), cudaMemcpyHostToDevice));
}

/* ----------------------------------------------------------------------------- model */
/* What llm.c's kernels need of a config; anything else is refused before llm.c sees it. */
static int check_llmc_config(const llmc_config* c, const char* where) {
    if (c->channels % X128_ELEMS || c->padded_vocab_size % X128_ELEMS)
        return llmc_fail(LLMC_ERR_UNSUPPORTED,
                         "%s: llm.c's train_gpt2.cu needs channels (%d) and padded_vocab_size "
                         "(%d) to be multiples of %d (its kernels load 16-byte vectors of bf16)",
                         where, c->channels, c->padded_vocab_size, X128_ELEMS);
    const double largest = std::max((double)c->padded_vocab_size, 4.0 * c->channels) * c->channels;
    if (largest > INT_MAX)
        return llmc_fail(LLMC_ERR_UNSUPPORTED,
                         "%s: a parameter tensor of %.0f elements; llm.c's AdamW kernel "
                         "indexes one (one layer's) tensor with int",
                         where, largest);
    if (c->vocab_size > MAX_TOKEN_ID)
        return llmc_fail(LLMC_ERR_UNSUPPORTED,
                         "%s: vocab_size %d is beyond llm.c's encoder_backward, which packs "
                         "token ids into 20 bits",
                         where, c->vocab_size);
    return LLMC_OK;
}

/* llm.c's backward and update keep partial sums in acts.output, its (B, T, max(3C, NH*T, Vp)) bf16 scratch
 * buffer, in amounts set by the GPU's size, not by B and T: layernorm_backward (32 + 2C floats per block,
 * 2 blocks per SM), matmul_backward's bias (grid_y * OC floats, where grid_y fills the GPU), the global
 * norm (one float per block). Where B*T*Vp is small (a small vocabulary) they overrun the buffer into
 * the activation gradients the same kernels read and write, or past the allocation; llm.c's GPT-2 runs
 * (Vp 50304) are far from it. Such a model is refused, saying by how much, instead of computed wrong. */
static int check_llmc_scratch(const llmc_config* c, int max_B, int max_T, const char* where) {
    const size_t SMs = device.multiProcessorCount, threads = (size_t)device.maxThreadsPerMultiProcessor * SMs;
    const size_t C = c->channels;
    size_t needed = 32 + 2 * C * 2 * SMs; // layernorm_backward
    const char* by = "layernorm_backward's per-block partial sums";
    const size_t bias_block = device.maxThreadsPerMultiProcessor == 1536 ? 768 : 1024;
    for (size_t OC : {C, 3 * C, 4 * C}) { // matmul_backward_bias_kernel9: 64 output channels per warp row
        size_t grid_x = (OC + 63) / 64, grid_y = std::max<size_t>(1, threads / (bias_block * grid_x));
        if (grid_y > 1 && grid_y * OC > needed) {
            needed = grid_y * OC;
            by = "matmul_backward's bias partial sums";
        }
    }
    const size_t norm_grid = threads / 512, L = c->num_layers; // get_max_num_block_sums: slices 1 and L
    const size_t norm_blocks = std::max(norm_grid, (norm_grid + L - 1) / L * L);
    if (norm_blocks > needed) {
        needed = norm_blocks;
        by = "the gradient norm's block sums";
    }
    const size_t width = std::max({3 * C, (size_t)c->num_heads * max_T, (size_t)c->padded_vocab_size});
    const size_t available = (size_t)max_B * max_T * width * sizeof(floatX) / sizeof(float);
    if (needed > available)
        return llmc_fail(LLMC_ERR_UNSUPPORTED,
                         "%s: llm.c would write %zu floats (%s, on this GPU's %zu SMs) into "
                         "its scratch buffer acts.output, which holds %zu at max_B = %d, max_T = %d, padded_vocab_size "
                         "= %d: past its end, into the activation gradients",
                         where, needed, by, SMs, available, max_B, max_T, c->padded_vocab_size);
    return LLMC_OK;
}

/* Bytes the model needs on the device up front: bf16 weights and gradients, llm.c's activations for
 * max_B x max_T, the adapter's logits copy. The fp32 master weights and AdamW state are left out: llm.c
 * places them in managed memory when the device is full (cudaMallocConditionallyManaged). */
static size_t device_bytes(const llmc_config* c, GPT2Config config, int recompute, int max_B, int max_T) {
    ActivationTensors shapes;
    TensorSpec specs[NUM_ACTIVATION_TENSORS];
    fill_in_activation_sizes(&shapes, specs, max_B, max_T, config, recompute);
    size_t bytes = 2 * llmc_num_parameters(c) * sizeof(floatX);
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) bytes += specs[i].size * sizeof_dtype(specs[i].type);
    return bytes + (size_t)max_B * max_T * (c->padded_vocab_size * sizeof(floatX) + 2 * sizeof(int));
}

/* llm.c's gradients, activations and AdamW state for max_B x max_T, and the adapter's logits copy. */
static void allocate_state(llmc_model* model, int max_B, int max_T) {
    GPT2* gpt = &model->gpt;
    select_model(model);
    gpt2_allocate_state(gpt, max_B, max_T);
    adapter_cuda(cudaMemset(gpt->grads_memory, 0, gpt->num_parameters_bytes));
    adapter_cuda(cudaMemset(gpt->m_memory, 0, gpt->num_parameters * sizeof(float)));
    adapter_cuda(cudaMemset(gpt->v_memory, 0, gpt->num_parameters * sizeof(float)));
    gpt->init_state = false; // m and v are zero, and the adapter writes the master weights itself
    size_t logits = (size_t)max_B * max_T * gpt->config.padded_vocab_size;
    adapter_cuda(cudaMalloc((void**)&model->logits, logits * sizeof(floatX)));
    model->max_B = max_B;
    model->max_T = max_T;
    model->grads_zero = true;
}

/* Frees what llm.c and the adapter allocated. After a CUDA error freeing may fail too: what is left goes
 * with the context. */
static void release(llmc_model* model) {
    try {
        gpt2_free(&model->gpt);
    } catch (const LlmcExit&) {}
    cudaFree(model->logits);
    delete model;
}

/* A model of config c from params (fp32, llm.c's order): llm.c's allocators, the adapter's weights. */
static int create_model(const llmc_config* c, const float* params, int max_B, int max_T, llmc_model** out,
                        const char* what) {
    int rc = llmc_check_model_size(c, max_B, max_T);
    if (rc == LLMC_OK) rc = check_llmc_sizes(c, max_B, max_T, 1, what);
    if (rc == LLMC_OK) rc = check_llmc_config(c, what);
    if (rc == LLMC_OK) rc = llmc_init();
    if (rc == LLMC_OK) rc = check_llmc_scratch(c, max_B, max_T, what);
    if (rc) return rc;
    llmc_model* model = new (std::nothrow) llmc_model();
    if (model == NULL) return llmc_fail(LLMC_ERR_ALLOC, "%s: out of host memory", what);
    GPT2* gpt = &model->gpt;
    rc = guarded(what, [&] {
        gpt2_init_common(gpt);
        gpt->config.max_seq_len = c->max_seq_len;
        gpt->config.vocab_size = c->vocab_size;
        gpt->config.padded_vocab_size = c->padded_vocab_size;
        gpt->config.num_layers = c->num_layers;
        gpt->config.num_heads = c->num_heads;
        gpt->config.channels = c->channels;
        int fits = check_device_memory(device_bytes(c, gpt->config, gpt->recompute, max_B, max_T), max_B, max_T, what);
        if (fits != LLMC_OK) return fits;
        gpt2_allocate_weights(gpt);
        allocate_state(model, max_B, max_T);
        write_params(gpt, params);
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

/* Read by the core's reader, v5 (bf16, widened exactly) and v3 (fp32) alike: from v5 this gives the weights
 * llm.c's gpt2_build_from_checkpoint loads (rounding a widened bf16 gives it back) and the master weights
 * gpt2_update's first call would make of them; v3, which llm.c's bf16 build refuses with exit(), is rounded
 * as llm.c's train_gpt2.py rounds it writing the bf16 file. */
LLMC_API int llmc_model_from_checkpoint(const char* path, int max_B, int max_T, llmc_model** out) {
    if (path == NULL || out == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "model_from_checkpoint: NULL argument");
    *out = NULL;
    llmc_checkpoint ck;
    int rc = llmc_checkpoint_open(path, &ck);
    if (rc) return rc;
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
    if ((size_t)B * T * 4 * c->channels % GELU_ELEMS)
        return llmc_fail(LLMC_ERR_UNSUPPORTED, "forward: B*T*4C = %zu; llm.c's gelu_forward needs a multiple of %d",
                         (size_t)B * T * 4 * c->channels, GELU_ELEMS);
    const bool new_layout = T != model->T;
    model->T = 0; // until this forward succeeds: no logits, and the next forward zeroes the attention buffer
    model->forward_has_targets = false;
    return guarded("forward", [&] {
        select_model(model);
        if (new_layout) { // the attention buffer's upper triangles must be zero for this T's layout
            size_t att = (size_t)c->num_layers * model->max_B * c->num_heads * model->max_T * model->max_T;
            adapter_cuda(cudaMemset(gpt->acts.att, 0, att * sizeof(floatX)));
        }
        gpt->batch_size = B;
        gpt->seq_len = T;
        model->inputs.assign(inputs, inputs + (size_t)B * T);
        float loss = -1.0f;
        if (targets != NULL) {
            model->targets.assign(targets, targets + (size_t)B * T);
            loss = gpt2_validate(gpt, model->inputs.data(), model->targets.data(), B, T);
        } else {
            gpt2_forward(gpt, model->inputs.data(), B, T);
        }
        size_t logits = (size_t)B * T * c->padded_vocab_size;
        adapter_cuda(cudaMemcpy(model->logits, gpt->acts.output, logits * sizeof(floatX), cudaMemcpyDeviceToDevice));
        model->B = B;
        model->T = T;
        model->forward_has_targets = targets != NULL;
        if (mean_loss != NULL) *mean_loss = loss;
        return llmc_ok();
    });
}

LLMC_API int llmc_zero_grad(llmc_model* model) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "zero_grad: NULL model");
    return guarded("zero_grad", [&] {
        adapter_cuda(cudaMemset(model->gpt.grads_memory, 0, model->gpt.num_parameters_bytes));
        model->grads_zero = true;
        return llmc_ok();
    });
}

LLMC_API int llmc_backward(llmc_model* model) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "backward: NULL model");
    if (!model->forward_has_targets)
        return llmc_fail(LLMC_ERR_STATE,
                         "backward: needs a forward with targets first (llm.c's backward uses up "
                         "its forward's activations: one backward per forward)");
    if (!model->grads_zero)
        return llmc_fail(LLMC_ERR_UNSUPPORTED,
                         "backward: llm.c's gpt2_backward_and_reduce starts from zero "
                         "gradients (it accumulates only over the micro-steps of one batch, whose loss it scales "
                         "by 1/grad_accum_steps): zero_grad first");
    model->forward_has_targets = false; // consumed, whether or not the backward succeeds
    model->grads_zero = false;
    return guarded("backward", [&] {
        select_model(model);
        gpt2_backward_and_reduce(&model->gpt, model->inputs.data(), model->targets.data(), 1, 0);
        model->backward_done = true;
        return llmc_ok();
    });
}

LLMC_API int llmc_update(llmc_model* model, const llmc_adamw* opt, int t, float* grad_norm) {
    if (model == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "update: NULL model");
    int rc = llmc_check_update(opt, t);
    if (rc) return rc;
    if (opt->decay_all && opt->weight_decay != 0.0f)
        return llmc_fail(LLMC_ERR_UNSUPPORTED,
                         "update: llm.c's gpt2_update decays only the 2-D tensors (wte, wpe "
                         "and the matmul weights), not every parameter (decay_all = 1)");
    if (!model->backward_done) return llmc_fail(LLMC_ERR_STATE, "update: needs a backward first");
    return guarded("update", [&] {
        select_model(model);
        float norm = gpt2_calculate_grad_norm(&model->gpt, &multi_gpu_config);
        float grad_scale = (opt->grad_clip > 0.0f && norm > opt->grad_clip) ? opt->grad_clip / norm : 1.0f;
        gpt2_update(&model->gpt, opt->learning_rate, opt->beta1, opt->beta2, opt->eps, opt->weight_decay, grad_scale, t,
                    &multi_gpu_config);
        if (grad_norm != NULL) *grad_norm = norm;
        return llmc_ok();
    });
}

/* ----------------------------------------------------------------------------- copies */
LLMC_API int llmc_get_params(const llmc_model* model, float* dst) {
    if (model == NULL || dst == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "get_params: NULL argument");
    return guarded("get_params", [&] {
        adapter_cuda(cudaMemcpy(dst, model->gpt.master_weights, model->gpt.num_parameters * sizeof(float),
                                cudaMemcpyDeviceToHost));
        return llmc_ok();
    });
}

LLMC_API int llmc_set_params(llmc_model* model, const float* src) {
    if (model == NULL || src == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "set_params: NULL argument");
    return guarded("set_params", [&] {
        write_params(&model->gpt, src);
        return llmc_ok();
    });
}

LLMC_API int llmc_get_grads(const llmc_model* model, float* dst) {
    if (model == NULL || dst == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "get_grads: NULL argument");
    return guarded("get_grads", [&] {
        copy_widened(dst, (const floatX*)model->gpt.grads_memory, model->gpt.num_parameters);
        return llmc_ok();
    });
}

LLMC_API int llmc_get_logits(const llmc_model* model, float* dst) {
    if (model == NULL || dst == NULL) return llmc_fail(LLMC_ERR_ARGUMENT, "get_logits: NULL argument");
    if (model->T == 0) return llmc_fail(LLMC_ERR_STATE, "get_logits: no forward yet");
    return guarded("get_logits", [&] {
        copy_widened(dst, model->logits, (size_t)model->B * model->T * model->gpt.config.padded_vocab_size);
        return llmc_ok();
    });
}

LLMC_API int llmc_get_optimizer_state(const llmc_model* model, float* m, float* v) {
    if (model == NULL || m == NULL || v == NULL)
        return llmc_fail(LLMC_ERR_ARGUMENT, "get_optimizer_state: NULL argument");
    const size_t bytes = model->gpt.num_parameters * sizeof(float);
    return guarded("get_optimizer_state", [&] {
        adapter_cuda(cudaMemcpy(m, model->gpt.m_memory, bytes, cudaMemcpyDeviceToHost));
        adapter_cuda(cudaMemcpy(v, model->gpt.v_memory, bytes, cudaMemcpyDeviceToHost));
        return llmc_ok();
    });
}

LLMC_API int llmc_set_optimizer_state(llmc_model* model, const float* m, const float* v) {
    if (model == NULL || m == NULL || v == NULL)
        return llmc_fail(LLMC_ERR_ARGUMENT, "set_optimizer_state: NULL argument");
    const size_t bytes = model->gpt.num_parameters * sizeof(float);
    return guarded("set_optimizer_state", [&] {
        adapter_cuda(cudaMemcpy(model->gpt.m_memory, m, bytes, cudaMemcpyHostToDevice));
        adapter_cuda(cudaMemcpy(model->gpt.v_memory, v, bytes, cudaMemcpyHostToDevice));
        return llmc_ok();
    });
}
