/* ops: the table of kernels a backend provides. The model's graph (model/model.c) is written
 * once over this table; model/cpu/ implements it in fp32 with OpenMP and BLAS and is the
 * reference other backends are checked against. Buffers are opaque device pointers that only
 * the backend dereferences: they are allocated, filled and read back through the table.
 * Layouts are row-major; "rows" are tokens. Functions documented "+=" accumulate into their
 * output, the others overwrite it. */
#ifndef GALE_MODEL_OPS_H
#define GALE_MODEL_OPS_H

#include <stddef.h>
#include <stdint.h>

struct gale_ops {
    const char *name;

    /* memory (device pointers) */
    void *(*alloc)(size_t bytes);                       /* zero-filled; aborts when out of memory */
    void (*free)(void *p);
    void (*zero)(void *p, size_t bytes);
    void (*upload)(void *dst, const void *host_src, size_t bytes);
    void (*download)(void *host_dst, const void *src, size_t bytes);
    void (*copy)(void *dst, const void *src, size_t bytes);

    /* C[M,N] = alpha * op(A) * op(B) + beta * C, row-major, op(X) = X or X^T (trans_* != 0),
     * with leading dimensions lda, ldb, ldc as in cblas_sgemm(CblasRowMajor, ...). */
    void (*matmul)(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
                   int lda, const float *b, int ldb, float beta, float *c, int ldc);

    /* out[r,:] = table[tokens[r],:] for r < rows */
    void (*embedding_fwd)(float *out, const float *table, const int32_t *tokens, int rows, int dim);
    /* dtable[tokens[r],:] += dout[r,:] */
    void (*embedding_bwd)(float *dtable, const float *dout, const int32_t *tokens, int rows, int dim);

    /* out = x * rsqrt(mean(x^2) + eps) * w; rstd[r] saved for the backward */
    void (*rmsnorm_fwd)(float *out, float *rstd, const float *x, const float *w, int rows, int dim,
                        float eps);
    /* dx += d/dx, dw += d/dw */
    void (*rmsnorm_bwd)(float *dx, float *dw, const float *dout, const float *x, const float *w,
                        const float *rstd, int rows, int dim);

    /* In place on x[rows, heads*head_dim]: rotate-half RoPE at positions[r];
     * inv_freq[i] = theta^(-2i/head_dim). The backward rotates by the opposite angle. */
    void (*rope_fwd)(float *x, const int32_t *positions, int rows, int heads, int head_dim,
                     float theta);
    void (*rope_bwd)(float *dx, const int32_t *positions, int rows, int heads, int head_dim,
                     float theta);

    /* Causal GQA attention over batch x seq rows: q[B*T, heads*hd], k and v [B*T, kv_heads*hd],
     * out[B*T, heads*hd]. Query i of a sequence sees key j when j <= i, i - j < window
     * (window 0 = unlimited) and segments[i] == segments[j] (segments NULL = one segment).
     * lse[B, heads, T] saves each softmax's log-sum-exp for the backward. */
    void (*attention_fwd)(float *out, float *lse, const float *q, const float *k, const float *v,
                          const int32_t *segments, int batch, int seq, int heads, int kv_heads,
                          int head_dim, int window);
    /* Generation's attention, forward only: n_q new queries of one sequence against its
     * cached keys. q[n_q, heads*hd]; k and v [n_kv, kv_heads*hd] in sequence order, the new
     * queries' own keys last; out[n_q, heads*hd]. Query r is the sequence's token
     * n_kv - n_q + r = i and sees key j when j <= i and i - j < window (0 = unlimited). */
    void (*attention_cached_fwd)(float *out, const float *q, const float *k, const float *v,
                                 int n_q, int n_kv, int heads, int kv_heads, int head_dim,
                                 int window);
    /* dq, dk, dv overwritten */
    void (*attention_bwd)(float *dq, float *dk, float *dv, const float *dout, const float *out,
                          const float *lse, const float *q, const float *k, const float *v,
                          const int32_t *segments, int batch, int seq, int heads, int kv_heads,
                          int head_dim, int window);

    /* out = silu(gate) * up over n elements; the backward overwrites dgate and dup (dgate may
     * be the same buffer as dout) */
    void (*swiglu_fwd)(float *out, const float *gate, const float *up, size_t n);
    void (*swiglu_bwd)(float *dgate, float *dup, const float *dout, const float *gate,
                       const float *up, size_t n);

    /* Router over logits[rows, experts]: probs = softmax (fp32), lse[r] its log-sum-exp,
     * topk_idx/topk_w[rows, k] the k largest probabilities (ties: lower index first)
     * renormalised to sum to 1. */
    void (*router_fwd)(float *probs, float *lse, int32_t *topk_idx, float *topk_w,
                       const float *logits, int rows, int experts, int k);
    /* dlogits (overwritten) from dtopk_w[rows, k] (the loss's gradient w.r.t. the
     * renormalised weights), plus dprobs_const[e] added to every row's d/dprobs[e] (the
     * load-balancing loss: its gradient flows through the mean probabilities only), plus
     * z_scale * d(lse^2)/dlogits (router z-loss; 0 for none). */
    void (*router_bwd)(float *dlogits, const float *dtopk_w, const float *probs, const float *lse,
                       const int32_t *topk_idx, const float *topk_w, const float *dprobs_const,
                       float z_scale, int rows, int experts, int k);

    /* Groups the rows*k routing slots by expert: counts[e] (host array) and
     * slot_rows[s] (device), the token row of the s-th slot in expert order, and
     * slot_of[r*k + j] (device), the position in that order of row r's j-th choice. */
    void (*moe_plan)(int *counts, int32_t *slot_rows, int32_t *slot_of, const int32_t *topk_idx,
                     int rows, int experts, int k);
    /* xe[s,:] = x[slot_rows[s],:] */
    void (*moe_gather)(float *xe, const float *x, const int32_t *slot_rows, int slots, int dim);
    /* out[r,:] += sum_j topk_w[r,j] * ye[slot_of[r*k+j],:] */
    void (*moe_combine)(float *out, const float *ye, const float *topk_w, const int32_t *slot_of,
                        int rows, int k, int dim);
    /* dye[slot_of[r*k+j],:] = topk_w[r,j] * dout[r,:], dtopk_w[r,j] = dout[r,:] . ye[...] */
    void (*moe_combine_bwd)(float *dye, float *dtopk_w, const float *dout, const float *ye,
                            const float *topk_w, const int32_t *slot_of, int rows, int k, int dim);
    /* dx[slot_rows[s],:] += dxe[s,:] */
    void (*moe_scatter_add)(float *dx, const float *dxe, const int32_t *slot_rows, int slots,
                            int dim);

    /* Cross-entropy over logits[rows, vocab] with targets (< 0: ignored). Returns the sum of
     * the per-row losses (host double) and writes count = number of targets counted. When
     * grad_scale != 0, logits are overwritten with grad_scale * d(sum)/dlogits (0 on
     * ignored rows); when grad_scale == 0 they are left as they are. */
    double (*cross_entropy)(float *logits, const int32_t *targets, int rows, int vocab,
                            float grad_scale, long *count);

    /* Decoupled AdamW as torch.optim.AdamW over n elements with the gradient grad_scale * g
     * (clipping's factor, rounded to fp32 as an in-place clip leaves it; g is not written):
     * p -= lr*wd*p; m, v moments; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps), with
     * bc1 = 1-beta1^step, bc2 = 1-beta2^step. */
    void (*adamw_step)(float *p, const float *g, float *m, float *v, size_t n, float grad_scale,
                       float lr, float beta1, float beta2, float eps, float weight_decay, int step);

    /* sum of squares (accumulated in double) and in-place scaling, for clipping */
    double (*sumsq)(const float *x, size_t n);
    void (*scale)(float *x, size_t n, float s);
    /* y += a * x */
    void (*axpy)(float *y, const float *x, size_t n, float a);
};

/* The fp32 reference backend (OpenMP + OpenBLAS). */
const struct gale_ops *gale_ops_cpu(void);

/* The backend called name ("cpu"), or NULL when it is not built in. */
const struct gale_ops *gale_ops_by_name(const char *name);

#endif
