// Whole-array sums in float64 with a fixed summation order: the global gradient norm (sum of squares)
// for AdamW's clipping and the mean loss. A fixed grid (not sized by the GPU) of per-thread partial
// sums, tree-reduced per block, then one block adds the block sums: the same bits on every run.
// Each thread reads 16 bytes at a time (the gradients are 0.5 GB at GPT-2 124M: a pass at memory speed).
#include "common.cuh"

constexpr int SUM_BLOCKS = 1024; // fixed, so the summation order does not depend on the GPU
constexpr int SUM_THREADS = 256;

__device__ double block_sum(double v, double* shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
        __syncthreads();
    }
    return shared[0];
}

__device__ inline double term(float x, bool squares) {
    double xd = x;
    return squares ? xd * xd : xd;
}

// x 16-byte aligned: float4 reads, then the n % 4 tail
__global__ void sum_partial_kernel(double* partial, const float* x, size_t n, bool squares) {
    __shared__ double shared[SUM_THREADS];
    double acc = 0.0;
    size_t stride = (size_t)gridDim.x * blockDim.x, first = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const float4* x4 = (const float4*)x;
    for (size_t i = first; i < n / 4; i += stride) {
        float4 v = x4[i];
        acc += term(v.x, squares) + term(v.y, squares) + term(v.z, squares) + term(v.w, squares);
    }
    for (size_t i = n / 4 * 4 + first; i < n; i += stride) acc += term(x[i], squares);
    double s = block_sum(acc, shared);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void sum_finish_kernel(double* result, const double* partial) {
    __shared__ double shared[SUM_BLOCKS];
    double s = block_sum(partial[threadIdx.x], shared);
    if (threadIdx.x == 0) *result = s;
}

int sum_gpu(double* host_out, const float* x, size_t n, bool squares) {
    if ((uintptr_t)x % 16) return set_error(LLMC_ERR_ARGUMENT, "sum_gpu: the array must be 16-byte aligned");
    void* scratch;
    TRY(scratch_get((SUM_BLOCKS + 1) * sizeof(double), &scratch));
    double* partial = (double*)scratch;
    sum_partial_kernel<<<SUM_BLOCKS, SUM_THREADS>>>(partial, x, n, squares);
    LAUNCH_CHECK();
    sum_finish_kernel<<<1, SUM_BLOCKS>>>(partial + SUM_BLOCKS, partial);
    LAUNCH_CHECK();
    CUDA_TRY(cudaMemcpy(host_out, partial + SUM_BLOCKS, sizeof(double), cudaMemcpyDeviceToHost));
    return LLMC_OK;
}
