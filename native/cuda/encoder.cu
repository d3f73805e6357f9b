// Token + position embedding, forward and backward.
// The backward is deterministic: a token's rows of dout are summed in ascending position order, from
// buckets built on the host (the token ids live on the host anyway), instead of float atomics.
#include <vector>

#include "common.cuh"

// out[b,t,:] = wte[inp[b,t],:] + wpe[t,:]; one thread per element
__global__ void encoder_forward_kernel(float* out, const int* inp, const float* wte, const float* wpe, size_t BT, int T,
                                       int C) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= BT * C) return;
    size_t bt = idx / C;
    int c = (int)(idx % C);
    int t = (int)(bt % T);
    out[idx] = wte[(size_t)inp[bt] * C + c] + wpe[(size_t)t * C + c];
}

int encoder_forward_gpu(float* out, const int* inp, const float* wte, const float* wpe, int B, int T, int C) {
    size_t n = (size_t)B * T * C;
    encoder_forward_kernel<<<(unsigned)ceil_div(n, (size_t)256), 256>>>(out, inp, wte, wpe, (size_t)B * T, T, C);
    LAUNCH_CHECK();
    return LLMC_OK;
}

// ----------------------------------------------------------------------------- token buckets
int token_buckets_build(TokenBuckets* buckets, const int* host_inp, int N, int V) {
    // counting sort by token: stable, so positions stay ascending inside each bucket
    std::vector<int> count(V + 1, 0);
    for (int i = 0; i < N; i++) count[host_inp[i] + 1]++;
    for (int v = 0; v < V; v++) count[v + 1] += count[v];
    std::vector<int> positions(N), tokens, offsets;
    std::vector<int> next(count.begin(), count.end() - 1);
    for (int i = 0; i < N; i++) positions[next[host_inp[i]]++] = i;
    for (int v = 0; v < V; v++) {
        if (count[v + 1] > count[v]) {
            tokens.push_back(v);
            offsets.push_back(count[v]);
        }
    }
    offsets.push_back(N);
    if ((size_t)N > buckets->capacity) {
        token_buckets_free(buckets);
        CUDA_TRY(cudaMalloc(&buckets->tokens, N * sizeof(int)));
        CUDA_TRY(cudaMalloc(&buckets->offsets, (N + 1) * sizeof(int)));
        CUDA_TRY(cudaMalloc(&buckets->positions, N * sizeof(int)));
        buckets->capacity = N;
    }
    buckets->num_buckets = (int)tokens.size();
    CUDA_TRY(cudaMemcpy(buckets->tokens, tokens.data(), tokens.size() * sizeof(int), cudaMemcpyHostToDevice));
    CUDA_TRY(cudaMemcpy(buckets->offsets, offsets.data(), offsets.size() * sizeof(int), cudaMemcpyHostToDevice));
    CUDA_TRY(cudaMemcpy(buckets->positions, positions.data(), N * sizeof(int), cudaMemcpyHostToDevice));
    return LLMC_OK;
}

void token_buckets_free(TokenBuckets* buckets) {
    cudaFree(buckets->tokens);
    cudaFree(buckets->offsets);
    cudaFree(buckets->positions);
    *buckets = TokenBuckets{};
}

// One block per distinct token: dwte[token, c] += sum over its positions p (ascending) of dout[p, c]
__global__ void encoder_backward_wte_kernel(float* dwte, const float* dout, const int* tokens, const int* offsets,
                                            const int* positions, int C) {
    int bucket = blockIdx.x;
    int begin = offsets[bucket], end = offsets[bucket + 1];
    float* row = dwte + (size_t)tokens[bucket] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float s = 0.0f;
        for (int i = begin; i < end; i++) s += dout[(size_t)positions[i] * C + c];
        row[c] += s;
    }
}

int encoder_backward_gpu(float* dwte, float* dwpe, const float* dout, const TokenBuckets* buckets, int B, int T,
                         int C) {
    if (buckets->num_buckets > 0) {
        encoder_backward_wte_kernel<<<buckets->num_buckets, 256>>>(dwte, dout, buckets->tokens, buckets->offsets,
                                                                   buckets->positions, C);
        LAUNCH_CHECK();
    }
    // dwpe[t, c] += sum over b of dout[b, t, c]: a column sum of dout seen as (B, T*C)
    return column_sum_gpu(dwpe, dout, (size_t)B, (size_t)T * C);
}
