/* libllmc: the one C ABI of the CPU library (libllmc_cpu.so) and the CUDA library (libllmc_cuda.so).
 *
 * Two levels, as in llm.c's train_gpt2.c:
 *  - layer kernels with llm.c's exact CPU signatures (host pointers, void, gradients accumulate with +=),
 *    so the same Python kernel tests drive our libraries and llm.c's own train_gpt2.c built as a shared
 *    library. The CUDA library's kernels also take host pointers: they copy in, run on the GPU, copy out.
 *    Kernels trust their arguments (the binding validates shapes first); a CUDA failure inside one is
 *    reported by llmc_last_error_code().
 *  - a model API that never ends the process: every call returns LLMC_OK or an error code, and
 *    llmc_last_error() holds a message naming what was wrong.
 *
 * The Python binding (native/binding.py) reads its cdef from this file: everything between the
 * LLMC_CDEF_BEGIN and LLMC_CDEF_END markers must be plain declarations cffi can parse.
 */
#ifndef LLMC_H
#define LLMC_H
#include <stddef.h>
#ifdef __cplusplus
extern "C" {
#endif

/* the declarations and their comments are aligned by hand, a table to read */
/* clang-format off */
/* LLMC_CDEF_BEGIN */
enum {
    LLMC_OK = 0,
    LLMC_ERR_ARGUMENT = 1,    /* a NULL pointer, B or T beyond what the model was sized for, bad option */
    LLMC_ERR_FILE = 2,        /* cannot open / read / short read */
    LLMC_ERR_FORMAT = 3,      /* wrong magic, version, header field or file size */
    LLMC_ERR_ALLOC = 4,       /* out of host or device memory */
    LLMC_ERR_TOKEN = 5,       /* a token id outside [0, V) */
    LLMC_ERR_STATE = 6,       /* e.g. backward without a forward with targets */
    LLMC_ERR_DEVICE = 7,      /* a CUDA or cuBLAS call failed */
    LLMC_ERR_UNSUPPORTED = 8, /* e.g. TF32 on the CPU library; the suite skips what needs it, with the message */
    LLMC_ERR_INTERNAL = 9     /* the implementation failed internally (a bug, an exception of a port's own
                                 runtime caught at the boundary): an error of the check, never a skip */
};

typedef struct {
    int max_seq_len;        /* maxT */
    int vocab_size;         /* V */
    int padded_vocab_size;  /* Vp */
    int num_layers;         /* L */
    int num_heads;          /* NH */
    int channels;           /* C */
} llmc_config;

typedef struct {
    float learning_rate;
    float beta1;
    float beta2;
    float eps;
    float weight_decay;
    int decay_all;          /* 1: llm.c CPU (decay every parameter); 0: PyTorch / llm.c CUDA (2-D tensors only) */
    float grad_clip;        /* global-norm clipping threshold; <= 0 means no clipping */
} llmc_adamw;

typedef struct llmc_model llmc_model;

/* Library identity and settings. A port exports what it has: the suite judges every function here that a
 * library exports and skips, naming it, what needs one it does not (PORTING.md). */
const char* llmc_backend_name(void);           /* the implementation's own name, shown in reports: ours say "cpu"
                                                  or "cuda", a port its own ("llm.c", "myport"), not ours */
const char* llmc_build_info(void);             /* compiler, BLAS / cuBLAS it linked, OpenMP, arch */
int llmc_set_num_threads(int n);               /* n >= 1. CPU: the OpenMP threads, clamped to 4 per processor
                                                  and 1024 at most; CUDA: checked and ignored */
int llmc_set_precision(int mode);              /* 0 strict fp32 (TF32 off), 1 TF32 matmuls (CUDA only),
                                                  2 bf16 mixed precision (CUDA only): models made in this mode
                                                  compute in bf16 on fp32 master weights; their API is unchanged */
const char* llmc_last_error(void);             /* message of the last failed call in this thread */
int llmc_last_error_code(void);                /* code of the last failed call, LLMC_OK after success */
int llmc_init(void);                           /* CPU: LLMC_OK; CUDA: LLMC_ERR_DEVICE (with the reason) when no usable GPU */

/* Model API. max_B, max_T size the activations once; forward then accepts any B <= max_B, T <= max_T, and
 * a later forward may change B or T (the suite checks both). A port that can only read checkpoint files
 * exports llmc_model_from_checkpoint alone (llm.c's shape): the suite then writes parameters to a file. */
int llmc_model_from_checkpoint(const char* path, int max_B, int max_T, llmc_model** out);
int llmc_model_from_params(const llmc_config* config, const float* params, int max_B, int max_T,
                           llmc_model** out);
void llmc_model_free(llmc_model* model);
int llmc_model_config(const llmc_model* model, llmc_config* out);
size_t llmc_model_num_parameters(const llmc_model* model);   /* padded count, llm.c's order */

/* mean_loss (may be NULL): the mean cross-entropy over the B*T positions; with targets NULL there is no
 * loss and it is set to -1.0f (llm.c's "no targets"). */
int llmc_forward(llmc_model* model, const int* inputs, const int* targets, int B, int T, float* mean_loss);
int llmc_zero_grad(llmc_model* model);
/* Needs a forward with targets. Adds that forward's gradient to the parameter gradients, and only those
 * accumulate until llmc_zero_grad: the activation gradients start from zero in every backward (llm.c's
 * gpt2_backward does not reset them; native/llmc_adapter.c does). Forward + backward twice after one
 * zero_grad leaves twice the gradient. */
int llmc_backward(llmc_model* model);
/* One AdamW step t >= 1 (bias correction by t). grad_norm (may be NULL): the global L2 norm of the gradient
 * BEFORE clipping, also when grad_clip > 0 scales the gradient down first. */
int llmc_update(llmc_model* model, const llmc_adamw* opt, int t, float* grad_norm);

/* Copies between the model and host memory, num_parameters floats each (logits: B*T*Vp of the last forward). */
int llmc_get_params(const llmc_model* model, float* dst);
int llmc_set_params(llmc_model* model, const float* src);
int llmc_get_grads(const llmc_model* model, float* dst);
int llmc_get_logits(const llmc_model* model, float* dst);
int llmc_get_optimizer_state(const llmc_model* model, float* m, float* v);   /* zeros before the first update */
/* The parameters as an llm.c checkpoint: version 3 (fp32) or 5 (bf16, rounded to nearest even), written
 * whole or not at all (a temporary file, then a rename). */
int llmc_save_checkpoint(const llmc_model* model, const char* path, int version);
int llmc_set_optimizer_state(llmc_model* model, const float* m, const float* v);

/* Data parallelism (the CUDA library built with NCCL; elsewhere absent or LLMC_ERR_UNSUPPORTED). One
 * process per GPU: llmc_set_device(local rank) before anything else touches the GPU, then the model; rank 0
 * makes an id, the launcher shares it (backends/distributed.py: TCP, a shared file or MPI), and every rank
 * joins its model with it. From then on llmc_update averages the gradients over the ranks before AdamW
 * (zero_stage 1: reduce-scatter, AdamW on this rank's shard of the parameters and of m and v, all-gather),
 * so every rank holds the same parameters after each step, and grad_norm is the global norm. The calls
 * marked (collective) must be made by every rank, in the same order. */
#define LLMC_DIST_ID_BYTES 128
int llmc_device_count(int* count);
int llmc_set_device(int device);               /* before llmc_init and the first model */
int llmc_dist_unique_id(unsigned char* id);    /* LLMC_DIST_ID_BYTES bytes; rank 0 only */
int llmc_dist_join(llmc_model* model, const unsigned char* id, int rank, int world_size,
                   int zero_stage);            /* (collective) zero_stage 0 or 1 */
int llmc_dist_sync_grads(llmc_model* model);   /* (collective) average the gradients now (llmc_update does it
                                                  when not yet done); zero_stage 1: on this rank's shard only */
int llmc_dist_shard(const llmc_model* model, size_t* offset, size_t* count);   /* the parameters this rank updates */
int llmc_dist_mean(llmc_model* model, float* values, int n);   /* (collective) host floats averaged over the ranks */
/* Also collective once joined: llmc_update, llmc_get_optimizer_state under ZeRO-1 (it gathers the shards), and
 * llmc_model_free (it ends the NCCL communicator, which waits for the other ranks): a harness driving the
 * ranks from one process sends each such call to every rank before waiting for any of them. */

/* Layer kernels: llm.c's CPU signatures. Shapes: B batch, T time, C channels, OC output channels,
 * NH heads, V vocab, Vp padded vocab, N element count. */
void encoder_forward(float* out, int* inp, float* wte, float* wpe, int B, int T, int C);
void encoder_backward(float* dwte, float* dwpe, float* dout, int* inp, int B, int T, int C);
void layernorm_forward(float* out, float* mean, float* rstd, float* inp, float* weight, float* bias,
                       int B, int T, int C);
void layernorm_backward(float* dinp, float* dweight, float* dbias, float* dout, float* inp, float* weight,
                        float* mean, float* rstd, int B, int T, int C);
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias,
                    int B, int T, int C, int OC);
void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int B, int T, int C, int OC);
void attention_forward(float* out, float* preatt, float* att, float* inp, int B, int T, int C, int NH);
void attention_backward(float* dinp, float* dpreatt, float* datt, float* dout, float* inp, float* att,
                        int B, int T, int C, int NH);
void gelu_forward(float* out, float* inp, int N);
void gelu_backward(float* dinp, float* inp, float* dout, int N);
void residual_forward(float* out, float* inp1, float* inp2, int N);
void residual_backward(float* dinp1, float* dinp2, float* dout, int N);
void softmax_forward(float* probs, float* logits, int B, int T, int V, int Vp);
void crossentropy_forward(float* losses, float* probs, int* targets, int B, int T, int Vp);
void crossentropy_softmax_backward(float* dlogits, float* dlosses, float* probs, int* targets,
                                   int B, int T, int V, int Vp);
/* LLMC_CDEF_END */
/* clang-format on */

#ifdef __cplusplus
}
#endif
#endif
