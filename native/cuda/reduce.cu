// Deterministic column reductions: out[c] += sum over rows r of f(r, c), for bias gradients, layernorm
// parameter gradients and the position-embedding gradient (of fp32 or bf16 tensors, summed in fp32).
// No float atomics: a first kernel writes partial sums of fixed row chunks (the chunking depends on the
// shape only), a second adds the chunks in order. The same input gives the same bits on every run.
#include <algorithm>

#include "common.cuh"

constexpr int TILE = 32;     // columns per block: one warp reads 128 contiguous bytes of a row
constexpr int ROW_LANES = 8; // warps per block, each taking every 8th row of the chunk

// K sums at once (K=2 for layernorm's dweight and dbias, which read the same rows).
// partial: (K, chunks, cols)
template <int K, typename F>
__global__ void column_partial_kernel(float* partial, size_t R, size_t cols, size_t rows_per_chunk, F f) {
    __shared__ float lane_sums[K][ROW_LANES][TILE + 1];
    size_t c = (size_t)blockIdx.x * TILE + threadIdx.x;
    size_t r_begin = (size_t)blockIdx.y * rows_per_chunk;
    size_t r_end = min(R, r_begin + rows_per_chunk);
    float acc[K] = {};
    if (c < cols) {
        for (size_t r = r_begin + threadIdx.y; r < r_end; r += ROW_LANES) f(r, c, acc);
    }
    for (int k = 0; k < K; k++) lane_sums[k][threadIdx.y][threadIdx.x] = acc[k];
    __syncthreads();
    if (threadIdx.y < K && c < cols) {
        int k = threadIdx.y;
        float s = 0.0f;
        for (int i = 0; i < ROW_LANES; i++) s += lane_sums[k][i][threadIdx.x];
        partial[((size_t)k * gridDim.y + blockIdx.y) * cols + c] = s;
    }
}

// out_k[c] += sum over chunks g of partial[k][g][c]: a block of (TILE, ROW_LANES) threads takes TILE columns,
// lane y the chunks y, y + ROW_LANES, ... in order, then the lanes are added in order (fixed, so deterministic)
template <int K>
__global__ void column_finish_kernel(float* out0, float* out1, const float* partial, size_t cols, int chunks) {
    __shared__ float lane_sums[K][ROW_LANES][TILE];
    size_t c = (size_t)blockIdx.x * TILE + threadIdx.x;
    float* outs[2] = {out0, out1};
    for (int k = 0; k < K; k++) {
        float s = 0.0f;
        if (c < cols) {
#pragma unroll 4
            for (int g = threadIdx.y; g < chunks; g += ROW_LANES) s += partial[((size_t)k * chunks + g) * cols + c];
        }
        lane_sums[k][threadIdx.y][threadIdx.x] = s;
    }
    __syncthreads();
    if (threadIdx.y < K && c < cols) {
        int k = threadIdx.y;
        float s = 0.0f;
        for (int i = 0; i < ROW_LANES; i++) s += lane_sums[k][i][threadIdx.x];
        outs[k][c] += s;
    }
}

template <int K, typename F>
static int column_reduce(float* out0, float* out1, size_t R, size_t cols, F f) {
    if (R == 0 || cols == 0) return LLMC_OK;
    size_t tiles = ceil_div(cols, (size_t)TILE);
    // enough blocks to fill the GPU when there are few columns, chunks of at least 64 rows
    size_t chunks = std::min(ceil_div((size_t)512, tiles), ceil_div(R, (size_t)64));
    chunks = std::max(chunks, (size_t)1);
    size_t rows_per_chunk = ceil_div(R, chunks);
    void* partial;
    TRY(scratch_get(K * chunks * cols * sizeof(float), &partial));
    column_partial_kernel<K><<<dim3((unsigned)tiles, (unsigned)chunks), dim3(TILE, ROW_LANES)>>>(
        (float*)partial, R, cols, rows_per_chunk, f);
    LAUNCH_CHECK();
    return sum_chunks_gpu(out0, out1, (const float*)partial, cols, (int)chunks);
}

template <typename T>
struct ReadElement {
    const T* in;
    size_t cols;
    __device__ void operator()(size_t r, size_t c, float (&acc)[1]) const { acc[0] += to_f32(in[r * cols + c]); }
};

// Column sums 16 bytes at a time: each thread sums VEC adjacent columns (4 floats, 8 bf16) of its rows.
// partial: (chunks, cols)
template <typename T>
__global__ void column_partial_vec_kernel(float* partial, const T* in, size_t R, size_t cols, size_t rows_per_chunk) {
    constexpr int VEC = Pack16<T>::N;
    __shared__ float lane_sums[ROW_LANES][TILE * VEC];
    size_t c0 = ((size_t)blockIdx.x * TILE + threadIdx.x) * VEC;
    size_t r_begin = (size_t)blockIdx.y * rows_per_chunk;
    size_t r_end = min(R, r_begin + rows_per_chunk);
    float acc[VEC] = {};
    if (c0 < cols) {
        for (size_t r = r_begin + threadIdx.y; r < r_end; r += ROW_LANES) {
            Pack16<T> v = *(const Pack16<T>*)(in + r * cols + c0);
#pragma unroll
            for (int j = 0; j < VEC; j++) acc[j] += to_f32(v.x[j]);
        }
    }
#pragma unroll
    for (int j = 0; j < VEC; j++) lane_sums[threadIdx.y][threadIdx.x * VEC + j] = acc[j];
    __syncthreads();
    int t = threadIdx.y * TILE + threadIdx.x; // the block's column t, its lanes added in order
    size_t c = (size_t)blockIdx.x * TILE * VEC + t;
    if (t < TILE * VEC && c < cols) {
        float s = 0.0f;
        for (int i = 0; i < ROW_LANES; i++) s += lane_sums[i][t];
        partial[(size_t)blockIdx.y * cols + c] = s;
    }
}

int sum_chunks_gpu(float* out0, float* out1, const float* partial, size_t cols, int chunks) {
    unsigned blocks = (unsigned)ceil_div(cols, (size_t)TILE);
    if (out1)
        column_finish_kernel<2><<<blocks, dim3(TILE, ROW_LANES)>>>(out0, out1, partial, cols, chunks);
    else
        column_finish_kernel<1><<<blocks, dim3(TILE, ROW_LANES)>>>(out0, nullptr, partial, cols, chunks);
    LAUNCH_CHECK();
    return LLMC_OK;
}

template <typename T>
int column_sum_gpu(float* out, const T* in, size_t R, size_t cols) {
    constexpr int VEC = Pack16<T>::N;
    if (R == 0 || cols == 0) return LLMC_OK;
    if (cols % VEC || (uintptr_t)in % 16) return column_reduce<1>(out, nullptr, R, cols, ReadElement<T>{in, cols});
    size_t tiles = ceil_div(cols, (size_t)(TILE * VEC));
    size_t chunks = std::max(std::min(ceil_div((size_t)512, tiles), ceil_div(R, (size_t)64)), (size_t)1);
    size_t rows_per_chunk = ceil_div(R, chunks);
    void* partial;
    TRY(scratch_get(chunks * cols * sizeof(float), &partial));
    column_partial_vec_kernel<<<dim3((unsigned)tiles, (unsigned)chunks), dim3(TILE, ROW_LANES)>>>(
        (float*)partial, in, R, cols, rows_per_chunk);
    LAUNCH_CHECK();
    return sum_chunks_gpu(out, nullptr, (const float*)partial, cols, (int)chunks);
}

// dweight[c] += sum dout * norm, dbias[c] += sum dout, with norm = (inp - mean) * rstd recomputed
template <typename T>
struct LayernormParamGrads {
    const T* dout;
    const float *inp, *mean, *rstd;
    int C;
    __device__ void operator()(size_t r, size_t c, float (&acc)[2]) const {
        size_t i = r * C + c;
        float norm = (inp[i] - mean[r]) * rstd[r];
        float dy = to_f32(dout[i]);
        acc[0] += dy * norm;
        acc[1] += dy;
    }
};

template <typename T>
int layernorm_param_grads_gpu(float* dweight, float* dbias, const T* dout, const float* inp, const float* mean,
                              const float* rstd, size_t N, int C) {
    return column_reduce<2>(dweight, dbias, N, (size_t)C, LayernormParamGrads<T>{dout, inp, mean, rstd, C});
}

template int column_sum_gpu<float>(float*, const float*, size_t, size_t);
template int column_sum_gpu<bf16>(float*, const bf16*, size_t, size_t);
template int layernorm_param_grads_gpu<float>(float*, float*, const float*, const float*, const float*, const float*,
                                              size_t, int);
template int layernorm_param_grads_gpu<bf16>(float*, float*, const bf16*, const float*, const float*, const float*,
                                             size_t, int);
