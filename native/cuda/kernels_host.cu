// llm.c's 15 layer kernels with their CPU signatures (host pointers, void), for the kernel-level tests:
// copy the inputs in, run the GPU launcher, copy the outputs out. Gradient outputs are copied in too,
// so the GPU adds to them (llm.c's +=). A failure is reported through llmc_last_error_code().
// In bf16 mode (llmc_set_precision(2)) matmul and attention run the mixed-precision model's kernels: their
// inputs are rounded to bf16 on the device, their bf16 outputs widened back (gradients added in fp32).
// The other kernels compute in fp32 in every mode, as the mixed-precision model does.
#include <algorithm>
#include <string>
#include <vector>

#include "common.cuh"

namespace {

// Device copies made for one call, freed when it returns.
class DeviceScope {
public:
    ~DeviceScope() {
        for (void* p : ptrs_) cudaFree(p);
    }
    // n elements on the device, filled from host when host is not NULL
    template <typename T>
    int upload(T** dev, const T* host, size_t n) {
        void* p = nullptr;
        CUDA_TRY(cudaMalloc(&p, std::max(n, (size_t)1) * sizeof(T)));
        ptrs_.push_back(p);
        if (host) CUDA_TRY(cudaMemcpy(p, host, n * sizeof(T), cudaMemcpyHostToDevice));
        *dev = (T*)p;
        return LLMC_OK;
    }
    template <typename T>
    int alloc(T** dev, size_t n) {
        return upload(dev, (const T*)nullptr, n);
    }

private:
    std::vector<void*> ptrs_;
};

template <typename T>
int download(T* host, const T* dev, size_t n) {
    if (host) CUDA_TRY(cudaMemcpy(host, dev, n * sizeof(T), cudaMemcpyDeviceToHost));
    return LLMC_OK;
}

// Runs body(scope) with the device ready; a failure's message gets the kernel's name in front.
template <typename F>
void run_kernel(const char* name, F body) {
    clear_error();
    int rc = ensure_device();
    if (rc == LLMC_OK) {
        DeviceScope scope;
        rc = body(scope);
    }
    if (rc != LLMC_OK) {
        std::string message = llmc_last_error();
        set_error(rc, "%s: %s", name, message.c_str());
    }
}

// A bf16 copy (round to nearest even) of n device floats, owned by the scope.
int to_bf16(DeviceScope& s, bf16** out, const float* in, size_t n) {
    TRY(s.alloc(out, n));
    return to_bf16_gpu(*out, in, n);
}

// Rows of an embedding table the tokens touch: [0, max token + 1). The signatures carry no vocab size.
int rows_used(const int* inp, size_t n) {
    int max_token = 0;
    for (size_t i = 0; i < n; i++) max_token = std::max(max_token, inp[i]);
    return max_token + 1;
}

} // namespace

extern "C" {

void encoder_forward(float* out, int* inp, float* wte, float* wpe, int B, int T, int C) {
    run_kernel("encoder_forward", [&](DeviceScope& s) {
        size_t BT = (size_t)B * T;
        int rows = rows_used(inp, BT);
        float *d_out = nullptr, *d_wte = nullptr, *d_wpe = nullptr;
        int* d_inp = nullptr;
        TRY(s.alloc(&d_out, BT * C));
        TRY(s.upload(&d_inp, inp, BT));
        TRY(s.upload(&d_wte, wte, (size_t)rows * C));
        TRY(s.upload(&d_wpe, wpe, (size_t)T * C));
        TRY(encoder_forward_gpu(d_out, d_inp, d_wte, d_wpe, B, T, C));
        return download(out, d_out, BT * C);
    });
}

void encoder_backward(float* dwte, float* dwpe, float* dout, int* inp, int B, int T, int C) {
    run_kernel("encoder_backward", [&](DeviceScope& s) {
        size_t BT = (size_t)B * T;
        int rows = rows_used(inp, BT);
        float *d_dwte = nullptr, *d_dwpe = nullptr, *d_dout = nullptr;
        TRY(s.upload(&d_dwte, dwte, (size_t)rows * C));
        TRY(s.upload(&d_dwpe, dwpe, (size_t)T * C));
        TRY(s.upload(&d_dout, dout, BT * C));
        TokenBuckets buckets = {};
        int rc = token_buckets_build(&buckets, inp, (int)BT, rows);
        if (rc == LLMC_OK) rc = encoder_backward_gpu(d_dwte, d_dwpe, d_dout, &buckets, B, T, C);
        token_buckets_free(&buckets);
        TRY(rc);
        TRY(download(dwte, d_dwte, (size_t)rows * C));
        return download(dwpe, d_dwpe, (size_t)T * C);
    });
}

void layernorm_forward(float* out, float* mean, float* rstd, float* inp, float* weight, float* bias, int B, int T,
                       int C) {
    run_kernel("layernorm_forward", [&](DeviceScope& s) {
        size_t BT = (size_t)B * T;
        float *d_out = nullptr, *d_mean = nullptr, *d_rstd = nullptr;
        float *d_inp = nullptr, *d_weight = nullptr, *d_bias = nullptr;
        TRY(s.alloc(&d_out, BT * C));
        TRY(s.alloc(&d_mean, BT));
        TRY(s.alloc(&d_rstd, BT));
        TRY(s.upload(&d_inp, inp, BT * C));
        TRY(s.upload(&d_weight, weight, C));
        TRY(s.upload(&d_bias, bias, C));
        TRY(layernorm_forward_gpu(d_out, d_mean, d_rstd, d_inp, d_weight, d_bias, BT, C));
        TRY(download(out, d_out, BT * C));
        TRY(download(mean, d_mean, BT));
        return download(rstd, d_rstd, BT);
    });
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, float* dout, float* inp, float* weight, float* mean,
                        float* rstd, int B, int T, int C) {
    run_kernel("layernorm_backward", [&](DeviceScope& s) {
        size_t BT = (size_t)B * T;
        float *d_dinp = nullptr, *d_dweight = nullptr, *d_dbias = nullptr, *d_dout = nullptr;
        float *d_inp = nullptr, *d_weight = nullptr, *d_mean = nullptr, *d_rstd = nullptr;
        TRY(s.upload(&d_dinp, dinp, BT * C));
        TRY(s.upload(&d_dweight, dweight, C));
        TRY(s.upload(&d_dbias, dbias, C));
        TRY(s.upload(&d_dout, dout, BT * C));
        TRY(s.upload(&d_inp, inp, BT * C));
        TRY(s.upload(&d_weight, weight, C));
        TRY(s.upload(&d_mean, mean, BT));
        TRY(s.upload(&d_rstd, rstd, BT));
        TRY(layernorm_backward_gpu(d_dinp, d_dweight, d_dbias, d_dout, d_inp, d_weight, d_mean, d_rstd, BT, C));
        TRY(download(dinp, d_dinp, BT * C));
        TRY(download(dweight, d_dweight, C));
        return download(dbias, d_dbias, C);
    });
}

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int B, int T, int C, int OC) {
    run_kernel("matmul_forward", [&](DeviceScope& s) {
        size_t BT = (size_t)B * T;
        float *d_out = nullptr, *d_inp = nullptr, *d_weight = nullptr, *d_bias = nullptr;
        TRY(s.alloc(&d_out, BT * OC));
        TRY(s.upload(&d_inp, inp, BT * C));
        TRY(s.upload(&d_weight, weight, (size_t)OC * C));
        if (bias) TRY(s.upload(&d_bias, bias, OC));
        if (precision_mode() == PRECISION_BF16) {
            bf16 *h_out = nullptr, *h_inp = nullptr, *h_weight = nullptr, *h_bias = nullptr;
            TRY(s.alloc(&h_out, BT * OC));
            TRY(to_bf16(s, &h_inp, d_inp, BT * C));
            TRY(to_bf16(s, &h_weight, d_weight, (size_t)OC * C));
            if (bias) TRY(to_bf16(s, &h_bias, d_bias, OC));
            TRY(matmul_forward_bf16_gpu(h_out, nullptr, h_inp, h_weight, h_bias, BT, C, OC));
            TRY(to_float_gpu(d_out, h_out, BT * OC));
        } else {
            TRY(matmul_forward_gpu(d_out, d_inp, d_weight, d_bias, nullptr, BT, C, OC));
        }
        return download(out, d_out, BT * OC);
    });
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int B, int T, int C, int OC) {
    run_kernel("matmul_backward", [&](DeviceScope& s) {
        size_t BT = (size_t)B * T;
        float *d_dinp = nullptr, *d_dweight = nullptr, *d_dbias = nullptr;
        float *d_dout = nullptr, *d_inp = nullptr, *d_weight = nullptr;
        TRY(s.upload(&d_dinp, dinp, BT * C));
        TRY(s.upload(&d_dweight, dweight, (size_t)OC * C));
        if (dbias) TRY(s.upload(&d_dbias, dbias, OC));
        TRY(s.upload(&d_dout, dout, BT * OC));
        TRY(s.upload(&d_inp, inp, BT * C));
        TRY(s.upload(&d_weight, weight, (size_t)OC * C));
        if (precision_mode() == PRECISION_BF16) {
            bf16 *h_dinp = nullptr, *h_dout = nullptr, *h_inp = nullptr, *h_weight = nullptr;
            TRY(s.alloc(&h_dinp, BT * C));
            TRY(to_bf16(s, &h_dout, d_dout, BT * OC));
            TRY(to_bf16(s, &h_inp, d_inp, BT * C));
            TRY(to_bf16(s, &h_weight, d_weight, (size_t)OC * C));
            TRY(matmul_backward_dinp_bf16_gpu(h_dinp, h_dout, h_weight, nullptr, BT, C, OC));
            TRY(add_bf16_gpu(d_dinp, h_dinp, BT * C));
            TRY(matmul_backward_dweight_bf16_gpu(d_dweight, h_dout, h_inp, BT, C, OC));
            if (dbias) TRY(column_sum_gpu(d_dbias, (const bf16*)h_dout, BT, (size_t)OC));
        } else {
            TRY(matmul_backward_gpu(d_dinp, d_dweight, d_dbias, d_dout, d_inp, d_weight, BT, C, OC, true));
        }
        TRY(download(dinp, d_dinp, BT * C));
        TRY(download(dweight, d_dweight, (size_t)OC * C));
        return dbias ? download(dbias, d_dbias, OC) : LLMC_OK;
    });
}

// preatt is left unwritten; att gets the softmax probabilities (zero above the diagonal), computed from q, k
// and the fused forward's logsumexp
void attention_forward(float* out, float* preatt, float* att, float* inp, int B, int T, int C, int NH) {
    (void)preatt;
    run_kernel("attention_forward", [&](DeviceScope& s) {
        size_t BT = (size_t)B * T, att_size = (size_t)B * NH * T * T;
        float *d_out = nullptr, *d_lse = nullptr, *d_att = nullptr, *d_inp = nullptr;
        TRY(s.alloc(&d_out, BT * C));
        TRY(s.alloc(&d_lse, (size_t)B * NH * T));
        TRY(s.alloc(&d_att, att_size));
        TRY(s.upload(&d_inp, inp, 3 * BT * C));
        if (precision_mode() == PRECISION_BF16) {
            bf16 *h_out = nullptr, *h_inp = nullptr;
            TRY(s.alloc(&h_out, BT * C));
            TRY(to_bf16(s, &h_inp, d_inp, 3 * BT * C));
            TRY(attention_forward_bf16_gpu(h_out, d_lse, h_inp, B, T, C, NH));
            TRY(to_float_gpu(d_out, h_out, BT * C));
            TRY(to_float_gpu(d_inp, h_inp, 3 * BT * C)); // att from the same rounded q and k as lse
        } else {
            TRY(attention_forward_gpu(d_out, d_lse, d_inp, B, T, C, NH));
        }
        TRY(attention_probs_gpu(d_att, d_inp, d_lse, B, T, C, NH));
        TRY(download(out, d_out, BT * C));
        return download(att, d_att, att_size);
    });
}

// The fused backward needs the forward's out and logsumexp, not att: it reruns the forward on inp (att is
// that forward's probabilities, so nothing changes). dpreatt and datt are left unwritten (scratch in llm.c).
void attention_backward(float* dinp, float* dpreatt, float* datt, float* dout, float* inp, float* att, int B, int T,
                        int C, int NH) {
    (void)dpreatt;
    (void)datt;
    (void)att;
    run_kernel("attention_backward", [&](DeviceScope& s) {
        size_t BT = (size_t)B * T, rows = (size_t)B * NH * T;
        float *d_dinp = nullptr, *d_dout = nullptr, *d_inp = nullptr, *d_out = nullptr, *d_lse = nullptr;
        float* d_delta = nullptr;
        TRY(s.upload(&d_dinp, dinp, 3 * BT * C));
        TRY(s.upload(&d_dout, dout, BT * C));
        TRY(s.upload(&d_inp, inp, 3 * BT * C));
        TRY(s.alloc(&d_out, BT * C));
        TRY(s.alloc(&d_lse, rows));
        TRY(s.alloc(&d_delta, rows));
        if (precision_mode() == PRECISION_BF16) {
            bf16 *h_dinp = nullptr, *h_dout = nullptr, *h_inp = nullptr, *h_out = nullptr;
            TRY(s.alloc(&h_dinp, 3 * BT * C));
            TRY(s.alloc(&h_out, BT * C));
            TRY(to_bf16(s, &h_dout, d_dout, BT * C));
            TRY(to_bf16(s, &h_inp, d_inp, 3 * BT * C));
            TRY(attention_forward_bf16_gpu(h_out, d_lse, h_inp, B, T, C, NH));
            TRY(attention_backward_bf16_gpu(h_dinp, d_delta, h_dout, h_inp, h_out, d_lse, B, T, C, NH));
            TRY(add_bf16_gpu(d_dinp, h_dinp, 3 * BT * C));
        } else {
            TRY(attention_forward_gpu(d_out, d_lse, d_inp, B, T, C, NH));
            TRY(attention_backward_gpu(d_dinp, d_delta, d_dout, d_inp, d_out, d_lse, B, T, C, NH, true));
        }
        return download(dinp, d_dinp, 3 * BT * C);
    });
}

void gelu_forward(float* out, float* inp, int N) {
    run_kernel("gelu_forward", [&](DeviceScope& s) {
        float *d_out = nullptr, *d_inp = nullptr;
        TRY(s.alloc(&d_out, N));
        TRY(s.upload(&d_inp, inp, N));
        TRY(gelu_forward_gpu(d_out, d_inp, N));
        return download(out, d_out, N);
    });
}

void gelu_backward(float* dinp, float* inp, float* dout, int N) {
    run_kernel("gelu_backward", [&](DeviceScope& s) {
        float *d_dinp = nullptr, *d_inp = nullptr, *d_dout = nullptr;
        TRY(s.upload(&d_dinp, dinp, N));
        TRY(s.upload(&d_inp, inp, N));
        TRY(s.upload(&d_dout, dout, N));
        TRY(gelu_backward_gpu(d_dinp, d_inp, d_dout, N, true));
        return download(dinp, d_dinp, N);
    });
}

void residual_forward(float* out, float* inp1, float* inp2, int N) {
    run_kernel("residual_forward", [&](DeviceScope& s) {
        float *d_out = nullptr, *d_inp1 = nullptr, *d_inp2 = nullptr;
        TRY(s.alloc(&d_out, N));
        TRY(s.upload(&d_inp1, inp1, N));
        TRY(s.upload(&d_inp2, inp2, N));
        TRY(residual_forward_gpu(d_out, d_inp1, d_inp2, N));
        return download(out, d_out, N);
    });
}

void residual_backward(float* dinp1, float* dinp2, float* dout, int N) {
    run_kernel("residual_backward", [&](DeviceScope& s) {
        float *d_dinp1 = nullptr, *d_dinp2 = nullptr, *d_dout = nullptr;
        TRY(s.upload(&d_dinp1, dinp1, N));
        TRY(s.upload(&d_dinp2, dinp2, N));
        TRY(s.upload(&d_dout, dout, N));
        TRY(add_inplace_gpu(d_dinp1, d_dout, N));
        TRY(add_inplace_gpu(d_dinp2, d_dout, N));
        TRY(download(dinp1, d_dinp1, N));
        return download(dinp2, d_dinp2, N);
    });
}

void softmax_forward(float* probs, float* logits, int B, int T, int V, int Vp) {
    run_kernel("softmax_forward", [&](DeviceScope& s) {
        size_t BT = (size_t)B * T;
        float *d_probs = nullptr, *d_logits = nullptr;
        TRY(s.alloc(&d_probs, BT * Vp));
        TRY(s.upload(&d_logits, logits, BT * Vp));
        TRY(softmax_forward_gpu(d_probs, d_logits, BT, V, Vp));
        return download(probs, d_probs, BT * Vp);
    });
}

void crossentropy_forward(float* losses, float* probs, int* targets, int B, int T, int Vp) {
    run_kernel("crossentropy_forward", [&](DeviceScope& s) {
        size_t BT = (size_t)B * T;
        float *d_losses = nullptr, *d_probs = nullptr;
        int* d_targets = nullptr;
        TRY(s.alloc(&d_losses, BT));
        TRY(s.upload(&d_probs, probs, BT * Vp));
        TRY(s.upload(&d_targets, targets, BT));
        TRY(crossentropy_forward_gpu(d_losses, d_probs, d_targets, BT, Vp));
        return download(losses, d_losses, BT);
    });
}

void crossentropy_softmax_backward(float* dlogits, float* dlosses, float* probs, int* targets, int B, int T, int V,
                                   int Vp) {
    run_kernel("crossentropy_softmax_backward", [&](DeviceScope& s) {
        size_t BT = (size_t)B * T;
        float *d_dlogits = nullptr, *d_dlosses = nullptr, *d_probs = nullptr;
        int* d_targets = nullptr;
        TRY(s.upload(&d_dlogits, dlogits, BT * Vp));
        TRY(s.upload(&d_dlosses, dlosses, BT));
        TRY(s.upload(&d_probs, probs, BT * Vp));
        TRY(s.upload(&d_targets, targets, BT));
        TRY(crossentropy_softmax_backward_gpu(d_dlogits, d_dlosses, d_probs, d_targets, BT, V, Vp));
        return download(dlogits, d_dlogits, BT * Vp);
    });
}

} // extern "C"
