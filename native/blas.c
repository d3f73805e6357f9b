/* The one place that knows which BLAS cpu.mk linked (LLMC_BLAS_SCIPY / _OPENBLAS / _BLIS), and how
 * the work of one sgemm is spread over our OpenMP threads. */
#include <omp.h>
#include "internal.h"
#include <cblas.h>

#if defined(LLMC_BLAS_SCIPY) /* scipy-openblas32 wheel: every symbol carries the scipy_ prefix */
#define SGEMM scipy_cblas_sgemm
#define SET_THREADS(n) scipy_openblas_set_num_threads(n)
#elif defined(LLMC_BLAS_OPENBLAS)
#define SGEMM cblas_sgemm
#define SET_THREADS(n) openblas_set_num_threads(n)
#elif defined(LLMC_BLAS_BLIS)
#define SGEMM cblas_sgemm
void bli_thread_set_num_threads(long n);
#define SET_THREADS(n) bli_thread_set_num_threads(n)
#else
#error "define LLMC_BLAS_SCIPY, LLMC_BLAS_OPENBLAS or LLMC_BLAS_BLIS (native/cpu.mk does)"
#endif

/* The BLAS itself runs single-threaded, always: llmc_sgemm splits the columns of C among the OpenMP
 * threads (llmc_set_num_threads sets how many), each thread one independent sgemm. No thread waits
 * on another inside the BLAS (OpenBLAS's own threads synchronize between panels, which on a busy
 * 2-core machine stalls whenever one of them is descheduled), there is one pool of threads instead
 * of two competing for the cores, and the split, hence every result, is fixed by the thread count. */
__attribute__((constructor)) static void single_threaded_blas(void) { SET_THREADS(1); }

void llmc_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
                int ldb, float beta, float* C, int ldc) {
// C (M,N) = alpha op(A) (M,K) @ op(B) (K,N) + beta C, all row-major
#pragma omp parallel
    {
        int nt = omp_get_num_threads(), k = omp_get_thread_num();
        int lines = (N + 15) / 16; // whole 64-byte lines of C per thread
        int n0 = lines * k / nt * 16, n1 = lines * (k + 1) / nt * 16;
        if (n0 > N) n0 = N;
        if (n1 > N) n1 = N;
        if (n1 > n0) {
            const float* B_cols = trans_b ? B + (size_t)n0 * ldb : B + n0; // op(B)'s columns n0..n1
            SGEMM(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, n1 - n0,
                  K, alpha, A, lda, B_cols, ldb, beta, C + n0, ldc);
        }
    }
}
