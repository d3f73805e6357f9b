/* Declarations shared by the CPU library's sources (not part of the ABI: see llmc.h). */
#ifndef LLMC_INTERNAL_H
#define LLMC_INTERNAL_H
#include <stddef.h>
#include "llmc.h"
#include "core/core.h" /* errors, checks, the checkpoint reader: shared with the other libraries */

/* none of these are exported: the ABI is llmc.h */
#pragma GCC visibility push(hidden)

/* Hot loops get a second, AVX2 + FMA clone that the loader picks where the CPU has it (an ifunc):
 * the library stays portable to any x86-64, and a given machine always runs the same code, so
 * results still repeat bit for bit there. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LLMC_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define LLMC_HOT
#endif

/* blas.c: row-major C = alpha op(A) op(B) + beta C through the BLAS that cpu.mk linked, on the
 * OpenMP threads. */
void llmc_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
                int ldb, float beta, float* C, int ldc);

/* kernels.c: matmul_backward with each product's BLAS beta exposed (llm.c's kernel is beta 1 for both):
 * beta 0 overwrites, which spares the model zeroing its scratch gradients, and lets zero_grad leave
 * the big weight gradients to the backward that overwrites them. dbias, if any, always accumulates. */
void matmul_backward_beta(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                          const float* weight, int B, int T, int C, int OC, float dinp_beta, float dweight_beta);

/* kernels.c: the fused pieces of the lm head the model uses instead of materializing extra
 * (B,T,Vp) buffers, and AdamW. */
void softmax_crossentropy_forward(float* probs, float* losses, const float* logits, const int* targets, int B, int T,
                                  int V, int Vp);
void crossentropy_softmax_backward_inplace(float* probs, float dloss, const int* targets, int B, int T, int Vp);
#pragma GCC visibility pop
#endif
