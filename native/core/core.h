/* The host C core of libllmc: the error state, the checks of configs and arguments, and the checkpoint
 * reader. Written once, compiled into each of the three libraries behind llmc.h: the CPU library
 * (native/cpu.mk), the CUDA library (native/cuda.mk) and the llm.c adapter (tools/validate_llmc.py).
 * Each library gets its own copy of the object code, and so its own error state; none links another.
 *
 * Plain C11. Of what is defined here only the llmc.h functions are exported (llmc_last_error,
 * llmc_last_error_code, llmc_set_num_threads); the rest is hidden in each library.
 *
 * Layering: the core knows nothing of the model code above it. model.c (CPU), cuda/model.cu and
 * llmc_adapter.c call down into it, never the other way.
 */
#ifndef LLMC_CORE_H
#define LLMC_CORE_H
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include "../llmc.h"

#ifdef __cplusplus
extern "C" {
#endif
#pragma GCC visibility push(hidden)

/* ----------------------------------------------------------------------------- errors.c
 * The last error of the calling thread (llmc.h: llmc_last_error, llmc_last_error_code). Every model-API
 * call ends in llmc_ok() or llmc_fail(). llmc_ok() resets only the code: the message keeps describing
 * the last call that failed. */
int llmc_fail(int code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
int llmc_vfail(int code, const char* fmt, va_list args);
int llmc_ok(void);

/* ----------------------------------------------------------------------------- checks.c */
/* The 16 parameter tensors in llm.c's order (wte, wpe, ln1w, ..., lnfb) and their sizes. Bounded
 * configs (llmc_check_config) keep every size product far from overflow. */
#define LLMC_NUM_PARAM_TENSORS 16
extern const char* const llmc_param_names[LLMC_NUM_PARAM_TENSORS];
void llmc_param_sizes(const llmc_config* c, size_t sizes[LLMC_NUM_PARAM_TENSORS]);
size_t llmc_num_parameters(const llmc_config* c);

/* Every field in [1, its bound], channels divisible by num_heads, padded_vocab_size >= vocab_size.
 * path NULL: a caller's config (LLMC_ERR_ARGUMENT, fields named config.NAME); otherwise the header of
 * the checkpoint at path (LLMC_ERR_FORMAT, fields named by header index). */
int llmc_check_config(const llmc_config* c, const char* path);

/* max_B, max_T that a model of config c can be sized for: both positive, max_T <= max_seq_len, and
 * B*T*4C below 2^31 (llmc.h's kernels count elements in int). */
int llmc_check_model_size(const llmc_config* c, int max_B, int max_T);

/* llmc_forward's arguments: 1 <= B <= max_B, 1 <= T <= max_T, every token id in [0, vocab_size).
 * inputs must not be NULL; targets may be. */
int llmc_check_forward(const int* inputs, const int* targets, int B, int T, int max_B, int max_T, int vocab_size);

/* llmc_update's settings: t >= 1, every setting finite, 0 <= beta1, beta2 < 1, eps > 0. */
int llmc_check_update(const llmc_adamw* opt, int t);

/* The weight decay AdamW applies to parameter tensor i: every tensor with decay_all, else only the
 * 2-D ones (PyTorch's dim >= 2 rule, a stack of layers counting as 2-D: wte, wpe and the matmul weights). */
float llmc_weight_decay(const llmc_adamw* opt, int tensor);

/* The most threads llmc_set_num_threads ever sets, on any machine; it also clamps to 4 per processor. */
#define LLMC_MAX_THREADS 1024

/* ----------------------------------------------------------------------------- checkpoint.c
 * llm.c's model checkpoint: a 256 x int32 header (magic 20240326, version 3 fp32 or 5 bf16, [2..7]
 * maxT, V, L, NH, C, Vp, the rest zero), then every parameter in llm.c's order. The reader rejects
 * exactly what reference/formats.py read_checkpoint rejects (plus configs beyond llmc_check_config's
 * bounds), naming the file and the field:
 *     llmc_checkpoint ck;
 *     if (llmc_checkpoint_open(path, &ck) != LLMC_OK) return ...;    header, reserved fields, file size
 *     ... allocate ck.num_parameters floats (llmc_checkpoint_close(&ck) if that fails) ...
 *     if (llmc_checkpoint_read(&ck, params) != LLMC_OK) ...         payload, finite; closes the file */
typedef struct {
    FILE* file; /* open between llmc_checkpoint_open and llmc_checkpoint_read / _close */
    const char* path;
    llmc_config config;
    int version; /* 3 (fp32) or 5 (bf16, widened exactly to fp32 when read) */
    size_t num_parameters;
} llmc_checkpoint;
int llmc_checkpoint_open(const char* path, llmc_checkpoint* ck);
int llmc_checkpoint_read(llmc_checkpoint* ck, float* params);
void llmc_checkpoint_close(llmc_checkpoint* ck);
/* Writes params (config's num_parameters, finite) as a version 3 (fp32) or 5 (bf16, rounded to nearest even
 * as reference/formats.py write_checkpoint rounds) checkpoint: whole or not at all (a temporary file beside
 * path, flushed, then renamed over it). */
int llmc_checkpoint_write(const char* path, const llmc_config* config, const float* params, int version);

#pragma GCC visibility pop
#ifdef __cplusplus
}
#endif
#endif
