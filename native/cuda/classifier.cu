// Softmax + cross-entropy over the first V of Vp logit columns (the padding never counts), logits in fp32
// or (bf16 mixed precision) bf16, the sums always fp32.
// The model's fused path keeps only (max, sum of exp) per row: the forward reads the logits once for the
// losses, the backward turns them into dlogits = dloss * (softmax - onehot) chunk by chunk, so the
// (B,T,Vp) probabilities are never stored. The three separate llm.c kernels follow, for the kernel-level API.
#include <cmath>

#include "common.cuh"

constexpr int ROW_THREADS = 512;

// Merge two online-softmax states (max m, sum of exp(x - m)).
__device__ inline float2 merge_stats(float2 a, float2 b) {
    float m = fmaxf(a.x, b.x);
    float s = (a.x == -INFINITY ? 0.0f : a.y * expf(a.x - m)) + (b.x == -INFINITY ? 0.0f : b.y * expf(b.x - m));
    return make_float2(m, s);
}

// Block-wide merge in a fixed tree order (deterministic); every thread gets the result.
__device__ float2 block_stats(float2 st) {
    __shared__ float2 shared[ROW_THREADS];
    shared[threadIdx.x] = st;
    __syncthreads();
    for (int stride = ROW_THREADS / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) shared[threadIdx.x] = merge_stats(shared[threadIdx.x], shared[threadIdx.x + stride]);
        __syncthreads();
    }
    float2 result = shared[0];
    __syncthreads();
    return result;
}

// exp: the accurate expf for fp32 logits (the strict class); the hardware approximation (~2 ulp) for bf16
// logits, whose own rounding is 2^-9: it keeps the classifier a pass at memory speed.
__device__ inline float exp_for(float x, float) { return expf(x); }
__device__ inline float exp_for(float x, bf16) { return __expf(x); }

// (max, sum of exp(x - max)) of x[0, V), merged over the block; 16-byte loads when the row allows (Vp a
// multiple of a pack), a pack's values first reduced among themselves
template <typename T>
__device__ float2 row_stats(const T* x, int V, int Vp) {
    float2 st = make_float2(-INFINITY, 0.0f);
    constexpr int P = Pack16<T>::N;
    if (Vp % P == 0) {
        const Pack16<T>* x16 = (const Pack16<T>*)x;
        for (int i = threadIdx.x; i < ceil_div(V, P); i += ROW_THREADS) {
            Pack16<T> in = x16[i];
            float v[P], mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < P; j++) {
                v[j] = P * i + j < V ? to_f32(in.x[j]) : -INFINITY; // the padding never counts
                mx = fmaxf(mx, v[j]);
            }
            float sum = 0.0f;
#pragma unroll
            for (int j = 0; j < P; j++) sum += exp_for(v[j] - mx, T());
            st = merge_stats(st, make_float2(mx, sum));
        }
    } else {
        for (int v = threadIdx.x; v < V; v += ROW_THREADS) {
            float xv = to_f32(x[v]);
            if (xv > st.x) {
                st.y = st.y * exp_for(st.x - xv, T()) + 1.0f;
                st.x = xv;
            } else {
                st.y += exp_for(xv - st.x, T());
            }
        }
    }
    return block_stats(st);
}

// One block per row: losses[row] = log(sum exp(x - max)) + max - x[target]; stats[row] = (max, sum)
template <typename T>
__global__ void classifier_forward_kernel(float* losses, float2* stats, const T* logits, const int* targets, int V,
                                          int Vp) {
    size_t row = blockIdx.x;
    const T* x = logits + row * Vp;
    float2 st = row_stats(x, V, Vp);
    if (threadIdx.x == 0) {
        stats[row] = st;
        losses[row] = logf(st.y) + st.x - to_f32(x[targets[row]]);
    }
}

// softmax - onehot, times dloss; fp32 divides by the sum as the reference does, bf16 multiplies by its inverse
__device__ inline float dlogit(float x, int v, float2 st, float inv_sum, int target, float dloss, int V, float) {
    float prob = expf(x - st.x) / st.y;
    return v < V ? (prob - (v == target ? 1.0f : 0.0f)) * dloss : 0.0f;
}
__device__ inline float dlogit(float x, int v, float2 st, float inv_sum, int target, float dloss, int V, bf16) {
    float prob = __expf(x - st.x) * inv_sum;
    return v < V ? (prob - (v == target ? 1.0f : 0.0f)) * dloss : 0.0f;
}

// dlogits[row, v] = dloss * (exp(x - max) / sum - [v == target]) for v < V, 0 for the padding.
// 16-byte accesses when rows allow (Vp a multiple of 16 bytes): this pass moves the largest tensors of the step.
template <typename T>
__global__ void classifier_backward_kernel(T* dlogits, const T* logits, const float2* stats, const int* targets,
                                           float dloss, int V, int Vp) {
    size_t row = blockIdx.x;
    const T* x = logits + row * Vp;
    T* dx = dlogits + row * Vp;
    float2 st = stats[row];
    float inv_sum = 1.0f / st.y;
    int target = targets[row];
    constexpr int P = Pack16<T>::N;
    if (Vp % P == 0) {
        const Pack16<T>* x16 = (const Pack16<T>*)x;
        Pack16<T>* dx16 = (Pack16<T>*)dx;
        for (int i = threadIdx.x; i < Vp / P; i += ROW_THREADS) {
            Pack16<T> in = x16[i], out;
#pragma unroll
            for (int j = 0; j < P; j++)
                out.x[j] = from_f32<T>(dlogit(to_f32(in.x[j]), P * i + j, st, inv_sum, target, dloss, V, T()));
            dx16[i] = out;
        }
    } else {
        for (int v = threadIdx.x; v < Vp; v += ROW_THREADS)
            dx[v] = from_f32<T>(dlogit(to_f32(x[v]), v, st, inv_sum, target, dloss, V, T()));
    }
}

template <typename T>
int classifier_forward_gpu(float* losses, float2* stats, const T* logits, const int* targets, size_t N, int V, int Vp) {
    classifier_forward_kernel<<<(unsigned)N, ROW_THREADS>>>(losses, stats, logits, targets, V, Vp);
    LAUNCH_CHECK();
    return LLMC_OK;
}

template <typename T>
int classifier_backward_gpu(T* dlogits, const T* logits, const float2* stats, const int* targets, float dloss, size_t N,
                            int V, int Vp) {
    classifier_backward_kernel<<<(unsigned)N, ROW_THREADS>>>(dlogits, logits, stats, targets, dloss, V, Vp);
    LAUNCH_CHECK();
    return LLMC_OK;
}

template int classifier_forward_gpu<float>(float*, float2*, const float*, const int*, size_t, int, int);
template int classifier_forward_gpu<bf16>(float*, float2*, const bf16*, const int*, size_t, int, int);
template int classifier_backward_gpu<float>(float*, const float*, const float2*, const int*, float, size_t, int, int);
template int classifier_backward_gpu<bf16>(bf16*, const bf16*, const float2*, const int*, float, size_t, int, int);

// ----------------------------------------------------------------------------- llm.c's separate kernels
__global__ void softmax_forward_kernel(float* probs, const float* logits, int V, int Vp) {
    size_t row = blockIdx.x;
    const float* x = logits + row * Vp;
    float2 st = row_stats(x, V, Vp);
    float* p = probs + row * Vp;
    for (int v = threadIdx.x; v < Vp; v += ROW_THREADS) p[v] = v < V ? expf(x[v] - st.x) / st.y : 0.0f;
}

__global__ void crossentropy_forward_kernel(float* losses, const float* probs, const int* targets, size_t N, int Vp) {
    size_t row = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (row < N) losses[row] = -logf(probs[row * Vp + targets[row]]);
}

// dlogits[row, v] += dlosses[row] * (probs[row, v] - [v == target]) for v < V; the padding is left alone
__global__ void crossentropy_softmax_backward_kernel(float* dlogits, const float* dlosses, const float* probs,
                                                     const int* targets, size_t N, int V, int Vp) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * Vp) return;
    size_t row = idx / Vp;
    int v = idx % Vp;
    if (v >= V) return;
    float indicator = v == targets[row] ? 1.0f : 0.0f;
    dlogits[idx] += (probs[idx] - indicator) * dlosses[row];
}

int softmax_forward_gpu(float* probs, const float* logits, size_t N, int V, int Vp) {
    softmax_forward_kernel<<<(unsigned)N, ROW_THREADS>>>(probs, logits, V, Vp);
    LAUNCH_CHECK();
    return LLMC_OK;
}

int crossentropy_forward_gpu(float* losses, const float* probs, const int* targets, size_t N, int Vp) {
    crossentropy_forward_kernel<<<(unsigned)ceil_div(N, (size_t)256), 256>>>(losses, probs, targets, N, Vp);
    LAUNCH_CHECK();
    return LLMC_OK;
}

int crossentropy_softmax_backward_gpu(float* dlogits, const float* dlosses, const float* probs, const int* targets,
                                      size_t N, int V, int Vp) {
    size_t n = N * Vp;
    crossentropy_softmax_backward_kernel<<<(unsigned)ceil_div(n, (size_t)256), 256>>>(dlogits, dlosses, probs, targets,
                                                                                      N, V, Vp);
    LAUNCH_CHECK();
    return LLMC_OK;
}
