/* GPT-2's layers with llm.c's CPU signatures: each forward beside its backward.
 *
 * Shapes: B batch, T time, C channels, OC output channels, NH heads, hs = C/NH, V vocab, Vp padded vocab.
 * Conventions (llm.c's): row-major tensors, weights stored (out, in), outputs overwritten, gradients
 * accumulated with +=. Every matmul goes through BLAS (blas.c); everything else is an OpenMP loop with
 * a static schedule, and every reduction has a fixed order, so a run repeats bit for bit at a fixed
 * thread count. Where threads share an output (a weight gradient summed over positions) they split
 * the output's columns instead of the positions, so no element has two writers.
 */
#include <math.h>
#include <omp.h>
#include "internal.h"

#define LAYERNORM_EPS 1e-5f
#define GELU_SCALING_FACTOR 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_CUBIC 0.044715f

/* This thread's share of [0, n), in whole 64-byte lines so that two threads never write one line. */
static void thread_range(int n, int* lo, int* hi) {
    int nt = omp_get_num_threads(), k = omp_get_thread_num();
    int lines = (n + 15) / 16;
    int a = lines * k / nt * 16, b = lines * (k + 1) / nt * 16;
    *lo = a < n ? a : n;
    *hi = b < n ? b : n;
}

/* e^x in plain arithmetic, so the loops that call it vectorize (a libm call stops them): Cody-Waite
 * reduction x = n ln2 + r, |r| <= ln2/2, then Cephes' degree-6 polynomial for e^r. Relative error
 * below 1e-7 (measured over [-87, 88]); 0 below -87.3, where floats turn subnormal; +inf above 88.72;
 * NaN stays NaN. */
static inline float exp_poly(float x) {
    float xc = x > -87.3f ? (x < 88.0f ? x : 88.0f) : -87.3f; // NaN goes to -87.3: (int)n stays defined
    const float round_magic = 12582912.0f;                    // 1.5 * 2^23: adding it rounds to an integer
    float n = (xc * 1.44269504f + round_magic) - round_magic;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int bits = ((int)n + 127) << 23; // 2^n
    float scale;
    __builtin_memcpy(&scale, &bits, 4);
    float y = p * scale;
    y = x < -87.3f ? 0.0f : y;
    y = x > 88.72f ? INFINITY : y;
    return x != x ? x : y;
}

/* ----------------------------------------------------------------------------- encoder */
void encoder_forward(float* out, int* inp, float* wte, float* wpe, int B, int T, int C) {
// out (B,T,C) = wte (Vp,C)[inp (B,T)] + wpe (maxT,C)[t]
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            float* out_bt = out + ((size_t)b * T + t) * C;
            const float* wte_ix = wte + (size_t)inp[b * T + t] * C;
            const float* wpe_t = wpe + (size_t)t * C;
            for (int i = 0; i < C; i++) out_bt[i] = wte_ix[i] + wpe_t[i];
        }
    }
}

void encoder_backward(float* dwte, float* dwpe, float* dout, int* inp, int B, int T, int C) {
// dout (B,T,C) -> dwte (Vp,C), dwpe (maxT,C). A token can occur twice, so threads split channels.
#pragma omp parallel
    {
        int c0, c1;
        thread_range(C, &c0, &c1);
        for (int b = 0; b < B; b++) {
            for (int t = 0; t < T; t++) {
                const float* dout_bt = dout + ((size_t)b * T + t) * C;
                float* dwte_ix = dwte + (size_t)inp[b * T + t] * C;
                float* dwpe_t = dwpe + (size_t)t * C;
                for (int i = c0; i < c1; i++) {
                    dwte_ix[i] += dout_bt[i];
                    dwpe_t[i] += dout_bt[i];
                }
            }
        }
    }
}

/* ----------------------------------------------------------------------------- layernorm */
void layernorm_forward(float* out, float* mean, float* rstd, float* inp, float* weight, float* bias, int B, int T,
                       int C) {
    // inp (B,T,C) -> out (B,T,C), mean and rstd (B,T) kept for the backward; biased variance
    int BT = B * T;
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < BT; bt++) {
        const float* x = inp + (size_t)bt * C;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int i = 0; i < C; i++) sum += x[i];
        float m = sum / C;
        float var = 0.0f;
#pragma omp simd reduction(+ : var)
        for (int i = 0; i < C; i++) {
            float d = x[i] - m;
            var += d * d;
        }
        float s = 1.0f / sqrtf(var / C + LAYERNORM_EPS);
        float* o = out + (size_t)bt * C;
        for (int i = 0; i < C; i++) o[i] = (s * (x[i] - m)) * weight[i] + bias[i];
        mean[bt] = m;
        rstd[bt] = s;
    }
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, float* dout, float* inp, float* weight, float* mean,
                        float* rstd, int B, int T, int C) {
    // dout (B,T,C) -> dinp (B,T,C), dweight and dbias (C)
    int BT = B * T;
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int bt = 0; bt < BT; bt++) {
            const float* x = inp + (size_t)bt * C;
            const float* dy = dout + (size_t)bt * C;
            float m = mean[bt], s = rstd[bt];
            // the two means the input gradient subtracts: mean(dnorm) and mean(dnorm * norm)
            float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
#pragma omp simd reduction(+ : dnorm_mean, dnorm_norm_mean)
            for (int i = 0; i < C; i++) {
                float dnorm = weight[i] * dy[i];
                dnorm_mean += dnorm;
                dnorm_norm_mean += dnorm * ((x[i] - m) * s);
            }
            dnorm_mean /= C;
            dnorm_norm_mean /= C;
            float* dx = dinp + (size_t)bt * C;
            for (int i = 0; i < C; i++) {
                float norm = (x[i] - m) * s;
                dx[i] += (weight[i] * dy[i] - dnorm_mean - norm * dnorm_norm_mean) * s;
            }
        }
        // parameter gradients sum over positions: threads take column slices (no barrier needed)
        int c0, c1;
        thread_range(C, &c0, &c1);
        for (int bt = 0; bt < BT; bt++) {
            const float* x = inp + (size_t)bt * C;
            const float* dy = dout + (size_t)bt * C;
            float m = mean[bt], s = rstd[bt];
            for (int i = c0; i < c1; i++) {
                dbias[i] += dy[i];
                dweight[i] += ((x[i] - m) * s) * dy[i];
            }
        }
    }
}

/* ----------------------------------------------------------------------------- matmul */
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int B, int T, int C, int OC) {
    // out (B,T,OC) = inp (B,T,C) @ weight (OC,C)^T + bias (OC); bias may be NULL
    int BT = B * T;
    llmc_sgemm(0, 1, BT, OC, C, 1.0f, inp, C, weight, C, 0.0f, out, OC);
    if (bias == NULL) return;
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < BT; bt++) {
        float* o = out + (size_t)bt * OC;
        for (int j = 0; j < OC; j++) o[j] += bias[j];
    }
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int B, int T, int C, int OC) {
    matmul_backward_beta(dinp, dweight, dbias, dout, inp, weight, B, T, C, OC, 1.0f, 1.0f);
}

void matmul_backward_beta(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                          const float* weight, int B, int T, int C, int OC, float dinp_beta, float dweight_beta) {
    // dout (B,T,OC) -> dinp (B,T,C) = dout @ weight + dinp_beta dinp;
    // dweight (OC,C) = dout^T @ inp + dweight_beta dweight; dbias (OC) += column sums of dout, or NULL
    int BT = B * T;
    llmc_sgemm(0, 0, BT, C, OC, 1.0f, dout, OC, weight, C, dinp_beta, dinp, C);
    llmc_sgemm(1, 0, OC, C, BT, 1.0f, dout, OC, inp, C, dweight_beta, dweight, C);
    if (dbias == NULL) return;
#pragma omp parallel
    {
        int o0, o1;
        thread_range(OC, &o0, &o1);
        for (int bt = 0; bt < BT; bt++) {
            const float* dy = dout + (size_t)bt * OC;
            for (int j = o0; j < o1; j++) dbias[j] += dy[j];
        }
    }
}

/* ----------------------------------------------------------------------------- attention */
/* One query row of one head: q (hs) against the keys and values of positions 0..t of the same
 * sequence, kv pointing at position 0's k (v follows at +C), rows C3 apart. */
LLMC_HOT static void attention_forward_row(float* out, float* preatt_row, float* att_row, const float* q,
                                           const float* kv, int t, int T, int C, int C3, int hs, float scale) {
    float maxval = -INFINITY;
    for (int t2 = 0; t2 <= t; t2++) {
        const float* k = kv + (size_t)t2 * C3;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int i = 0; i < hs; i++) dot += q[i] * k[i];
        dot *= scale;
        att_row[t2] = dot;
        if (dot > maxval) maxval = dot;
    }
    if (preatt_row != NULL) {
        for (int t2 = 0; t2 <= t; t2++) preatt_row[t2] = att_row[t2];
    }
    float sum = 0.0f;
    for (int t2 = 0; t2 <= t; t2++) {
        float e = exp_poly(att_row[t2] - maxval);
        att_row[t2] = e;
        sum += e;
    }
    float inv = 1.0f / sum;
    for (int t2 = 0; t2 <= t; t2++) att_row[t2] *= inv;
    for (int t2 = t + 1; t2 < T; t2++) att_row[t2] = 0.0f; // causal mask
    for (int i = 0; i < hs; i++) out[i] = 0.0f;
    for (int t2 = 0; t2 <= t; t2++) {
        const float* v = kv + (size_t)t2 * C3 + C;
        float a = att_row[t2];
        for (int i = 0; i < hs; i++) out[i] += a * v[i];
    }
}

void attention_forward(float* out, float* preatt, float* att, float* inp, int B, int T, int C, int NH) {
    // inp (B,T,3C) = q | k | v, head h at columns h*hs of each -> out (B,T,C), att (B,NH,T,T) softmax
    // probabilities (zero above the diagonal). preatt (B,NH,T,T), the scaled scores, is written where
    // t2 <= t as in llm.c, or skipped when NULL (the backward never reads it).
    int C3 = 3 * C, hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for collapse(3) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            for (int t = 0; t < T; t++) {
                size_t row = (((size_t)b * NH + h) * T + t) * T;
                attention_forward_row(out + ((size_t)b * T + t) * C + h * hs, preatt ? preatt + row : NULL, att + row,
                                      inp + ((size_t)b * T + t) * C3 + h * hs, inp + (size_t)b * T * C3 + C + h * hs, t,
                                      T, C, C3, hs, scale);
            }
        }
    }
}

/* One head of one sequence: inp, dinp point at position 0's q / dq of head h, rows C3 apart, with
 * k at +C and v at +2C; dout at position 0 of the head, rows C apart; att, datt, dpreatt (T,T). */
LLMC_HOT static void attention_backward_head(float* dinp, float* dpreatt, float* datt, const float* dout,
                                             const float* inp, const float* att, int T, int C, int C3, int hs,
                                             float scale) {
    for (int t = 0; t < T; t++) {
        float dscore[T]; // d loss / d att[t, t2], then d loss / d preatt[t, t2]
        const float* att_row = att + (size_t)t * T;
        const float* dy = dout + (size_t)t * C;
        const float* q = inp + (size_t)t * C3;
        float* dq = dinp + (size_t)t * C3;
        // out = att @ v
        float att_dot_datt = 0.0f;
        for (int t2 = 0; t2 <= t; t2++) {
            const float* v = inp + (size_t)t2 * C3 + 2 * C;
            float* dv = dinp + (size_t)t2 * C3 + 2 * C;
            float a = att_row[t2], d = 0.0f;
#pragma omp simd reduction(+ : d)
            for (int i = 0; i < hs; i++) d += dy[i] * v[i];
            for (int i = 0; i < hs; i++) dv[i] += a * dy[i];
            dscore[t2] = d;
            att_dot_datt += a * d;
        }
        if (datt != NULL) {
            for (int t2 = 0; t2 <= t; t2++) datt[(size_t)t * T + t2] += dscore[t2];
        }
        // softmax: dpreatt = att * (datt - sum(att * datt)); masked entries have att == 0
        for (int t2 = 0; t2 <= t; t2++) dscore[t2] = att_row[t2] * (dscore[t2] - att_dot_datt);
        if (dpreatt != NULL) {
            for (int t2 = 0; t2 <= t; t2++) dpreatt[(size_t)t * T + t2] += dscore[t2];
        }
        // preatt = scale * q . k
        for (int t2 = 0; t2 <= t; t2++) {
            const float* k = inp + (size_t)t2 * C3 + C;
            float* dk = dinp + (size_t)t2 * C3 + C;
            float ds = dscore[t2] * scale;
            for (int i = 0; i < hs; i++) {
                dq[i] += ds * k[i];
                dk[i] += ds * q[i];
            }
        }
    }
}

void attention_backward(float* dinp, float* dpreatt, float* datt, float* dout, float* inp, float* att, int B, int T,
                        int C, int NH) {
    // dout (B,T,C) -> dinp (B,T,3C) +=. datt and dpreatt (B,NH,T,T) accumulate the intermediate gradients
    // as in llm.c, or are skipped when NULL. Threads take whole (b,h) pairs: a head's keys and values
    // gather contributions from every later query.
    int C3 = 3 * C, hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            size_t head = ((size_t)b * NH + h) * T * T, pos0 = (size_t)b * T;
            attention_backward_head(dinp + pos0 * C3 + h * hs, dpreatt ? dpreatt + head : NULL,
                                    datt ? datt + head : NULL, dout + pos0 * C + h * hs, inp + pos0 * C3 + h * hs,
                                    att + head, T, C, C3, hs, scale);
        }
    }
}

/* ----------------------------------------------------------------------------- gelu (tanh form) */
/* gelu(x) = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3). With s = 0.5 (1 + tanh(u)) =
 * 1 / (1 + e^(-2u)), a sigmoid, the forward is x s and the derivative s + 2 x s (1 - s) u'.
 * The same function as llm.c's, computed without tanhf: no cancellation in 1 + tanh(u) for negative
 * x, and the loop vectorizes. |u| is capped at 43 (e^86 still fits a float), where s is 0 or 1
 * to float precision. */
static inline float gelu_sigmoid(float x, float* one_minus_s) {
    float u = GELU_SCALING_FACTOR * (x + GELU_CUBIC * x * x * x);
    u = u < -43.0f ? -43.0f : (u > 43.0f ? 43.0f : u);
    float e = exp_poly(-2.0f * u);
    float s = 1.0f / (1.0f + e);
    *one_minus_s = e * s;
    return s;
}

LLMC_HOT static void gelu_forward_range(float* out, const float* inp, int lo, int hi) {
    for (int i = lo; i < hi; i++) {
        float one_minus_s;
        out[i] = inp[i] * gelu_sigmoid(inp[i], &one_minus_s);
    }
}

void gelu_forward(float* out, float* inp, int N) {
#pragma omp parallel
    {
        int lo, hi;
        thread_range(N, &lo, &hi);
        gelu_forward_range(out, inp, lo, hi);
    }
}

LLMC_HOT static void gelu_backward_range(float* dinp, const float* inp, const float* dout, int lo, int hi) {
    for (int i = lo; i < hi; i++) {
        float x = inp[i], one_minus_s;
        float s = gelu_sigmoid(x, &one_minus_s);
        float du_dx = GELU_SCALING_FACTOR * (1.0f + 3.0f * GELU_CUBIC * x * x);
        dinp[i] += (s + 2.0f * x * s * one_minus_s * du_dx) * dout[i];
    }
}

void gelu_backward(float* dinp, float* inp, float* dout, int N) {
#pragma omp parallel
    {
        int lo, hi;
        thread_range(N, &lo, &hi);
        gelu_backward_range(dinp, inp, dout, lo, hi);
    }
}

/* ----------------------------------------------------------------------------- residual */
void residual_forward(float* out, float* inp1, float* inp2, int N) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) out[i] = inp1[i] + inp2[i];
}

void residual_backward(float* dinp1, float* dinp2, float* dout, int N) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        dinp1[i] += dout[i];
        dinp2[i] += dout[i];
    }
}

/* ----------------------------------------------------------------------------- softmax + cross-entropy */
/* One row: probs[0,V) = softmax(logits[0,V)), probs[V,Vp) = 0. Returns log(sum exp(logit - max)) + max,
 * the log-partition, so the loss needs no log of a probability that may have underflowed. */
LLMC_HOT static double softmax_row(float* probs, const float* logits, int V, int Vp) {
    float maxval = -INFINITY;
    for (int i = 0; i < V; i++) maxval = logits[i] > maxval ? logits[i] : maxval;
    // 50257 terms: float sums over short blocks (they vectorize), the blocks added in double
    double sum = 0.0;
    for (int i0 = 0; i0 < V; i0 += 256) {
        int i1 = i0 + 256 < V ? i0 + 256 : V;
        float block = 0.0f;
#pragma omp simd reduction(+ : block)
        for (int i = i0; i < i1; i++) {
            float e = exp_poly(logits[i] - maxval);
            probs[i] = e;
            block += e;
        }
        sum += block;
    }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < V; i++) probs[i] *= inv;
    for (int i = V; i < Vp; i++) probs[i] = 0.0f;
    return log(sum) + maxval;
}

void softmax_forward(float* probs, float* logits, int B, int T, int V, int Vp) {
    // logits (B,T,Vp) -> probs (B,T,Vp): softmax over the first V columns, the padding zero
    int BT = B * T;
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < BT; bt++) softmax_row(probs + (size_t)bt * Vp, logits + (size_t)bt * Vp, V, Vp);
}

void crossentropy_forward(float* losses, float* probs, int* targets, int B, int T, int Vp) {
    // probs (B,T,Vp), targets (B,T) -> losses (B,T) = -log probs[target]
    int BT = B * T;
    for (int bt = 0; bt < BT; bt++) losses[bt] = -logf(probs[(size_t)bt * Vp + targets[bt]]);
}

void crossentropy_softmax_backward(float* dlogits, float* dlosses, float* probs, int* targets, int B, int T, int V,
                                   int Vp) {
    // dlosses (B,T) -> dlogits (B,T,Vp) += dloss * (probs - onehot(target)) over the first V columns
    int BT = B * T;
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < BT; bt++) {
        float* dl = dlogits + (size_t)bt * Vp;
        const float* p = probs + (size_t)bt * Vp;
        float dloss = dlosses[bt];
        int ix = targets[bt];
        for (int i = 0; i < V; i++) dl[i] += (p[i] - (i == ix ? 1.0f : 0.0f)) * dloss;
    }
}

/* The model's lm head never holds both probs and dlogits: the forward leaves the probabilities in one
 * (B,T,Vp) buffer and the backward turns them into dlogits in place. */
void softmax_crossentropy_forward(float* probs, float* losses, const float* logits, const int* targets, int B, int T,
                                  int V, int Vp) {
    int BT = B * T;
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < BT; bt++) {
        const float* l = logits + (size_t)bt * Vp;
        double log_partition = softmax_row(probs + (size_t)bt * Vp, l, V, Vp);
        losses[bt] = (float)(log_partition - l[targets[bt]]);
    }
}

void crossentropy_softmax_backward_inplace(float* probs, float dloss, const int* targets, int B, int T, int Vp) {
    // probs (B,T,Vp) -> dlogits = dloss * (probs - onehot(target)); the padding stays zero
    int BT = B * T;
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < BT; bt++) {
        float* p = probs + (size_t)bt * Vp;
        p[targets[bt]] -= 1.0f;
        for (int i = 0; i < Vp; i++) p[i] *= dloss;
    }
}
