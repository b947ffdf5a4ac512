/* ops: the table of kernels a backend provides (model/backend.h: the backend object that
 * carries it). The model's graph (model/model.c) is written once over this table; model/cpu/
 * implements it with OpenMP and BLAS and is the reference other backends are checked against.
 *
 * Every op takes the backend first and reports a failure through it (gale_backend_fail: sticky
 * until gale_backend_sync), never by aborting. Buffers are opaque device pointers that only the
 * backend dereferences; they are typed float * and hold elements of the dtype the precision
 * policy gives their role (docs/engine.md): weights' compute copy and activations in
 * be->compute, master weights, gradients, moments, softmax and norm statistics, router and
 * loss in fp32. The graph never indexes a compute-dtype buffer itself: offsets go through the
 * backend's element size. Layouts are row-major; "rows" are tokens. Functions documented "+="
 * accumulate into their output, the others overwrite it. */
#ifndef GALE_MODEL_OPS_H
#define GALE_MODEL_OPS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "model/backend.h"

/* The ops, for supports_op. */
enum gale_op {
    GALE_OP_MATMUL, GALE_OP_EMBEDDING, GALE_OP_RMSNORM, GALE_OP_ROPE, GALE_OP_ATTENTION,
    GALE_OP_ATTENTION_CACHED, GALE_OP_SWIGLU, GALE_OP_ROUTER, GALE_OP_MOE, GALE_OP_CROSS_ENTROPY,
    GALE_OP_ADAMW, GALE_OP_REDUCE, GALE_OP_DROPOUT, GALE_OP_COUNT
};

const char *gale_op_name(enum gale_op op);

/* The dtypes of a product's operands: the policy gives A and B in the compute dtype, except
 * the head's fp32 logit gradients; C is fp32 for weight gradients, logits and router logits. */
struct gale_gemm_types {
    enum gale_dtype a, b, c;
};

struct gale_ops {
    const char *name;

    /* lifecycle: init fills be->ctx for be->compute (-1 with err when it cannot), destroy
     * frees it; synchronize waits for the queued work */
    int (*init)(struct gale_backend *be, gale_error *err);
    void (*destroy)(struct gale_backend *be);
    void (*synchronize)(struct gale_backend *be);
    /* whether op runs with dtype as its compute dtype */
    int (*supports_op)(const struct gale_backend *be, enum gale_op op, enum gale_dtype dtype);
    /* bytes of one element of dtype as this backend stores it */
    size_t (*dtype_bytes)(const struct gale_backend *be, enum gale_dtype dtype);

    /* memory: device buffers zero-filled (NULL and a failure when out of memory); host buffers
     * for transfers (pinned on a GPU) */
    void *(*alloc)(struct gale_backend *be, size_t bytes);
    void (*free)(struct gale_backend *be, void *p);
    void *(*host_alloc)(struct gale_backend *be, size_t bytes);
    void (*host_free)(struct gale_backend *be, void *p);
    void (*zero)(struct gale_backend *be, void *p, size_t bytes);
    /* asynchronous: the host side is read or written until the next synchronize */
    void (*upload)(struct gale_backend *be, void *dst, const void *host_src, size_t bytes);
    void (*download)(struct gale_backend *be, void *host_dst, const void *src, size_t bytes);
    void (*copy)(struct gale_backend *be, void *dst, const void *src, size_t bytes);
    /* dst[i] = src[i] converted from fp32 to dtype (round to nearest even), n elements */
    void (*convert)(struct gale_backend *be, void *dst, enum gale_dtype dtype, const float *src,
                    size_t n);

    /* C[M,N] = alpha * op(A) * op(B) + beta * C, row-major, op(X) = X or X^T (trans_* != 0),
     * with leading dimensions lda, ldb, ldc as in cblas_sgemm(CblasRowMajor, ...). */
    void (*matmul)(struct gale_backend *be, int trans_a, int trans_b, int m, int n, int k,
                   float alpha, const float *a, int lda, const float *b, int ldb, float beta,
                   float *c, int ldc, struct gale_gemm_types types);

    /* out[r,:] = table[tokens[r],:] for r < rows */
    void (*embedding_fwd)(struct gale_backend *be, float *out, const float *table,
                          const int32_t *tokens, int rows, int dim);
    /* dtable[tokens[r],:] += dout[r,:] */
    void (*embedding_bwd)(struct gale_backend *be, float *dtable, const float *dout,
                          const int32_t *tokens, int rows, int dim);

    /* out = x * rsqrt(mean(x^2) + eps) * w; rstd[r] saved for the backward */
    void (*rmsnorm_fwd)(struct gale_backend *be, float *out, float *rstd, const float *x,
                        const float *w, int rows, int dim, float eps);
    /* dx += d/dx, dw += d/dw (dw NULL: a frozen weight) */
    void (*rmsnorm_bwd)(struct gale_backend *be, float *dx, float *dw, const float *dout,
                        const float *x, const float *w, const float *rstd, int rows, int dim);

    /* In place on x[rows, heads*head_dim]: rotate-half RoPE at positions[r];
     * inv_freq[i] = theta^(-2i/head_dim). The backward rotates by the opposite angle. */
    void (*rope_fwd)(struct gale_backend *be, float *x, const int32_t *positions, int rows,
                     int heads, int head_dim, float theta);
    void (*rope_bwd)(struct gale_backend *be, float *dx, const int32_t *positions, int rows,
                     int heads, int head_dim, float theta);

    /* Causal GQA attention over batch x seq rows: q[B*T, heads*hd], k and v [B*T, kv_heads*hd],
     * out[B*T, heads*hd]. Query i of a sequence sees key j when j <= i, i - j < window
     * (window 0 = unlimited) and segments[i] == segments[j] (segments NULL = one segment).
     * lse[B, heads, T] saves each softmax's log-sum-exp for the backward. */
    void (*attention_fwd)(struct gale_backend *be, float *out, float *lse, const float *q,
                          const float *k, const float *v, const int32_t *segments, int batch,
                          int seq, int heads, int kv_heads, int head_dim, int window);
    /* Generation's attention, forward only: n_q new queries of one sequence against its
     * cached keys. q[n_q, heads*hd]; k and v [n_kv, kv_heads*hd] in sequence order, the new
     * queries' own keys last; out[n_q, heads*hd]. Query r is the sequence's token
     * n_kv - n_q + r = i and sees key j when j <= i and i - j < window (0 = unlimited). */
    void (*attention_cached_fwd)(struct gale_backend *be, float *out, const float *q,
                                 const float *k, const float *v, int n_q, int n_kv, int heads,
                                 int kv_heads, int head_dim, int window);
    /* dq, dk, dv overwritten */
    void (*attention_bwd)(struct gale_backend *be, float *dq, float *dk, float *dv,
                          const float *dout, const float *out, const float *lse, const float *q,
                          const float *k, const float *v, const int32_t *segments, int batch,
                          int seq, int heads, int kv_heads, int head_dim, int window);

    /* out = silu(gate) * up over n elements; the backward overwrites dgate and dup (dgate may
     * be the same buffer as dout) */
    void (*swiglu_fwd)(struct gale_backend *be, float *out, const float *gate, const float *up,
                       size_t n);
    void (*swiglu_bwd)(struct gale_backend *be, float *dgate, float *dup, const float *dout,
                       const float *gate, const float *up, size_t n);

    /* Router over logits[rows, experts]: probs = softmax (fp32), lse[r] its log-sum-exp,
     * topk_idx/topk_w[rows, k] the k largest probabilities (ties: lower index first)
     * renormalised to sum to 1. */
    void (*router_fwd)(struct gale_backend *be, float *probs, float *lse, int32_t *topk_idx,
                       float *topk_w, const float *logits, int rows, int experts, int k);
    /* dlogits (overwritten) from dtopk_w[rows, k] (the loss's gradient w.r.t. the
     * renormalised weights), plus dprobs_const[e] added to every row's d/dprobs[e] (the
     * load-balancing loss: its gradient flows through the mean probabilities only), plus
     * z_scale * d(lse^2)/dlogits (router z-loss; 0 for none). */
    void (*router_bwd)(struct gale_backend *be, float *dlogits, const float *dtopk_w,
                       const float *probs, const float *lse, const int32_t *topk_idx,
                       const float *topk_w, const float *dprobs_const, float z_scale, int rows,
                       int experts, int k);

    /* Groups the rows*k routing slots by expert: counts[e] (device, int32) and
     * slot_rows[s] (device), the token row of the s-th slot in expert order, and
     * slot_of[r*k + j] (device), the position in that order of row r's j-th choice. */
    void (*moe_plan)(struct gale_backend *be, int32_t *counts, int32_t *slot_rows,
                     int32_t *slot_of, const int32_t *topk_idx, int rows, int experts, int k);
    /* The router's statistics for its losses, in fp64 on the device: stats[e] = sum over rows
     * of probs[r, e] for e < experts, stats[experts] = sum over rows of lse[r]^2. */
    void (*router_stats)(struct gale_backend *be, double *stats, const float *probs,
                         const float *lse, int rows, int experts);
    /* xe[s,:] = x[slot_rows[s],:] */
    void (*moe_gather)(struct gale_backend *be, float *xe, const float *x, const int32_t *slot_rows,
                       int slots, int dim);
    /* out[r,:] += sum_j topk_w[r,j] * ye[slot_of[r*k+j],:] */
    void (*moe_combine)(struct gale_backend *be, float *out, const float *ye, const float *topk_w,
                        const int32_t *slot_of, int rows, int k, int dim);
    /* dye[slot_of[r*k+j],:] = topk_w[r,j] * dout[r,:], dtopk_w[r,j] = dout[r,:] . ye[...] */
    void (*moe_combine_bwd)(struct gale_backend *be, float *dye, float *dtopk_w, const float *dout,
                            const float *ye, const float *topk_w, const int32_t *slot_of, int rows,
                            int k, int dim);
    /* dx[slot_rows[s],:] += dxe[s,:] */
    void (*moe_scatter_add)(struct gale_backend *be, float *dx, const float *dxe,
                            const int32_t *slot_rows, int slots, int dim);

    /* Cross-entropy over logits[rows, vocab] (fp32) with targets (< 0: ignored). Adds the sum
     * of the per-row losses to sums[0] and the number of targets counted to sums[1] (device
     * fp64: they come back once per step). When grad_scale != 0, logits are overwritten with
     * grad_scale * d(sum)/dlogits (0 on ignored rows); when grad_scale == 0 they are left as
     * they are. */
    void (*cross_entropy)(struct gale_backend *be, float *logits, const int32_t *targets,
                          int rows, int vocab, float grad_scale, double *sums);

    /* Decoupled AdamW as torch.optim.AdamW over n elements of the fp32 master weights p with
     * the gradient grad_scale[0] * g (grad_scale: a device fp32 scalar, clipping's factor from
     * clip_factor, so the update needs no host read; the product rounded to fp32 as an in-place
     * clip leaves it; g is not written): p -= lr*wd*p; m, v moments;
     * p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps), with bc1 = 1-beta1^step,
     * bc2 = 1-beta2^step. A NaN factor (a non-finite gradient norm) leaves p, p_compute, m and
     * v untouched: the step is skipped on the device. When p_compute is not NULL the new weights
     * are also written there in be->compute (the compute copy; NULL when it is p itself). */
    void (*adamw_step)(struct gale_backend *be, float *p, float *p_compute, const float *g,
                       float *m, float *v, size_t n, const float *grad_scale, float lr,
                       float beta1, float beta2, float eps, float weight_decay, int step);

    /* Inverted dropout over n compute-dtype elements: element i is kept when the counter-based
     * draw uniform(seed, i) >= p and then scaled by 1 / (1 - p), else 0. out = that of x, or
     * with accumulate, out += that of x. The same seed gives the same mask: the backward
     * regenerates it rather than keeping it. */
    void (*dropout)(struct gale_backend *be, float *out, const float *x, size_t n, float p,
                    uint64_t seed, int accumulate);

    /* acc[0] += the sum of squares of x (accumulated in fp64; acc a device fp64) */
    void (*sumsq)(struct gale_backend *be, double *acc, const float *x, size_t n);
    /* factor[0] (device fp32) = clip_grad_norm_'s factor for the norm sqrt(sumsq[0]) (device
     * fp64): max_norm / (norm + 1e-6) when norm > max_norm, else 1 (max_norm <= 0: 1); NaN when
     * the norm is not finite, which makes adamw_step skip. Computed in fp64, then rounded. */
    void (*clip_factor)(struct gale_backend *be, float *factor, const double *sumsq,
                        double max_norm);
    /* y += a * x */
    void (*axpy)(struct gale_backend *be, float *y, const float *x, size_t n, float a);
    /* acc[0] += sum of x[i] * w[i] over n fp64 elements (device) */
    void (*dot_f64)(struct gale_backend *be, double *acc, const double *x, const double *w,
                    size_t n);
};

/* The CPU backend's tables (model/cpu/): fp32, and the bf16 mode (weights and activations
 * rounded to bf16, computed in fp32). */
const struct gale_ops *gale_ops_cpu(void);
const struct gale_ops *gale_ops_cpu_bf16(void);

/* The CUDA backend's table (model/cuda/): bf16 or fp32 on the device, fp32 master weights,
 * moments and gradients. Defined in the module libgale_cuda.so, which gale_backend_create
 * opens; nothing links it. */
const struct gale_ops *gale_ops_cuda(void);

/* The round trip of fp32 through bf16, round to nearest even (NaN stays NaN). */
float gale_round_bf16(float x);

#ifdef __CUDACC__
#define GALE_HOST_DEVICE __host__ __device__
#else
#define GALE_HOST_DEVICE
#endif

/* clip_grad_norm_'s factor for the gradients' sum of squares: max_norm / (norm + 1e-6) when
 * the norm is above max_norm, else 1 (max_norm <= 0: 1); NaN when the norm is not finite. The
 * one definition behind every backend's clip_factor op. */
static inline GALE_HOST_DEVICE double gale_clip_factor(double sumsq, double max_norm)
{
    double norm = sqrt(sumsq);
    if (!isfinite(norm))
        return NAN;
    if (max_norm <= 0)
        return 1.0;
    double factor = max_norm / (norm + 1e-6);
    return factor < 1.0 ? factor : 1.0;
}

/* One row of the router's forward: probs = softmax(logits) and its log-sum-exp in fp64, the top
 * k experts by probability (ties to the lower index) and their weights renormalised over the
 * chosen. The one definition behind the CPU's and the CUDA backend's router_fwd. */
static inline GALE_HOST_DEVICE void gale_router_fwd_row(float *p, float *lse, int32_t *idx, float *w,
                                                        const float *x, int experts, int k)
{
    float mx = -INFINITY;
    for (int e = 0; e < experts; e++)
        mx = x[e] > mx ? x[e] : mx;
    double sum = 0;
    for (int e = 0; e < experts; e++)
        sum += exp((double)x[e] - mx);
    *lse = mx + (float)log(sum);
    for (int e = 0; e < experts; e++)
        p[e] = (float)(exp((double)x[e] - mx) / sum);
    double chosen = 0;
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < experts; e++) {
            int taken = 0;
            for (int m = 0; m < j && !taken; m++)
                taken = idx[m] == e;
            if (!taken && (best < 0 || p[e] > p[best]))
                best = e;
        }
        idx[j] = best;
        chosen += p[best];
    }
    for (int j = 0; j < k; j++)
        w[j] = (float)(p[idx[j]] / chosen);
}

/* One row of the router's backward into dl (experts floats), dp being experts doubles of
 * scratch: w_j = p_{i_j} / S with S the sum of the chosen p, so d/dp_{i_j} = (dw_j - sum w dw)
 * / S, plus dprobs_const (the aux loss's, or none), through the softmax, plus the z-loss's
 * 2 z_scale lse p. The one definition behind both backends' router_bwd. */
static inline GALE_HOST_DEVICE void gale_router_bwd_row(float *dl, double *dp, const float *p, float lse,
                                                        const int32_t *idx, const float *w, const float *dw,
                                                        const float *dprobs_const, float z_scale, int experts,
                                                        int k)
{
    for (int e = 0; e < experts; e++)
        dp[e] = dprobs_const ? dprobs_const[e] : 0.0;
    double chosen = 0, wdw = 0;
    for (int j = 0; j < k; j++) {
        chosen += p[idx[j]];
        wdw += (double)w[j] * dw[j];
    }
    for (int j = 0; j < k; j++)
        dp[idx[j]] += (dw[j] - wdw) / chosen;
    double pdp = 0;
    for (int e = 0; e < experts; e++)
        pdp += p[e] * dp[e];
    for (int e = 0; e < experts; e++)
        dl[e] = (float)(p[e] * (dp[e] - pdp) + 2.0 * z_scale * lse * p[e]);
}

#endif
